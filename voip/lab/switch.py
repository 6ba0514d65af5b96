"""The lab's emulated internet: a learning Ethernet switch in userspace with delay, jitter, loss.

This kernel has no netem, so links are shaped here: one AF_PACKET socket per veth port in the
internet namespace; every frame delivered *to* a port waits that port's one-way delay (plus
uniform jitter) and is dropped with that port's loss probability. RTT(A, B) is therefore
delay-a + delay-b (DESIGN.md, "Delay model").

    python -m voip.lab.switch --port NAME:DELAY_MS:JITTER_MS:LOSS_PCT [--port ...] [--seed N]

It prints "ready" once every port is open, and runs until killed.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import random
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # sll_pkttype of frames this socket itself sent
BROADCAST = b"\xff" * 6


@dataclass
class Port:
    name: str
    delay: float  # seconds, one way, for frames delivered to this port
    jitter: float = 0.0  # seconds, uniform 0..jitter added per frame
    loss: float = 0.0  # probability a frame delivered to this port is dropped
    sock: socket.socket = field(init=False, repr=False)
    last_due: float = 0.0  # frames leave in order: jitter delays, it does not reorder
    forwarded: int = 0
    dropped: int = 0

    def open(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((self.name, 0))
        self.sock.setblocking(False)


def parse_port(spec: str) -> Port:
    try:
        name, delay, jitter, loss = spec.split(":")
        return Port(name, float(delay) / 1000, float(jitter) / 1000, float(loss) / 100)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"bad port {spec!r}: NAME:DELAY_MS:JITTER_MS:LOSS_PCT"
        ) from exc


class Switch:
    def __init__(self, ports: list[Port], seed: int | None = None):
        self.ports = {p.name: p for p in ports}
        self.macs: dict[bytes, Port] = {}
        self.rng = random.Random(seed)
        self.queue: list[tuple[float, int, str, bytes]] = []
        self.seq = itertools.count()
        self.sel = selectors.DefaultSelector()

    def start(self) -> None:
        for port in self.ports.values():
            port.open()
            self.sel.register(port.sock, selectors.EVENT_READ, port)

    def _schedule(self, frame: bytes, out: Port, now: float) -> None:
        if out.loss and self.rng.random() < out.loss:
            out.dropped += 1
            return
        due = now + out.delay + (self.rng.uniform(0, out.jitter) if out.jitter else 0.0)
        due = max(due, out.last_due)
        out.last_due = due
        heapq.heappush(self.queue, (due, next(self.seq), out.name, frame))

    def _receive(self, port: Port, now: float) -> None:
        while True:
            try:
                frame, addr = port.sock.recvfrom(65535)
            except BlockingIOError:
                return
            if addr[2] == PACKET_OUTGOING or len(frame) < 14:
                continue
            dst, src = frame[:6], frame[6:12]
            self.macs[src] = port
            target = self.macs.get(dst)
            if dst == BROADCAST or dst[0] & 1 or target is None:
                for other in self.ports.values():
                    if other is not port:
                        self._schedule(frame, other, now)
            elif target is not port:
                self._schedule(frame, target, now)

    def _flush(self, now: float) -> None:
        while self.queue and self.queue[0][0] <= now:
            _, _, name, frame = heapq.heappop(self.queue)
            port = self.ports[name]
            try:
                port.sock.send(frame)
                port.forwarded += 1
            except OSError:
                port.dropped += 1

    def run_forever(self) -> None:
        while True:
            now = time.monotonic()
            self._flush(now)
            timeout = None if not self.queue else max(0.0, self.queue[0][0] - time.monotonic())
            for key, _ in self.sel.select(timeout):
                self._receive(key.data, time.monotonic())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m voip.lab.switch", description=__doc__.splitlines()[0]
    )
    p.add_argument("--port", type=parse_port, action="append", required=True)
    p.add_argument("--seed", type=int)
    args = p.parse_args(argv)
    switch = Switch(args.port, args.seed)
    switch.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        switch.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
