"""Benchmark: presence shared through Redis (callpeer-rendezvous --redis), on loopback (no root).

    .venv/bin/python bench/presence.py [--names 100000] [--servers 2] [--pairs 300]

Starts a throwaway redis-server (Debian's) and `--servers` rendezvous processes sharing it (one
worker each), then, from this process:

1. registers `--names` names, spread over the servers, each with its own identity key (a first
   registration: the server agrees a key with X25519 and claims the name in Redis), as fast as
   the servers answer with at most `--window` requests in flight; then refreshes all of them
   (the same requests again: the server reuses the agreed key). Rates are answers per second,
   and per CPU second of each server process (on a machine where the servers, Redis and this
   generator share few cores, the second is what one server would do with a core of its own);
2. how much memory one online name costs in Redis (used_memory) and in each server (RSS);
3. introduction latency: pairs of callers, one on each of two servers, the second asking while
   the first waits: from the second's REGISTER to the later of the two PEER-READYs, and the gap
   between the two; the same on one server without Redis, and Redis's own round trip beside.

Requests are built here in advance (cookies for each source socket, a MAC key per identity), so
the generator spends its time sending and counting, not on cryptography.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path

import psutil
import redis
import redis.asyncio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from voip.lab.redis_server import RedisProcess
from voip.lab.redis_server import start_redis
from voip.security.registration import RegistrationKeyPair
from voip.wire.signal import UNPROVEN_REGISTER_BYTES
from voip.wire.signal import IceCredentials
from voip.wire.signal import Register
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Method
from voip.wire.stun import encode
from voip.wire.stun import parse_message_untrusted

Addr = tuple[str, int]
HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
BUFFER = 8 * 1024 * 1024
BASELINE = [0]  # Redis's used_memory before any name


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


@dataclass
class Server:
    proc: subprocess.Popen[str]
    address: Addr

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def stop(self) -> str:
        """Stop it: its last line of counters."""
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return ""
        return next((line for line in out.splitlines() if line.startswith("stopped")), "")


def start_server(names: int, redis_url: str | None) -> Server:
    caps = [
        *["--max-names", str(names + 10_000), "--names-per-ip", str(names + 10_000)],
        *["--claims-per-ip", str(names + 10_000), "--claims-per-hour", str(names + 10_000)],
        *["--max-bindings", str(names + 10_000)],
    ]
    store = ["--redis", redis_url] if redis_url else ["--store", ":memory:"]
    proc = subprocess.Popen(
        [
            str(BIN / "callpeer-rendezvous"),
            "--listen",
            f"{HOST}:0",
            "--workers",
            "1",
            "--no-relay",
            "--lifetime",
            "600",
            *caps,
            *store,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on udp" not in line:
        raise SystemExit(f"callpeer-rendezvous did not start: {line!r}")
    host, port = line.rsplit(" ", 1)[1].strip().rsplit(":", 1)
    for more in proc.stdout:  # up to the line that says where names are kept
        if "names" in more:
            break
    return Server(proc, (host, int(port)))


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
    s.bind((HOST, 0))
    return s


def challenge(sock: socket.socket, server: Addr) -> tuple[str, bytes]:
    """One 401 for this socket: its cookie, and the server's public key."""
    req = Register("probe", None, key=bytes(32)).to_message()
    room = UNPROVEN_REGISTER_BYTES - len(encode(req)) - 4
    req = replace(req, attributes=(*req.attributes, (Attr.PADDING, bytes(-(-room // 4) * 4))))
    sock.settimeout(2.0)
    sock.sendto(encode(req), server)
    msg = parse_message_untrusted(sock.recv(2048))
    sock.setblocking(False)
    nonce, key = msg.text(Attr.NONCE), msg.get(Attr.CP_KEY)
    assert nonce is not None and key is not None, msg
    return nonce, key


@dataclass
class Caller:
    name: str
    sock: socket.socket
    server: Addr
    key: bytes  # agreed with the server
    data: bytes  # its REGISTER, with the socket's cookie, under the key


def make_callers(
    names: list[str],
    servers: list[Addr],
    sockets_per_server: int,
    peers: dict[str, str] | None = None,
) -> list[Caller]:
    socks = {s: [udp_socket() for _ in range(sockets_per_server)] for s in servers}
    cookies = {(id(k), s): challenge(k, s) for s in servers for k in socks[s]}
    callers = []
    for i, name in enumerate(names):
        server = servers[i % len(servers)]
        sock = socks[server][(i // len(servers)) % sockets_per_server]
        nonce, server_key = cookies[(id(sock), server)]
        keys = RegistrationKeyPair(X25519PrivateKey.generate())
        key = keys.agree_untrusted(server_key, we_are_client=True)
        peer = (peers or {}).get(name)
        ice = replace(IceCredentials.generate(), commit=bytes(32)) if peer else None
        req = Register(name, peer, (), None, nonce, keys.public, ice).to_message()
        data = encode(req, integrity_key=key, integrity_sha256=True, fingerprint=True)
        callers.append(Caller(name, sock, server, key, data))
    return callers


def blast(callers: list[Caller], window: int) -> tuple[float, int, int]:
    """Send every caller's REGISTER, at most `window` unanswered: (seconds, answered, errors)."""
    socks = {c.sock.fileno(): c.sock for c in callers}
    poll = select.epoll()
    for fd in socks:
        poll.register(fd, select.EPOLLIN)
    outstanding, sent, answered, errors = 0, 0, 0, 0
    start = time.perf_counter()
    deadline = start + 120
    while answered + errors < len(callers) and time.perf_counter() < deadline:
        while sent < len(callers) and outstanding < window:
            c = callers[sent]
            c.sock.sendto(c.data, c.server)
            sent += 1
            outstanding += 1
        for fd, _ in poll.poll(0.5):
            sock = socks[fd]
            while True:
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    break
                # An answer: success or error, by the class bits (RFC 8489 §5: C1 C0).
                if data[1] & 0x10:
                    errors += 1
                else:
                    answered += 1
                outstanding -= 1
        if not poll.poll(0) and outstanding >= window and time.perf_counter() > deadline - 110:
            outstanding = 0  # answers lost: send on rather than stall
    poll.close()
    return time.perf_counter() - start, answered, errors


def phase(
    label: str, callers: list[Caller], servers: list[Server], window: int, store: RedisProcess
) -> None:
    before = [s.cpu() for s in servers]
    redis_before = cpu_seconds(store.proc.pid)
    seconds, answered, errors = blast(callers, window)
    cpu = [s.cpu() - b for s, b in zip(servers, before, strict=True)]
    redis_cpu = cpu_seconds(store.proc.pid) - redis_before
    rate = answered / seconds
    per_cpu = [answered / len(servers) / c if c > 0 else float("nan") for c in cpu]
    print(
        f"{label:<14} {answered:>7,} answered, {errors} refused, in {seconds:5.2f} s: "
        f"{rate:>8,.0f}/s in all, {rate / len(servers):>7,.0f}/s per server; "
        f"per CPU second of a server: {', '.join(f'{x:,.0f}' for x in per_cpu)} "
        f"(server CPU {', '.join(f'{c / seconds:.0%}' for c in cpu)}); "
        f"Redis {redis_cpu / max(answered, 1) * 1e6:.1f} us of CPU each",
        flush=True,
    )


def introductions(
    pairs: int, first: Server, second: Server, tag: str
) -> tuple[list[float], list[float]]:
    """(latency ms to the later PEER-READY, gap ms between the two) for `pairs` pairs."""
    names_a = [f"{tag}a{i}" for i in range(pairs)]
    names_b = [f"{tag}b{i}" for i in range(pairs)]
    peers = {**dict(zip(names_a, names_b, strict=True)), **dict(zip(names_b, names_a, strict=True))}
    side_a = make_callers(names_a, [first.address], 1, peers)
    side_b = make_callers(names_b, [second.address], 1, peers)
    latencies, gaps = [], []
    for a, b in zip(side_a, side_b, strict=True):
        a.sock.setblocking(True)
        a.sock.settimeout(2.0)
        a.sock.sendto(a.data, a.server)
        a.sock.recv(4096)  # waiting
        t0 = time.perf_counter()
        b.sock.sendto(b.data, b.server)
        arrived: dict[str, float] = {}
        poll = select.epoll()
        for c in (a, b):
            c.sock.setblocking(False)
            poll.register(c.sock.fileno(), select.EPOLLIN)
        while len(arrived) < 2 and time.perf_counter() - t0 < 5:
            for fd, _ in poll.poll(0.5):
                c = a if fd == a.sock.fileno() else b
                while True:
                    try:
                        data = c.sock.recv(4096)
                    except BlockingIOError:
                        break
                    msg = parse_message_untrusted(data)
                    if msg.method == Method.CP_PEER_READY and msg.cls == Class.REQUEST:
                        arrived.setdefault(c.name, time.perf_counter())
                        ack = encode(
                            msg.reply(Class.SUCCESS),
                            integrity_key=c.key,
                            integrity_sha256=True,
                            fingerprint=True,
                        )
                        c.sock.sendto(ack, c.server)
        poll.close()
        if len(arrived) == 2:
            latencies.append((max(arrived.values()) - t0) * 1000)
            gaps.append(abs(arrived[a.name] - arrived[b.name]) * 1000)
    for c in (*side_a, *side_b):
        c.sock.close()
    return latencies, gaps


def owners_only(store: RedisProcess) -> int:
    """Redis's memory with every presence record gone (and put back): the bindings alone."""
    client = redis.Redis.from_url(store.url)
    saved = {}
    for key in client.scan_iter(match="callpeer:*:presence", count=1000):
        saved[key] = (client.dump(key), client.pttl(key))
    pipe = client.pipeline(transaction=False)
    for key in saved:
        pipe.delete(key)
    pipe.execute()
    used = store.memory_used() - BASELINE[0]
    for key, (dumped, ttl) in saved.items():
        if dumped is not None:
            pipe.restore(key, max(ttl, 1), dumped)
    pipe.execute()
    return used


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def asyncio_round_trip(store: RedisProcess) -> list[float]:
    """A round trip as a server's event loop sees it: one script in a redis-py pipeline."""

    async def measure() -> list[float]:
        client = redis.asyncio.Redis.from_url(store.url)
        script = client.register_script("return 1")
        times = []
        for _ in range(500):
            t0 = time.perf_counter()
            pipe = client.pipeline(transaction=False)
            await script(keys=[], args=[], client=pipe)
            await pipe.execute()
            times.append((time.perf_counter() - t0) * 1000)
        await client.aclose()
        return times

    return asyncio.run(measure())


def redis_round_trip(store: RedisProcess) -> list[float]:
    client = redis.Redis.from_url(store.url)
    times = []
    for _ in range(500):
        t0 = time.perf_counter()
        client.ping()
        times.append((time.perf_counter() - t0) * 1000)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--names", type=int, default=100_000)
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--sockets", type=int, default=64, help="source sockets per server")
    p.add_argument("--window", type=int, default=2048, help="requests in flight at most")
    p.add_argument("--pairs", type=int, default=300, help="introductions timed")
    p.add_argument("--tcp", action="store_true", help="reach Redis over TCP, not its Unix socket")
    args = p.parse_args()
    print(f"{os.cpu_count()} cores; {args.names:,} names over {args.servers} servers", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = start_redis(Path(tmp), port=46379 if args.tcp else 0)
        servers: list[Server] = []
        try:
            servers = [start_server(args.names, store.url) for _ in range(args.servers)]
            redis_before, rss_before = store.memory_used(), [s.rss() for s in servers]
            BASELINE[:] = [redis_before]
            t0 = time.perf_counter()
            callers = make_callers(
                [f"user{i}" for i in range(args.names)],
                [s.address for s in servers],
                args.sockets,
            )
            print(f"requests built in {time.perf_counter() - t0:.1f} s", flush=True)
            phase("registrations", callers, servers, args.window, store)
            redis_used = store.memory_used() - redis_before
            rss = [s.rss() - b for s, b in zip(servers, rss_before, strict=True)]
            phase("refreshes", callers, servers, args.window, store)
            phase("refreshes", callers, servers, args.window, store)
            print(
                f"memory per online name: Redis {redis_used / args.names:,.0f} B; "
                f"each server {', '.join(f'{r / (args.names / len(servers)):,.0f}' for r in rss)} "
                "B of RSS per name it holds",
                flush=True,
            )
            print(
                f"  of which the binding of a name to its key (kept while it is offline): "
                f"{owners_only(store) / args.names:,.0f} B",
                flush=True,
            )
            rtt = redis_round_trip(store)
            print(
                f"Redis round trip (PING)   p50 {pct(rtt, 0.5):.3f} ms  p99 {pct(rtt, 0.99):.3f} ms"
            )
            rtt = asyncio_round_trip(store)
            print(
                f"Redis round trip as a server sees it (a script in an asyncio pipeline) "
                f"p50 {pct(rtt, 0.5):.3f} ms  p99 {pct(rtt, 0.99):.3f} ms"
            )
            if len(servers) >= 2:
                lat, gap = introductions(args.pairs, servers[0], servers[1], "x")
                print(
                    f"introduction across two servers ({len(lat)} pairs): "
                    f"p50 {pct(lat, 0.5):.2f} ms  p99 {pct(lat, 0.99):.2f} ms; "
                    f"gap between the two PEER-READYs p50 {pct(gap, 0.5):.2f} ms  "
                    f"p99 {pct(gap, 0.99):.2f} ms",
                    flush=True,
                )
            lat, gap = introductions(args.pairs, servers[0], servers[0], "y")
            print(
                f"introduction on one server, Redis ({len(lat)} pairs):  "
                f"p50 {pct(lat, 0.5):.2f} ms  p99 {pct(lat, 0.99):.2f} ms"
            )
        finally:
            for s in servers:
                counts = dict(
                    c.split("=") for c in s.stop().removeprefix("stopped; ").split(", ") if "=" in c
                )
                wanted = (
                    "register",
                    "claimed",
                    "store_error",
                    "store_backlog_full",
                    "store_rewritten",
                )
                print("server counters:", ", ".join(f"{k}={counts.get(k, 0)}" for k in wanted))
            store.stop()
        local = start_server(1000, None)
        try:
            lat, gap = introductions(args.pairs, local, local, "z")
            print(
                f"introduction on one server, no Redis ({len(lat)} pairs): "
                f"p50 {pct(lat, 0.5):.2f} ms  p99 {pct(lat, 0.99):.2f} ms"
            )
        finally:
            local.stop()


if __name__ == "__main__":
    main()
