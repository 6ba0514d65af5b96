"""Benchmark: the rendezvous and relay as an attacker sees them, on loopback (no root).

    .venv/bin/python bench/abuse.py [--names 0,10000,100000] [--datagrams 20000]

1. Starts `callpeer-rendezvous` (with a relay and RFC 5780 ports on 127.0.0.1 and 127.0.0.2)
   and sends it every kind of request a stranger can send without proving anything: the bytes
   that came back on any port, against the bytes sent.
2. How many names, and how many relay allocations, one source address can get.
3. CPU per datagram with 0, 10k and 100k names registered: an asyncio server in this process
   (the same shell and logic), a load generator in another, Binding requests and REGISTER
   refreshes; and the memory one registered name costs.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import struct
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from rendezvous.limits import Limits
from rendezvous.logic import RendezvousLogic
from rendezvous.server import RendezvousServer
from voip.nat.rendezvous_client import RendezvousClient
from voip.nat.signal_events import Refused
from voip.nat.signal_events import Registered
from voip.nat.turn_client import Allocated
from voip.nat.turn_client import TurnClient
from voip.nat.turn_client import TurnFailed
from voip.wire.signal import Register
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import encode
from voip.wire.stun import parse_message_untrusted
from voip.wire.stun import text
from voip.wire.turn import requested_transport

Addr = tuple[str, int]
HOST, ALT = "127.0.0.1", "127.0.0.2"
RESPONSE_PORT = 47_123  # where a RESPONSE-PORT request asks its answers to go


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
    # RFC 5780 ports are port and port + 1: make sure the second is free too.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((HOST, port + 1))
        except OSError:
            return free_port()
    return port


def start_server(port: int, *extra: str) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "rendezvous", "--store=:memory:", "--listen", f"{HOST}:{port}"]
    args += ["--relay-address", HOST, "--allow-loopback-peers", "--turn-secret=bench", *extra]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if "listening" not in proc.stdout.readline():
        raise SystemExit("callpeer-rendezvous did not start")
    return proc


def collect(sock: socket.socket, wait: float) -> list[bytes]:
    got, deadline = [], time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            got.append(sock.recv(65535))
        except TimeoutError:
            break
    return got


def requests() -> list[tuple[str, list[bytes], float]]:
    """(what, datagrams, how long to listen for answers)."""

    def stun(method: int, *attrs: tuple[int, bytes], fp: bool = False) -> bytes:
        return encode(Message(method, Class.REQUEST, attributes=attrs), fingerprint=fp)

    classic = struct.pack("!HHI", 0x0001, 8, 0x01020304) + bytes(12)
    classic += struct.pack("!HHI", Attr.CHANGE_REQUEST, 4, 0x06)
    client = RendezvousClient("alice", "bob", (HOST, 0), ())
    first_register = client.start(0.0)[0][0]
    bad_name = Message(
        Method.CP_REGISTER, Class.REQUEST, attributes=((Attr.CP_NAME, b"\xff" * 1456),)
    )
    transport = (Attr.REQUESTED_TRANSPORT, requested_transport())
    return [
        ("Binding", [stun(Method.BINDING)], 0.3),
        ("Binding with FINGERPRINT", [stun(Method.BINDING, fp=True)], 0.3),
        ("Binding, RFC 3489 NAT test (CHANGE-REQUEST)", [classic], 0.3),
        (
            "Binding with CHANGE-REQUEST",
            [stun(Method.BINDING, (Attr.CHANGE_REQUEST, bytes(3) + b"\x06"))],
            0.3,
        ),
        (
            "Binding with RESPONSE-PORT (answers counted there)",
            [stun(Method.BINDING, (Attr.RESPONSE_PORT, struct.pack("!HH", RESPONSE_PORT, 0)))],
            0.3,
        ),
        ("Binding, unknown required attribute", [stun(Method.BINDING, (0x7F01, b"????"))], 0.3),
        ("REGISTER, a name only", [stun(Method.CP_REGISTER, (Attr.CP_NAME, text("bob")))], 0.3),
        ("REGISTER as callpeer sends it (no cookie yet)", [first_register], 0.3),
        ("REGISTER with a bad 1,456-byte name", [encode(bad_name)], 0.3),
        (
            "two REGISTERs asking for each other (3 s)",
            [encode(Register(a, b).to_message()) for a, b in (("x", "y"), ("y", "x"))],
            3.0,
        ),
        ("LEAVE of someone's name", [stun(Method.CP_LEAVE, (Attr.CP_NAME, text("alice")))], 0.3),
        ("an unknown method", [stun(0x0FF)], 0.3),
        ("TURN Allocate, 28 bytes", [stun(Method.ALLOCATE, transport)], 0.3),
        (
            "TURN Allocate, 52 bytes",
            [stun(Method.ALLOCATE, transport, (Attr.SOFTWARE, bytes(20)), fp=True)],
            0.3,
        ),
        (
            "TURN CreatePermission",
            [stun(Method.CREATE_PERMISSION, (Attr.XOR_PEER_ADDRESS, bytes(8)))],
            0.3,
        ),
        ("TURN ChannelData, no allocation", [b"\x40\x00\x00\x04abcd"], 0.3),
        ("garbage", [os.urandom(100)], 0.3),
    ]


def amplification_table(port: int) -> None:
    print("## What a stranger gets back (unauthenticated, every port)\n")
    print("| request | bytes in | bytes out | factor |")
    print("|---|---|---|---|")
    targets = [(HOST, port), (HOST, port + 1), (ALT, port), (ALT, port + 1)]
    for what, datagrams, wait in requests():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        # A RESPONSE-PORT request is answered on another port of ours: listen there.
        sock.bind((HOST, RESPONSE_PORT if "RESPONSE-PORT" in what else 0))
        # The main port gets everything; the RFC 5780 ports get the Bindings.
        dests = targets if what.startswith("Binding") else targets[:1]
        sent = 0
        for dest in dests:
            for data in datagrams:
                sock.sendto(data, dest)
                sent += len(data)
        back = sum(len(d) for d in collect(sock, wait))
        sock.close()
        print(f"| {what} | {sent:,} | {back:,} | {back / sent:.2f} |")
    print()


def exchange(
    sock: socket.socket,
    out: list[tuple[bytes, Addr]],
    handle: Callable[[Message], list[tuple[bytes, Addr]] | None],
    wait: float = 0.5,
) -> None:
    """Send, and feed each answer to `handle` until it has nothing more to send."""
    while out:
        for data, dest in out:
            sock.sendto(data, dest)
        out = []
        for data in collect(sock, wait):
            out += handle(parse_message_untrusted(data)) or []


def one_source_table(port: int) -> None:
    server = (HOST, port)
    names, offers, refused = 0, [], ""
    sockets = []
    for i in range(500):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        sockets.append(sock)
        client = RendezvousClient(f"n{i}", "nobody", server, (), ask_now=False)

        def reply(
            msg: Message, client: RendezvousClient = client
        ) -> list[tuple[bytes, Addr]] | None:
            return client.handle(msg, client.server, 0.0)

        exchange(sock, client.start(0.0), reply, 0.2)
        events = client.pop_events()
        if any(isinstance(e, Refused) for e in events):
            refused = next(f"{e.code} {e.reason}" for e in events if isinstance(e, Refused))
            break
        names += 1
        offers += [e.turn for e in events if isinstance(e, Registered) and e.turn]
    allocations, alloc_refused = 0, ""
    for offer in offers:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((HOST, 0))
        sockets.append(sock)
        turn = TurnClient(offer.server, offer.username, offer.password)

        def answer(msg: Message, turn: TurnClient = turn) -> list[tuple[bytes, Addr]] | None:
            return turn.handle(msg, turn.server, 0.0)

        exchange(sock, turn.start(0.0), answer, 0.2)
        outcome = turn.pop_events()
        if any(isinstance(e, Allocated) for e in outcome):
            allocations += 1
        elif failed := [e for e in outcome if isinstance(e, TurnFailed)]:
            alloc_refused = failed[0].reason
            break
    for sock in sockets:
        sock.close()
    print("## What one source address can hold\n")
    print(f"- names: {names}, then `{refused}`")
    print(f"- relay allocations with those names' credentials: {allocations}, then")
    print(f"  `{alloc_refused}`\n")


# -- CPU per datagram at scale ---------------------------------------------------------


def load(port: int, count: int, kind: str, done: Any) -> None:
    """The load generator, in its own process: `count` datagrams, paced by answers."""
    server = (HOST, port)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    sock.settimeout(1.0)
    if kind == "binding":
        data = [encode(Message(Method.BINDING, Class.REQUEST), fingerprint=True)]
    else:  # REGISTER refreshes of one registered name: cookie valid, MAC'd
        client = RendezvousClient("loadgen", "nobody", server, (), ask_now=False)
        exchange(sock, client.start(0.0), lambda m: client.handle(m, server, 0.0), 0.3)
        sock.settimeout(1.0)
        data = [client.refresh(0.0)[0][0] for _ in range(32)]  # 32 transactions
    window = 32  # requests in flight
    sent = answered = 0
    while answered < count:
        while sent - answered < window and sent < count:
            sock.sendto(data[sent % len(data)], server)
            sent += 1
        try:
            sock.recv(2048)
            answered += 1
        except TimeoutError:
            sent = answered  # lost some: send more
    done.set()


async def serve_and_measure(names: int, datagrams: int) -> dict[str, float]:
    # Names live an hour here, so none expires while we measure; each has its own address.
    limits = Limits(names=names + 1000, names_per_ip=names + 1000)
    logic = RendezvousLogic(lifetime=3600, limits=limits)
    now = asyncio.get_running_loop().time()
    for i in range(names):
        src = (f"198.18.{(i >> 8) & 0xFF}.{i & 0xFF}", 10000 + (i >> 16))
        logic.registry.register(f"user{i}", src, (), None, now, client_key=b"k%d" % i, key=b"k")
    server = RendezvousServer(logic)
    await server.start(HOST, 0)
    out = {}
    try:
        for kind in ("binding", "register"):
            done = multiprocessing.Event()
            proc = multiprocessing.Process(
                target=load, args=(server.address[1], datagrams, kind, done)
            )
            received0 = server.endpoint.received if server.endpoint else 0
            cpu0 = time.process_time()
            proc.start()
            while not done.is_set():
                await asyncio.sleep(0.05)
            cpu = time.process_time() - cpu0
            proc.join()
            assert server.endpoint is not None
            handled = server.endpoint.received - received0
            out[kind] = 1e6 * cpu / max(handled, 1)
    finally:
        server.close()
    return out


def memory_per_name(count: int = 5000) -> float:
    """Bytes a name costs the server, registered the real way (cookie, key, MAC'd answer)."""
    room = {"names": count, "names_per_ip": count, "claims_per_ip": count, "claims_per_hour": count}
    logic = RendezvousLogic(limits=Limits(**room))
    server = ("203.0.113.10", 3478)
    clients = [
        RendezvousClient(f"user{i}", "nobody", server, (), ask_now=False) for i in range(count)
    ]
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i, client in enumerate(clients):
        src = (f"198.18.{(i >> 8) & 0xFF}.{i & 0xFF}", 40000)
        queue = [d for d, _ in client.start(0.0)]
        while queue:
            for answer, _ in logic.handle_datagram(queue.pop(), src, 0.0):
                queue += [
                    d for d, _ in client.handle(parse_message_untrusted(answer), server, 0.0) or []
                ]
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(
        s.size_diff
        for s in after.compare_to(before, "filename")
        if "rendezvous" in s.traceback[0].filename or "voip" in s.traceback[0].filename
    )
    assert len(logic.registry) == count
    return grown / count


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--names", default="0,10000,100000", help="registered names for the CPU table")
    p.add_argument("--datagrams", type=int, default=20000, help="per kind and size")
    args = p.parse_args()
    port = free_port()
    proc = start_server(port, "--alt-address", ALT)
    try:
        amplification_table(port)
        one_source_table(port)
    finally:
        proc.terminate()
        proc.wait()
    print("## CPU per datagram, server process (asyncio shell and logic)\n")
    print("| names registered | Binding µs | REGISTER refresh µs |")
    print("|---|---|---|")
    for n in (int(x) for x in args.names.split(",")):
        cpu = asyncio.run(serve_and_measure(n, args.datagrams))
        print(f"| {n:,} | {cpu['binding']:.0f} | {cpu['register']:.0f} |")
    print(
        f"\nmemory per registered name: {memory_per_name():,.0f} bytes (tracemalloc, 5,000 names)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
