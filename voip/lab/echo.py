"""The lab's baseline: a plain UDP echo (RFC 862's port 7) through the same switch and routers.

A call's measured RTT is the path's delay plus what the lab itself adds (the userspace switch,
the routers, the scheduler of a busy machine). Tests compare a call with an echo measured in the
same lab just before it, so they hold on any machine; the configured delay stays the floor.

    python -m voip.lab.echo serve HOST            # prints "ready", echoes until killed
    python -m voip.lab.echo probe HOST [--count N] [--interval MS] [--timeout S]  # JSON
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import time
from dataclasses import dataclass

from voip.lab.switch import prefer_this_process

ECHO_PORT = 7


@dataclass(frozen=True)
class EchoRtt:
    """Round trips of a plain echo, ms."""

    samples: tuple[float, ...]
    lost: int

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def __add__(self, other: EchoRtt) -> EchoRtt:
        """Two legs in series (alice to the relay, and bob to the relay): sample by sample."""
        pairs = zip(sorted(self.samples), sorted(other.samples), strict=False)
        return EchoRtt(tuple(a + b for a, b in pairs), self.lost + other.lost)

    def to_dict(self) -> dict[str, float | int]:
        return {
            "min": round(self.min, 2),
            "median": round(self.median, 2),
            "samples": len(self.samples),
            "lost": self.lost,
        }


def serve(host: str, port: int = ECHO_PORT) -> None:
    prefer_this_process()  # an instrument: what it measures is the lab, not its own waits
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    print("ready", flush=True)
    while True:
        data, addr = sock.recvfrom(2048)
        sock.sendto(data, addr)


def probe(host: str, count: int = 25, interval: float = 0.02, timeout: float = 1.0) -> EchoRtt:
    """`count` echoes 20 ms apart, as a call's packets are; the first, which waits for ARP
    and the routers' first conntrack entry, is not counted. One unanswered within `timeout`
    counts as lost."""
    prefer_this_process()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    samples, lost = [], 0
    for i in range(count + 1):
        payload = i.to_bytes(4, "big") + bytes(156)  # an Opus voice frame's size
        sent = time.perf_counter()
        sock.sendto(payload, (host, ECHO_PORT))
        try:
            while sock.recv(2048)[:4] != payload[:4]:
                pass  # a late answer to an earlier probe
        except TimeoutError:
            lost += i > 0
            continue
        if i > 0:
            samples.append((time.perf_counter() - sent) * 1000)
        time.sleep(interval)
    sock.close()
    return EchoRtt(tuple(samples), lost)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m voip.lab.echo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve").add_argument("host")
    p = sub.add_parser("probe")
    p.add_argument("host")
    p.add_argument("--count", type=int, default=25)
    p.add_argument("--interval", type=float, default=20.0, help="ms between probes")
    p.add_argument("--timeout", type=float, default=1.0, help="s to wait for each answer")
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.host)
        return 0
    result = probe(args.host, args.count, args.interval / 1000, args.timeout)
    print(json.dumps({"samples": result.samples, "lost": result.lost}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
