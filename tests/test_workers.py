"""callpeer-rendezvous --workers: the link to the home worker, what a worker keeps, the port
slices, and on loopback a relayed call between two callers the kernel gave to different
workers (their registrations meet in the home, their allocations reach each other as peers
on the network), and no worker left behind however the server is stopped."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import redis

from rendezvous.node import relaying
from rendezvous.presence_scripts import presence_key
from rendezvous.turn_server import TurnPolicy
from rendezvous.worker_link import pack_frame
from rendezvous.worker_link import unpack_frame
from rendezvous.workers import DEFAULT_RANGE
from rendezvous.workers import EPHEMERAL
from rendezvous.workers import Worker
from rendezvous.workers import default_relay_range
from tests.test_call import silent_call
from voip import Call
from voip import CallOptions
from voip.lab.redis_server import redis_unavailable_reason
from voip.lab.redis_server import start_redis
from voip.nat.turn_client import TurnClient
from voip.wire.stun import Address
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import encode
from voip.wire.stun import parse_message_untrusted
from voip.wire.turn import pack_channel_data
from voip.wire.turn import rest_password
from voip.wire.turn import rest_username

BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin"
SECRET = "workers"
PAIR = (("alice", "bob"), ("bob", "alice"))
FORCED = CallOptions(bind_host="127.0.0.1", relay="force")
RANGE = (50000, 50999)  # worker 0 draws from 50000-50499, worker 1 from 50500-50999


def test_a_frame_carries_the_datagram_and_both_addresses_and_garbage_is_none() -> None:
    frame = pack_frame(b"\x00\x01data", ("2001:db8::1", 5000), ("0.0.0.0", 3478))
    assert unpack_frame(frame) == (b"\x00\x01data", ("2001:db8::1", 5000), ("0.0.0.0", 3478))
    for garbage in [b"", b"\x00", b"\x00\x05ab", b"\x00\x03a b", b"\x00\x07a b c d", b"\xff\xff"]:
        assert unpack_frame(garbage) is None, garbage


def test_a_worker_keeps_turn_and_channel_data_and_passes_the_rest_home() -> None:
    tid = bytes(12)
    assert relaying(pack_channel_data(0x4000, b"voice"))
    for method in (Method.ALLOCATE, Method.REFRESH, Method.CHANNEL_BIND, Method.SEND):
        assert relaying(encode(Message(method, Class.REQUEST, tid)))
    for home in (Method.BINDING, Method.CP_REGISTER, Method.CP_LEAVE):
        assert not relaying(encode(Message(home, Class.REQUEST, tid)))
    assert not relaying(encode(Message(Method.CP_PEER_READY, Class.SUCCESS, tid)))
    assert not relaying(b"") and not relaying(b"\x17\x03\x03junk")


def test_the_relay_ports_are_split_whole_between_the_workers() -> None:
    for count in (1, 2, 3, 7):
        slices = [Worker(i, count, []).port_slice((49152, 65535)) for i in range(count)]
        assert slices[0][0] == 49152 and slices[-1][1] == 65535
        for (_, high), (low, _) in itertools.pairwise(slices):
            assert low == high + 1


@contextlib.contextmanager
def workers_server(
    *extra: str, store: str = "--store=:memory:"
) -> Iterator[tuple[subprocess.Popen[str], Address]]:
    proc = subprocess.Popen(
        [
            str(BIN / "callpeer-rendezvous"),
            "--workers=2",
            "--listen=127.0.0.1:0",
            "--relay-address=127.0.0.1",
            "--allow-loopback-peers",
            f"--turn-secret={SECRET}",
            f"--min-port={RANGE[0]}",
            f"--max-port={RANGE[1]}",
            store,
            *extra,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on udp" in line, line
        host, port = line.rsplit(" ", 1)[1].strip().rsplit(":", 1)
        yield proc, (host, int(port))
    finally:
        proc.terminate()
        proc.wait(10)


def worker_of(port: int, server: Address) -> int:
    """Which worker the kernel gives datagrams from 127.0.0.1:`port`: the one whose slice of
    the relay ports an allocation made from there comes from (released at once)."""
    user = rest_username(int(time.time()) + 600, "probe")
    client = TurnClient(server, user, rest_password(SECRET, user))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.settimeout(3)
        out = client.start(time.monotonic())
        while client.relayed is None:
            for data, dest in out:
                sock.sendto(data, dest)
            answer, src = sock.recvfrom(2048)
            out = client.handle(parse_message_untrusted(answer), src, time.monotonic()) or []
        relayed = client.relayed
        for data, dest in client.close(time.monotonic()):
            sock.sendto(data, dest)
        sock.recvfrom(2048)  # released
    return 0 if relayed[1] < (RANGE[0] + RANGE[1] + 1) // 2 else 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_callers_on_different_workers_call_each_other_through_the_relay() -> None:
    with workers_server() as (_, server):
        ports: dict[int, int] = {}
        for _ in range(40):  # each port lands on one of two workers: one of each comes soon
            port = free_port()
            ports.setdefault(worker_of(port, server), port)
            if len(ports) == 2:
                break
        assert len(ports) == 2, "every port landed on one worker"

        async def scenario() -> tuple[Call, Call]:
            calls = [
                silent_call(me, peer, server, replace(FORCED, bind_port=port))
                for (me, peer), port in zip(PAIR, ports.values(), strict=True)
            ]
            alice, bob = calls
            async with alice, bob:
                await asyncio.wait_for(asyncio.gather(alice.run(2.0), bob.run(2.0)), 30)
            return alice, bob

        for call in asyncio.run(scenario()):
            report = call.report().to_dict()
            assert report["path"] == "relay", report["verdict"]
            assert report["paths"]["relay"]["rtt_ms"]["samples"] >= 1
            assert report["audio"]["frames_received"] >= 50


def ports_on_both_workers(server: Address) -> list[int]:
    ports: dict[int, int] = {}
    for _ in range(40):  # each port lands on one of two workers: one of each comes soon
        port = free_port()
        ports.setdefault(worker_of(port, server), port)
        if len(ports) == 2:
            return [ports[0], ports[1]]
    raise AssertionError("every port landed on one worker")


@pytest.mark.skipif(redis_unavailable_reason() is not None, reason=redis_unavailable_reason() or "")
def test_with_redis_each_worker_serves_the_names_of_its_own_clients(tmp_path: Path) -> None:
    store = start_redis(tmp_path / "redis")
    try:
        with workers_server(store=f"--redis={store.url}") as (_, server):
            ports = ports_on_both_workers(server)
            holders: dict[str, bytes | str | None] = {}

            async def scenario() -> tuple[Call, Call]:
                options = CallOptions(bind_host="127.0.0.1")
                calls = [
                    silent_call(me, peer, server, replace(options, bind_port=port))
                    for (me, peer), port in zip(PAIR, ports, strict=True)
                ]
                alice, bob = calls
                async with alice, bob:
                    running = asyncio.gather(alice.run(2.0), bob.run(2.0))
                    await asyncio.sleep(1.0)
                    client = redis.Redis.from_url(store.url)
                    for name in ("alice", "bob"):
                        holders[name] = client.hget(presence_key(name), "s")
                    await asyncio.wait_for(running, 30)
                return alice, bob

            for call in asyncio.run(scenario()):
                report = call.report().to_dict()
                assert report["path"] == "direct", report["verdict"]
                assert report["audio"]["frames_received"] >= 50
        # Two workers, two server ids: each registered its own client with the store.
        assert None not in holders.values() and holders["alice"] != holders["bob"], holders
    finally:
        store.stop()


def test_stopping_the_server_stops_every_worker_and_so_does_killing_it() -> None:
    for how in (signal.SIGTERM, signal.SIGKILL):
        with workers_server() as (proc, _):
            workers = psutil.Process(proc.pid).children()
            assert len(workers) == 2
            os.kill(proc.pid, how)
            proc.wait(10)
            _, alive = psutil.wait_procs(workers, timeout=10)
            assert not alive, (how, alive)


def test_a_sigterm_while_the_workers_start_leaves_no_process_behind() -> None:
    """Stopped at any moment of its start (before, between and after the forks), the server
    and every worker it made are gone: none runs on with the parent's handler or orphaned."""
    for delay in (0.05, 0.15, 0.3, 0.5, 0.8):
        proc = subprocess.Popen(
            [
                str(BIN / "callpeer-rendezvous"),
                *("--workers=3", "--listen=127.0.0.1:0", "--relay-address=127.0.0.1"),
                *(f"--min-port={RANGE[0]}", f"--max-port={RANGE[1]}", "--store=:memory:"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its process group: whatever it forked stays in it
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while (left := in_group(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, (delay, left)


def in_group(pgid: int) -> list[int]:
    """The live (not zombie) processes of a process group."""
    found = []
    for process in psutil.process_iter(["pid", "status"]):
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
    return found


@pytest.mark.parametrize("count", ["1", "2"])
def test_a_plain_binding_is_answered_whichever_worker_takes_it(count: str) -> None:
    with workers_server(f"--workers={count}") as (_, server):
        for _ in range(8):  # from 8 ports, so both workers answer some
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.0.1", 0))
                sock.settimeout(3)
                tid = os.urandom(12)
                sock.sendto(encode(Message(Method.BINDING, Class.REQUEST, tid)), server)
                answer = parse_message_untrusted(sock.recv(200))
                assert answer.transaction_id == tid and answer.cls == Class.SUCCESS
                assert answer.xor_address(0x0020) == sock.getsockname()


def test_only_a_port_of_another_workers_slice_on_our_relay_address_is_a_sibling() -> None:
    policy = TurnPolicy(
        sibling_hosts=frozenset({"203.0.113.20"}),
        sibling_ports=(61000, 65535),
        own_ports=(61000, 63267),
    )
    assert policy.sibling(("203.0.113.20", 64000))  # another worker's slice
    assert not policy.sibling(("203.0.113.20", 62000))  # ours: an allocation here, or no one's
    assert not policy.sibling(("203.0.113.20", 3478))  # our listening port: never
    assert not policy.sibling(("198.51.100.7", 64000))  # another host is a peer, not a sibling


def test_the_default_relay_range_is_above_the_ephemeral_ports() -> None:
    """No port of it is one this host's own clients took (coturn's 49152-65535 overlaps
    Linux's 32768-60999)."""
    low, high = default_relay_range()
    try:
        ephemeral_high = int(EPHEMERAL.read_text().split()[1])
    except OSError:
        pytest.skip("no /proc/sys/net/ipv4/ip_local_port_range here")
    assert high == 65535 and (low > ephemeral_high or (low, high) == DEFAULT_RANGE)
