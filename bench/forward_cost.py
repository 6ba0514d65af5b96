"""CPU per relayed ChannelData datagram, on loopback, by how the relay reads and sends it:
".venv/bin/python bench/forward_cost.py".

Why the relay forwards live channels in C (rendezvous/channel_forward.c). N datagrams of
172 bytes (an Opus frame) wait in the main socket's receive buffer; each way of forwarding
then reads them all and sends each to its peer from its allocation's relayed socket, and the
process CPU time it took (system calls included, the kernel's delivery to the peer socket too)
is divided by N:

- a bare `recvfrom` and `sendto` per datagram in Python, no decision at all;
- the fast path in Python: rendezvous/fast_path.py with the C forwarder switched off;
- batched in C: rendezvous/fast_path.py with it (recvmmsg, a table look-up, sendmmsg);
- recvmmsg and sendmmsg through ctypes, 64 a call, no decision: what the kernel
  itself costs per datagram here.

With 1 allocation every datagram leaves by the same socket (one sendmmsg per 64); with 100, the
clients' datagrams interleave and each leaves by its own. Run it pinned to one core
(`taskset -c 0`) for steadier figures; --rounds takes the median.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import socket
import statistics
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rendezvous.batched_routes import new_forwarder
from rendezvous.channel_routes import ChannelRoutes
from rendezvous.channel_routes import Route
from rendezvous.fast_path import FastPath
from voip.transport import UdpEndpoint

SO_RCVBUFFORCE = 33
FRAME = 172
BATCH = 64
MSG_DONTWAIT = 0x40


def udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:  # room for every datagram of a round (root); otherwise as much as allowed
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 256 << 20)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 << 20)
    return sock


class Bench:
    """A main socket, `allocations` clients and relayed sockets, one peer."""

    def __init__(self, allocations: int):
        self.main, self.peer = udp(), udp()
        self.clients = [udp() for _ in range(allocations)]
        self.relays = [udp() for _ in range(allocations)]
        self.peer_addr = self.peer.getsockname()

    def fill(self, count: int) -> int:
        """Queue `count` ChannelData datagrams on the main socket, the clients in turn."""
        to = self.main.getsockname()
        frame = struct.pack("!HH", 0x4000, FRAME - 4) + bytes(FRAME - 4)
        for i in range(count):
            self.clients[i % len(self.clients)].sendto(frame, to)
        return count

    def empty_peer(self) -> int:
        got = 0
        while True:
            try:
                self.peer.recv(4096)
            except BlockingIOError:
                return got
            got += 1

    def close(self) -> None:
        for sock in [self.main, self.peer, *self.clients, *self.relays]:
            sock.close()


def bare_python(bench: Bench, count: int) -> None:
    recv, peer = bench.main.recvfrom, bench.peer_addr
    sends = {c.getsockname(): r.sendto for c, r in zip(bench.clients, bench.relays, strict=True)}
    for _ in range(count):
        data, src = recv(65535)
        sends[src](data[4:], peer)


def fast_path(batched: bool) -> Callable[[Bench, int], None]:
    def run(bench: Bench, count: int) -> None:
        loop = asyncio.new_event_loop()
        try:
            routes = ChannelRoutes()
            sockets = {r.getsockname(): r for r in bench.relays}
            fast = FastPath(
                routes,
                sockets,
                {},
                (Counter(), Counter()),
                slow=lambda *a: None,
                slow_peer=lambda *a: None,
                clock=time.monotonic,
            )
            fast.out = bench.main
            if batched:
                fast.batched = new_forwarder(fast, None)
                assert fast.batched is not None, "rendezvous._channel_forward was not built"
            for client, relay in zip(bench.clients, bench.relays, strict=True):
                route = Route(
                    client.getsockname(), 0x4000, relay.getsockname(), bench.peer_addr, 1e12
                )
                routes.learn(route)
            endpoint = UdpEndpoint(loop, lambda *a: None)
            endpoint.sock = bench.main
            start = time.process_time()
            while fast.relay_stats["relayed_to_peer"] < count:
                fast.client_readable(endpoint, bench.main.getsockname())
            run.cpu = time.process_time() - start  # type: ignore[attr-defined]
        finally:
            endpoint.sock = None
            loop.close()

    run.cpu = None  # type: ignore[attr-defined]
    return run


class Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("hdr", Msghdr), ("len", ctypes.c_uint)]


def bare_kernel(bench: Bench, count: int) -> None:
    """recvmmsg then sendmmsg of the same 64 buffers (from the first relayed socket), no look-up."""
    libc = ctypes.CDLL(None, use_errno=True)
    slot = 2048
    buffers = ctypes.create_string_buffer(BATCH * slot)
    names = ctypes.create_string_buffer(BATCH * 16)
    peer = socket.inet_aton(bench.peer_addr[0])
    dest = ctypes.create_string_buffer(
        struct.pack("=H", socket.AF_INET) + struct.pack("!H", bench.peer_addr[1]) + peer, 16
    )
    iov_in, iov_out = (Iovec * BATCH)(), (Iovec * BATCH)()
    msgs_in, msgs_out = (Mmsghdr * BATCH)(), (Mmsghdr * BATCH)()
    base = ctypes.addressof(buffers)
    for i in range(BATCH):
        iov_in[i].base, iov_in[i].len = base + i * slot, slot
        iov_out[i].base, iov_out[i].len = base + i * slot + 4, FRAME - 4
        msgs_in[i].hdr.name, msgs_in[i].hdr.namelen = ctypes.addressof(names) + 16 * i, 16
        msgs_in[i].hdr.iov, msgs_in[i].hdr.iovlen = ctypes.addressof(iov_in[i]), 1
        msgs_out[i].hdr.name, msgs_out[i].hdr.namelen = ctypes.addressof(dest), 16
        msgs_out[i].hdr.iov, msgs_out[i].hdr.iovlen = ctypes.addressof(iov_out[i]), 1
    main, out = bench.main.fileno(), bench.relays[0].fileno()
    done = 0
    while done < count:
        got = libc.recvmmsg(main, ctypes.byref(msgs_in), BATCH, MSG_DONTWAIT, None)
        if got <= 0:
            raise RuntimeError(f"recvmmsg: errno {ctypes.get_errno()}")
        # (each namelen stays 16: every source is IPv4, so none needs setting again)
        libc.sendmmsg(out, ctypes.byref(msgs_out), got, 0)
        done += got


def measure(way: Callable[[Bench, int], None], allocations: int, count: int) -> float:
    """µs of process CPU per datagram for one round."""
    bench = Bench(allocations)
    try:
        bench.fill(count)
        start = time.process_time()
        way(bench, count)
        cpu = getattr(way, "cpu", None) or time.process_time() - start
        delivered = bench.empty_peer()
        if delivered < count * 0.99:
            raise RuntimeError(f"only {delivered} of {count} datagrams reached the peer")
        return cpu / count * 1e6
    finally:
        bench.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datagrams", type=int, default=100_000, help="per round (default 100,000)")
    p.add_argument("--rounds", type=int, default=5, help="median of this many (default 5)")
    opts = p.parse_args()
    ways: list[tuple[str, Callable[[], Callable[[Bench, int], None]]]] = [
        ("a bare `recvfrom` and `sendto` in Python, no decision", lambda: bare_python),
        ("the fast path in Python (`--forward python`)", lambda: fast_path(False)),
        ("batched in C (`--forward batched`)", lambda: fast_path(True)),
        (
            "`recvmmsg` and `sendmmsg` of 64, no decision (the kernel's own share)",
            lambda: bare_kernel,
        ),
    ]
    print(f"median of {opts.rounds} rounds of {opts.datagrams:,} datagrams")
    print("| µs of CPU per relayed datagram | 1 allocation | 100 allocations |")
    print("|---|---|---|")
    for label, make in ways:
        figures = []
        for allocations in (1, 100):
            runs = [measure(make(), allocations, opts.datagrams) for _ in range(opts.rounds)]
            figures.append(f"{statistics.median(runs):.2f}")
        print(f"| {label} | {' | '.join(figures)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
