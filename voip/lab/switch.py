"""The lab's emulated internet: a learning Ethernet switch in userspace with delay, jitter, loss.

This kernel has no netem, so links are shaped here: one AF_PACKET socket per veth port in the
internet namespace; every frame delivered *to* a port waits that port's one-way delay (plus
uniform jitter) and is dropped with that port's loss probability. RTT(A, B) is therefore
delay-a + delay-b: a relayed round trip crosses the relay's link twice.

    python -m voip.lab.switch --port NAME:DELAY_MS:JITTER_MS:LOSS_PCT [--port ...] [--seed N]

It prints "ready" once every port is open, and runs until killed.

The switch is on every lab measurement's path, so it keeps its own error small: a frame's due
time counts from the kernel's arrival timestamp (not from when this process got to read it), it
waits with microsecond timeouts (epoll rounds up to whole milliseconds), and it asks for real-time
scheduling, so a busy machine delays the callers, as it would in life, and not the internet.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import heapq
import itertools
import os
import random
import selectors
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass
from dataclasses import field

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # sll_pkttype of frames this socket itself sent
BROADCAST = b"\xff" * 6
# Linux <asm-generic/socket.h>; Python's socket module does not name them.
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
TIMESPEC = struct.Struct("@qq")
CMSG_SPACE = socket.CMSG_SPACE(TIMESPEC.size)
PR_SET_TIMERSLACK = 29  # <linux/prctl.h>


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
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
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
        # select(2) takes a timeval: epoll and poll would round every wait up to a millisecond.
        self.sel = selectors.SelectSelector()

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

    def _receive(self, port: Port) -> None:
        # The kernel stamps arrival on CLOCK_REALTIME; frames are scheduled on the monotonic
        # clock, which NTP cannot step. The offset is read once per batch.
        offset = time.time() - time.monotonic()
        while True:
            try:
                frame, ancillary, _, addr = port.sock.recvmsg(65535, CMSG_SPACE)
            except BlockingIOError:
                return
            if addr[2] == PACKET_OUTGOING or len(frame) < 14:
                continue
            now = arrival(ancillary, offset)
            dst, src = frame[:6], frame[6:12]
            self.macs[src] = port
            target = self.macs.get(dst)
            # Any EtherType passes: IPv6 as IPv4. Its neighbour discovery goes to multicast
            # MACs (33:33:...), flooded here as ARP's broadcasts are.
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
                self._receive(key.data)


def arrival(ancillary: list[tuple[int, int, bytes]], offset: float) -> float:
    """When the kernel received a frame, on the monotonic clock (now, if it did not say)."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(data) >= TIMESPEC.size:
            sec, nsec = TIMESPEC.unpack_from(data)
            return float(sec + nsec / 1e9 - offset)
    return time.monotonic()


def prefer_this_process() -> None:
    """Real-time priority and no timer slack, where the kernel allows it (the lab runs as root):
    the emulated internet, and the echo that measures it, should not queue behind the callers
    for a CPU."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m voip.lab.switch", description=__doc__.splitlines()[0]
    )
    p.add_argument("--port", type=parse_port, action="append", required=True)
    p.add_argument("--seed", type=int)
    args = p.parse_args(argv)
    switch = Switch(args.port, args.seed)
    prefer_this_process()
    switch.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        switch.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
