"""callpeer-rendezvous --workers N: N processes on one port, one core each (SO_REUSEPORT).

The kernel hashes each client's datagrams (by source and destination address and port) to one
worker, which holds that client's relay allocations, so relaying scales with the cores; with
--redis, that client's name too (the store is shared). Worker 0, the home, also holds the names
(without --redis), the introductions, the TCP and TLS listeners and the RFC 5780
ports; the others pass it what is not theirs (rendezvous/worker_link.py), and it answers from its
own socket on the same port. Every worker knows the TURN secret (REST credentials check the
same everywhere) and draws relayed ports from its own slice of one range, so an allocation can
reach another worker's, on this host, as a peer on the network.

The parent process only starts the workers and waits: it reserves the ports first (port 0
becomes the one the kernel picks, for all), starts the others, then the home (whose first
line says it listens once every worker does), and stops them all when it is stopped or one of
them ends. A worker whose parent dies is stopped by the kernel (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

from rendezvous.node import relaying
from rendezvous.node import signalling
from rendezvous.server import RendezvousServer
from rendezvous.worker_link import HomeReader
from rendezvous.worker_link import link_pair
from rendezvous.worker_link import pack_frame
from voip.wire.stun import Address

DEFAULT_RANGE = (49152, 65535)  # coturn's relay ports: the fallback of default_relay_range
EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
MIN_RANGE = 1024  # ports: a range above the ephemeral one smaller than this is too small
READY_WITHIN = 20.0  # s for every worker to listen
PR_SET_PDEATHSIG = 1
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})  # stop the workers, then the parent


@dataclass
class Worker:
    """One worker's place among the others, in its own process."""

    index: int
    count: int
    listens: list[Address]  # every worker's main addresses (ports resolved)
    links: list[socket.socket] = field(default_factory=list)  # home: one a worker; else one
    ready_fd: int = -1
    shares_names: bool = False  # names in a shared store (--redis): each worker serves its own

    @property
    def home(self) -> bool:
        return self.index == 0

    def port_slice(self, whole: tuple[int, int]) -> tuple[int, int]:
        """This worker's part of the relayed port range."""
        low, high = whole
        size = (high - low + 1) // self.count
        start = low + self.index * size
        return start, (high if self.index == self.count - 1 else start + size - 1)

    def started(self, server: RendezvousServer) -> None:
        """Link the running server to the others, then say it is ready."""
        fast = server.fast
        assert fast is not None and server.endpoint is not None
        loop = server.endpoint.loop
        if self.home:
            for link in self.links:
                reader = HomeReader(link, fast.forwarded, loop.time)
                loop.add_reader(link.fileno(), reader.readable)
        else:
            fast.slow = forwarder(fast.slow, self.links[0], self.shares_names)
        os.write(self.ready_fd, b"1")
        os.close(self.ready_fd)


def forwarder(
    take: Callable[[bytes, Address, Address, float], None],
    link: socket.socket,
    names: bool = False,
) -> Callable[[bytes, Address, Address, float], None]:
    """A worker's full rules: TURN its own (and with `names`, its clients' names, which live
    in a shared store), everything else to the home."""

    def route(data: bytes, src: Address, local: Address, now: float) -> None:
        if relaying(data) or (names and signalling(data)):
            take(data, src, local, now)
            return
        try:  # noqa: SIM105 - per datagram
            link.send(pack_frame(data, src, local))
        except OSError:  # the home is behind by a whole buffer: UDP's loss, the client retries
            pass

    return route


def default_relay_range() -> tuple[int, int]:
    """The relayed ports of all workers when --min-port/--max-port name none: those above the
    kernel's ephemeral range (61000-65535 with Linux's default), so no port of it is one this
    host's own clients took; coturn's 49152-65535 where that leaves too few."""
    try:
        high = int(EPHEMERAL.read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return DEFAULT_RANGE
    return (high + 1, 65535) if 65535 - high >= MIN_RANGE else DEFAULT_RANGE


def reserve(listens: list[Address]) -> list[socket.socket]:
    """A socket on each address with SO_REUSEPORT, holding its port until the workers share it."""
    held = []
    try:
        for index, (host, port) in enumerate(listens):
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            held.append(sock)
            if host == "::":  # as the server opens it: the first --listen dual-stack
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if index == 0 else 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
    except OSError:
        for sock in held:
            sock.close()
        raise
    return held


def die_with_parent() -> None:
    if sys.platform.startswith("linux"):  # elsewhere the parent's SIGTERM is all there is
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_workers(
    count: int,
    listens: list[Address],
    serve: Callable[[Worker], int],
    prepare: Callable[[list[Address]], None] | None = None,
) -> int:
    """Run `serve` in `count` worker processes sharing `listens`, after `prepare` has been
    told the addresses with their ports (what it makes, the workers inherit); the exit status:
    0 when stopped, else the first worker's that ended on its own (1 if it was killed)."""
    held = reserve(listens)  # OSError: the caller says it cannot listen
    resolved = [(h, s.getsockname()[1]) for (h, _), s in zip(listens, held, strict=True)]
    if prepare is not None:
        prepare(resolved)
    pairs = [link_pair() for _ in range(count - 1)]
    children: dict[int, int] = {}

    parent = os.getpid()

    def start(index: int) -> None:
        ready_r, ready_w = os.pipe()
        sys.stdout.flush()  # or the worker prints what the parent had buffered again
        sys.stderr.flush()
        # Blocked across the fork: a SIGTERM that reached the worker before it dropped the
        # parent's handler would run it there (and stop its siblings).
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = os.fork()
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        else:  # the worker
            status = 1
            try:
                for signum in STOP_SIGNALS:
                    signal.signal(signum, signal.SIG_DFL)
                die_with_parent()
                if os.getppid() != parent:  # the parent died before that was armed
                    return
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                os.close(ready_r)
                for sock in held:
                    sock.close()
                mine = [h for h, _ in pairs] if index == 0 else [pairs[index - 1][1]]
                for sock in {s for pair in pairs for s in pair} - set(mine):
                    sock.close()
                status = serve(Worker(index, count, resolved, mine, ready_w))
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(status)
        os.close(ready_w)
        children[pid] = index
        if not wait_ready(ready_r):
            stop_all(children)
            raise OSError(f"worker {index} did not start within {READY_WITHIN:.0f} s")

    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        stop_all(children)

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    try:
        for index in range(1, count):
            start(index)
        # The others hold the ports now. The placeholders go before the home starts: one
        # still open when the home says it listens (its first line: all listen) would take
        # its share of the first datagrams, and drop them unread when it closed.
        for sock in held:
            sock.close()
        start(0)
    finally:
        for sock in held:
            sock.close()
        for pair in pairs:
            for sock in pair:
                sock.close()
    return wait_all(children, lambda: stopping)


def wait_ready(fd: int) -> bool:
    deadline = time.monotonic() + READY_WITHIN
    try:
        while (left := deadline - time.monotonic()) > 0:
            if select.select([fd], [], [], left)[0]:
                return os.read(fd, 1) == b"1"  # b"" if the worker ended before it was ready
        return False
    finally:
        os.close(fd)


def stop_all(children: dict[int, int]) -> None:
    for pid in children:
        try:  # noqa: SIM105 - ProcessLookupError: it ended already
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def wait_all(children: dict[int, int], stopping: Callable[[], bool]) -> int:
    status = 0
    while children:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is not None and not stopping():
            status = os.waitstatus_to_exitcode(code) or 1
            print(
                f"callpeer-rendezvous: worker {index} ended; stopping the others", file=sys.stderr
            )
            stop_all(children)
    return 0 if stopping() else status
