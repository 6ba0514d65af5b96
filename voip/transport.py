"""The asyncio shell around sans-IO protocol objects: one UDP socket and one timer."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import TypeVar

from voip.rate_log import RateLimitedLog
from voip.wire.stun import Address
from voip.wire.transactions import Schedule
from voip.wire.transactions import Transaction

T = TypeVar("T")

DatagramHandler = Callable[[bytes, Address, float], object]  # the result is ignored

log = logging.getLogger(__name__)

# Linux <asm-generic/socket.h>; Python's socket module does not name it. The kernel stamps
# each datagram on arrival, so an RTT or a jitter figure is the network's, not our event loop's.
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
TIMESPEC = struct.Struct("@qq")
ANCILLARY = socket.CMSG_SPACE(TIMESPEC.size)
BATCH = 64  # datagrams read per wake-up before other work gets a turn
MAX_AGE = 5.0  # s: a stamp further from now means the wall clock was stepped
OFFSET_EVERY = 1.0  # s between readings of the wall clock against the loop's
V4_MAPPED = "::ffff:"  # RFC 4291 §2.5.5.2: how a dual-stack socket names an IPv4 address


class UdpEndpoint:
    """One bound UDP socket; every datagram goes to `on_datagram(data, src, now)`, where `now`
    is when the kernel received it, on the event loop's clock.

    This is the one guarded entry for datagrams: a handler's exception is counted and logged at
    most once per LOG_EVERY seconds (voip/rate_log.py), never raised into the event loop, so
    garbage from the network cannot fill a disk with tracebacks."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_datagram: DatagramHandler):
        self.loop = loop
        self.on_datagram = on_datagram
        self.sock: socket.socket | None = None
        self.received = 0
        self.sent = 0
        self.errors = 0  # ICMP errors and sends the kernel refused
        self._timestamps = False
        self.dual = False  # an IPv6 socket that takes IPv4 too (IPv4 as ::ffff:a.b.c.d inside)
        self._failures = RateLimitedLog(log, clock=loop.time)  # the clock datagrams are timed by
        self._offset = 0.0  # wall clock minus loop clock
        self._offset_at = -OFFSET_EVERY

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        on_datagram: DatagramHandler,
        *,
        timestamps: bool = True,
        receive_buffer: int | None = None,
        dual: bool = True,
        reuse_port: bool = False,
    ) -> UdpEndpoint:
        """Bind a socket on the running loop. `timestamps`: the kernel's arrival time as `now`
        (else the time it was read); `receive_buffer`: bytes of SO_RCVBUF to ask for (beyond
        net.core.rmem_max as root). Host "::" is both families on one socket (IPV6_V6ONLY off):
        handlers and senders see IPv4 addresses as plain IPv4, never ::ffff:a.b.c.d.
        `reuse_port`: SO_REUSEPORT, so processes share the port, each client's datagrams
        hashed by the kernel to one of them."""
        loop = asyncio.get_running_loop()
        self = cls(loop, on_datagram)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if host == "::":  # both families, unless not `dual` (another socket has IPv4)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
                self.dual = dual
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        if receive_buffer is not None:
            _receive_buffer(sock, receive_buffer)
        if timestamps and sys.platform.startswith("linux"):
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                self._timestamps = True
            except OSError:
                pass
        self.sock = sock
        loop.add_reader(sock.fileno(), self._readable)
        return self

    @property
    def local_address(self) -> Address:
        assert self.sock is not None
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def send(self, data: bytes, dest: Address) -> None:
        if self.sock is None:
            return
        if self.dual and ":" not in dest[0]:
            dest = (V4_MAPPED + dest[0], dest[1])
        try:
            self.sock.sendto(data, dest)
            self.sent += 1
        except OSError:  # a full buffer, no route, a firewall: UDP has nothing to retry
            self.errors += 1

    def send_all(self, datagrams: list[tuple[bytes, Address]]) -> None:
        for data, dest in datagrams:
            self.send(data, dest)

    def close(self) -> None:
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None

    def _readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        loop_now = self.loop.time()
        if self._timestamps and loop_now - self._offset_at >= OFFSET_EVERY:
            self._offset, self._offset_at = _wall_minus(self.loop), loop_now
        for _ in range(BATCH):
            try:
                if self._timestamps:
                    data, ancillary, _, src = sock.recvmsg(65535, ANCILLARY)
                    now = kernel_stamp(ancillary, loop_now + self._offset) - self._offset
                    if abs(now - loop_now) > MAX_AGE:
                        now = loop_now
                else:
                    data, src = sock.recvfrom(65535)
                    now = loop_now
            except BlockingIOError:
                return
            except OSError:  # ICMP port unreachable from a candidate that goes nowhere
                self.errors += 1
                continue
            self.received += 1
            host = str(src[0])
            if self.dual and host.startswith(V4_MAPPED):
                host = host[len(V4_MAPPED) :]
            try:
                self.on_datagram(data, (host, int(src[1])), now)
            except Exception:
                self.handler_failed((host, int(src[1])))
            if self.sock is None:  # the handler closed us
                return

    @property
    def handler_failures(self) -> int:
        """Datagrams a handler could not take."""
        return self._failures.count

    def handler_failed(self, src: Address) -> None:
        """Count a datagram a handler could not take; log one a LOG_EVERY seconds at most
        (inside an `except` block: the traceback goes with it)."""
        self._failures.exception("a datagram from %s:%s could not be handled", src[0], src[1])


def _receive_buffer(sock: socket.socket, size: int) -> None:
    """SO_RCVBUFFORCE when allowed (root: past net.core.rmem_max), else what SO_RCVBUF gets."""
    for option in (SO_RCVBUFFORCE, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            return
        except OSError:
            continue


def _wall_minus(loop: asyncio.AbstractEventLoop) -> float:
    """time.time() minus loop.time(), from the tightest of three bracketed readings (a reading
    interrupted by the scheduler would skew every stamp until the next)."""
    best = (float("inf"), 0.0)
    for _ in range(3):
        before = loop.time()
        wall = time.time()
        after = loop.time()
        best = min(best, (after - before, wall - (before + after) / 2))
    return best[1]


def kernel_stamp(ancillary: list[tuple[int, int, bytes]], default: float) -> float:
    """The kernel's arrival time (CLOCK_REALTIME) of a datagram, or `default`."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= TIMESPEC.size:
            sec, nsec = TIMESPEC.unpack_from(data)
            return float(sec + nsec / 1e9)
    return default


class Timer:
    """Calls `fire(now)` at the earliest deadline any sans-IO object asks for."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        deadline: Callable[[], float | None],
        fire: Callable[[float], None],
    ):
        self.loop = loop
        self.deadline = deadline
        self.fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self._when = 0.0

    def rearm(self) -> None:
        """Call after anything that may have moved the earliest deadline. A timer already set
        no later than needed is kept (firing early costs one idle poll); a server calls this
        for every datagram, and cancelling and scheduling each time would cost more."""
        when = self.deadline()
        if self._handle is not None:
            if when is not None and self._when <= when:
                return
            self._handle.cancel()
            self._handle = None
        if when is not None:
            self._when = when
            self._handle = self.loop.call_at(when, self._run)

    def _run(self) -> None:
        self._handle = None
        # Never before the deadline it was set for: a loop whose clock is coarser than its
        # timers (uvloop's, in milliseconds) may run a callback early, which would find nothing
        # due and be set again at once, over and over until the clock ticks.
        self.fire(max(self.loop.time(), self._when))
        self.rearm()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def request(
    endpoint: UdpEndpoint,
    data: bytes,
    dest: Address,
    answer: asyncio.Future[T],
    schedule: Schedule,
) -> T | None:
    """Send a request, and again on `schedule` (a STUN transaction's retransmissions, RFC 8489
    §6.2.1), until `answer` is resolved by whoever reads the replies; None if it never is."""
    loop = asyncio.get_running_loop()
    txn: Transaction[None] = Transaction.scheduled(b"", data, dest, None, schedule)
    endpoint.send(txn.first_send(loop.time()), dest)
    while True:
        wait = max(0.0, txn.deadline - loop.time())
        try:
            return await asyncio.wait_for(asyncio.shield(answer), wait)
        except TimeoutError:
            again = txn.on_deadline(loop.time())
            if again is None:
                return None
            endpoint.send(again, dest)


async def resolve(host: str, port: int) -> Address:
    """A numeric address for host (an IPv4 one if it has one: a call registers where its NAT's
    mapping is learned, and natcheck probes IPv4; else IPv6); OSError with the reason."""
    return (await resolve_all(host, port))[0]


async def resolve_all(host: str, port: int) -> list[Address]:
    """Every address of host in the resolver's order, each once: its IPv4 ones if it has any,
    as `resolve` prefers (a server of the other family would see another mapping of ours),
    else its IPv6 ones; OSError with the reason."""
    loop = asyncio.get_running_loop()
    host = host.removeprefix("[").removesuffix("]")  # "[2001:db8::10]" as typed in a URI
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"{host!r} has no address")
    four = [info for info in infos if info[0] == socket.AF_INET]
    found = [(str(info[4][0]), int(info[4][1])) for info in four or infos]
    return list(dict.fromkeys(found))
