"""Presence shared by rendezvous servers through Redis (--redis): callers on two servers meet,
names are owned across servers, departures and expiry, a failing store, hostile store data."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from rendezvous import redis_presence
from rendezvous.introductions import Handoff
from rendezvous.logic import RendezvousLogic
from rendezvous.presence_scripts import LEAVE
from rendezvous.presence_scripts import REGISTER
from rendezvous.presence_scripts import TOUCH
from rendezvous.presence_scripts import owner_key
from rendezvous.presence_scripts import presence_key
from rendezvous.presence_scripts import server_channel
from rendezvous.redis_presence import leave_call
from rendezvous.redis_presence import lost_names
from rendezvous.redis_presence import register_call
from rendezvous.redis_presence import script_limits
from rendezvous.redis_presence import touch_call
from rendezvous.server import RendezvousServer
from rendezvous.shared_presence import Departure
from rendezvous.shared_presence import SharedPresence
from rendezvous.shared_presence import Touch
from rendezvous.store_records import StoreReply
from rendezvous.store_records import handoff_bytes
from rendezvous.store_records import handoff_from_untrusted
from tests.test_cli import BIN
from tests.test_cli import SILENT
from tests.test_cli import env
from tests.test_cli import rendezvous_command
from tests.test_cli import start_rendezvous
from voip.lab.redis_server import RedisProcess
from voip.lab.redis_server import redis_unavailable_reason
from voip.lab.redis_server import start_redis
from voip.nat.rendezvous_client import RendezvousClient
from voip.nat.signal_events import GotPeer
from voip.nat.signal_events import Refused
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.signal import ERR_CAPACITY
from voip.wire.signal import ERR_NAME_TAKEN
from voip.wire.signal import MAPPING_INDEPENDENT
from voip.wire.signal import PeerReady
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.stun import parse_message_untrusted

Addr = tuple[str, int]
A: Addr = ("203.0.113.5", 4000)
B: Addr = ("198.51.100.7", 5000)
M: Addr = ("198.51.100.66", 6666)
S1: Addr = ("203.0.113.10", 3478)
S2: Addr = ("203.0.113.11", 3478)

LENGTHS = ("--duration", "2", "--wait", "40", "--json")
needs_redis = pytest.mark.skipif(
    redis_unavailable_reason() is not None, reason=redis_unavailable_reason() or ""
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RedisProcess]:
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


class Cluster:
    """Rendezvous logics sharing one real Redis, driven in step: each op goes to Redis as the
    asyncio link sends it (the same scripts and arguments), and what is published on each
    server's channel goes to that server's logic."""

    def __init__(self, url: str, *servers: tuple[str, Addr]):
        self.redis = redis.Redis.from_url(url)
        self.register = self.redis.register_script(REGISTER)
        self.leave = self.redis.register_script(LEAVE)
        self.touch = self.redis.register_script(TOUCH)
        self.logics: dict[str, RendezvousLogic] = {}
        self.where: dict[str, Addr] = {}
        self.pubsub = self.redis.pubsub()  # type: ignore[no-untyped-call]
        for server_id, address in servers:
            logic = RendezvousLogic(lifetime=30.0, wallclock=1.7e9)
            logic.shared = SharedPresence(server_id, logic.stats)
            self.logics[server_id], self.where[server_id] = logic, address
            self.pubsub.subscribe(server_channel(server_id))
        while self.pubsub.get_message(timeout=1.0) is not None:
            pass  # the subscriptions' confirmations
        self.sent: list[tuple[str, Addr, Message]] = []  # (server id, to, message)
        self.fail = False  # the store answers every op with an error

    def deliver(
        self,
        server_id: str,
        src: Addr,
        data: bytes,
        clients: dict[Addr, RendezvousClient],
        now: float,
    ) -> None:
        """A datagram to one server, and everything it leads to, until quiet."""
        queue: list[tuple[str, list[tuple[bytes, Addr]]]] = []
        logic = self.logics[server_id]
        queue.append((server_id, logic.handle_datagram(data, src, now)))
        while queue:
            sid, outs = queue.pop(0)
            queue += self._pump(now)
            for out, dest in outs:
                msg = parse_message_untrusted(out)
                self.sent.append((sid, dest, msg))
                client = clients.get(dest)
                if client is None:
                    continue
                for reply, to in client.handle(msg, self.where[sid], now) or []:
                    target = next(k for k, v in self.where.items() if v == to)
                    queue.append((target, self.logics[target].handle_datagram(reply, dest, now)))
            queue += self._pump(now)

    def _pump(self, now: float) -> list[tuple[str, list[tuple[bytes, Addr]]]]:
        made = []
        for sid, logic in [(k, v) for k, v in self.logics.items() for _ in range(2)]:
            assert logic.shared is not None
            for op in logic.shared.take_ops():  # twice: a lost record's rewrite too
                if isinstance(op, Handoff):
                    self.redis.publish(server_channel(op.server), handoff_bytes(op))
                    continue
                if isinstance(op, Departure):
                    keys, args = leave_call(op, sid)
                    self.leave(keys=keys, args=args)
                    continue
                if isinstance(op, Touch):
                    keys, args = touch_call([op], sid, script_limits(30.0, 365))
                    logic.shared.lost(
                        logic, lost_names([op], self.touch(keys=keys, args=args)), now
                    )
                    continue
                keys, args = register_call(op, sid, script_limits(30.0, 365))
                reply: object = (
                    redis.RedisError("down") if self.fail else self.register(keys=keys, args=args)
                )
                outs = logic.shared.answered(logic, op.token, reply, now)
                made.append((sid, [(o.data, o.dest) for o in outs]))
        while (message := self.pubsub.get_message(timeout=0.05)) is not None:
            if message["type"] != "message":
                continue
            sid = message["channel"].decode().rsplit(":", 1)[1]
            target = self.logics[sid]
            assert target.shared is not None
            outs = target.shared.handed(target, message["data"], now)
            made.append((sid, [(o.data, o.dest) for o in outs]))
        return made

    def join(self, server_id: str, client: RendezvousClient, src: Addr, now: float) -> None:
        self.deliver(server_id, src, client.start(now)[0][0], {src: client}, now)


def peer_readies(sent: list[tuple[str, Addr, Message]]) -> dict[Addr, tuple[str, PeerReady]]:
    return {
        dest: (sid, PeerReady.from_message_untrusted(m))
        for sid, dest, m in sent
        if m.method == Method.CP_PEER_READY and m.cls == Class.REQUEST
    }


@needs_redis
def test_callers_on_two_servers_are_introduced_within_one_store_round_trip(
    store: RedisProcess,
) -> None:
    cluster = Cluster(store.url, ("s1", S1), ("s2", S2))
    host = Candidate.make(CandidateType.HOST, ("198.18.0.2", 4000))
    alice = RendezvousClient("alice", "bob", S1, (host,))
    bob = RendezvousClient("bob", "alice", S2, ())
    clients = {A: alice, B: bob}
    cluster.join("s1", alice, A, 0.0)
    assert not peer_readies(cluster.sent)  # alice waits: bob is nowhere yet
    cluster.deliver("s2", B, bob.start(2.0)[0][0], clients, 2.0)
    intros = peer_readies(cluster.sent)
    assert set(intros) == {A, B}
    (via_a, to_alice), (via_b, to_bob) = intros[A], intros[B]
    assert (via_a, via_b) == ("s1", "s2")  # each from the server that holds it, signed by it
    assert to_alice.peer == "bob" and to_bob.peer == "alice"
    assert to_alice.candidates[0] == Candidate.make(CandidateType.SRFLX, B)
    assert (
        to_bob.candidates[0] == Candidate.make(CandidateType.SRFLX, A) and host in to_bob.candidates
    )
    assert (to_alice.remote_ufrag, to_alice.remote_pwd) == (bob.ice.ufrag, bob.ice.pwd)
    assert (to_bob.remote_ufrag, to_bob.remote_pwd, to_bob.peer_commit) == (
        alice.ice.ufrag,
        alice.ice.pwd,
        alice.ice.commit,
    )
    assert to_alice.peer_key == bob.identity.public and to_bob.peer_key == alice.identity.public
    assert to_alice.controlling and not to_bob.controlling  # alice asked first
    assert any(isinstance(e, GotPeer) for e in alice.pop_events())
    assert any(isinstance(e, GotPeer) for e in bob.pop_events())
    # Both asks were taken at once: a refresh still asking matches nothing again.
    assert cluster.redis.hget(presence_key("alice"), "w") == b""
    assert cluster.redis.hget(presence_key("bob"), "w") == b""
    assert cluster.logics["s1"].stats["matched"] == 1 == cluster.logics["s2"].stats["matched"]


@needs_redis
def test_a_call_between_two_servers_can_meet_again(store: RedisProcess) -> None:
    """An ICE restart across servers: alice asks again in her call with bob, and bob's server
    hands him the new introduction (the call's record reached the store at his refresh)."""
    cluster = Cluster(store.url, ("s1", S1), ("s2", S2))
    alice = RendezvousClient("alice", "bob", S1, ())
    bob = RendezvousClient("bob", "alice", S2, ())
    clients = {A: alice, B: bob}
    cluster.join("s1", alice, A, 0.0)
    cluster.deliver("s2", B, bob.start(1.0)[0][0], clients, 1.0)
    for client in (alice, bob):
        assert any(isinstance(e, GotPeer) for e in client.pop_events())
    cluster.deliver("s2", B, bob.refresh(2.0)[0][0], clients, 2.0)  # in the call now
    cluster.sent.clear()
    moved: Addr = ("203.0.113.5", 4444)  # alice's NAT forgot her: a new public port
    cluster.deliver("s1", moved, alice.ask(3.0)[0][0], {moved: alice, B: bob}, 3.0)
    intros = peer_readies(cluster.sent)
    assert set(intros) == {moved, B}
    assert intros[B][1].candidates[0] == Candidate.make(CandidateType.SRFLX, moved)
    assert intros[moved][1].controlling and not intros[B][1].controlling  # the call's roles
    assert [e.again for e in bob.pop_events() if isinstance(e, GotPeer)] == [True]
    assert cluster.logics["s2"].stats["restarted"] == 1


def in_a_call(cluster: Cluster) -> tuple[RendezvousClient, RendezvousClient]:
    """alice at s1 (asking first: she controls), bob at s2, introduced, and both refreshed
    once in the call, so the store holds it."""
    alice = RendezvousClient("alice", "bob", S1, ())
    bob = RendezvousClient("bob", "alice", S2, ())
    clients = {A: alice, B: bob}
    cluster.join("s1", alice, A, 0.0)
    cluster.deliver("s2", B, bob.start(1.0)[0][0], clients, 1.0)
    cluster.deliver("s1", A, alice.refresh(2.0)[0][0], clients, 2.0)
    cluster.deliver("s2", B, bob.refresh(2.0)[0][0], clients, 2.0)
    for client in (alice, bob):
        client.pop_events()
    cluster.sent.clear()
    return alice, bob


@needs_redis
def test_a_restart_asked_by_the_controlled_side_keeps_both_roles(store: RedisProcess) -> None:
    cluster = Cluster(store.url, ("s1", S1), ("s2", S2))
    alice, bob = in_a_call(cluster)
    cluster.deliver("s2", B, bob.ask(3.0)[0][0], {A: alice, B: bob}, 3.0)
    intros = peer_readies(cluster.sent)
    assert intros[A][1].controlling and not intros[B][1].controlling


@needs_redis
def test_a_caller_that_moved_to_another_server_in_its_call_can_meet_again(
    store: RedisProcess,
) -> None:
    cluster = Cluster(store.url, ("s1", S1), ("s2", S2), ("s3", ("203.0.113.12", 3478)))
    alice, bob = in_a_call(cluster)
    moved = RendezvousClient("alice", "bob", ("203.0.113.12", 3478), (), identity=alice.identity)
    moved.ice, moved.ephemeral = alice.ice, alice.ephemeral  # the same run, failed over to s3
    moved.peer_ready = alice.peer_ready
    cluster.deliver("s3", A, moved.start(3.0)[0][0], {A: moved, B: bob}, 3.0)
    intros = peer_readies(cluster.sent)
    assert set(intros) == {A, B}, "the restart reached both"
    assert intros[A][1].controlling and not intros[B][1].controlling
    assert cluster.logics["s3"].stats["restarted"] == 1


@needs_redis
def test_an_ask_the_store_failed_goes_to_the_store_again_not_as_a_touch(
    store: RedisProcess,
) -> None:
    cluster = Cluster(store.url, ("s1", S1))
    alice = RendezvousClient("alice", "bob", S1, (), ask_now=False)
    cluster.join("s1", alice, A, 0.0)
    cluster.fail = True
    cluster.deliver("s1", A, alice.ask(1.0)[0][0], {A: alice}, 1.0)
    assert [e.code for e in alice.pop_events() if isinstance(e, Refused)] == [ERR_CAPACITY]
    cluster.fail = False
    cluster.deliver("s1", A, alice.refresh(2.0)[0][0], {A: alice}, 2.0)
    assert cluster.redis.hget(presence_key("alice"), "w") == b"bob"


@needs_redis
def test_a_peer_asking_but_unheard_is_asked_for_in_full_at_the_next_refresh(
    store: RedisProcess,
) -> None:
    cluster = Cluster(store.url, ("s1", S1), ("s2", S2))
    alice = RendezvousClient("alice", "bob", S1, ())
    cluster.join("s1", alice, A, 0.0)
    cluster.pubsub.unsubscribe(server_channel("s1"))  # s1 deaf a moment
    while cluster.pubsub.get_message(timeout=0.2) is not None:
        pass
    bob = RendezvousClient("bob", "alice", S2, ())
    cluster.deliver("s2", B, bob.start(1.0)[0][0], {A: alice, B: bob}, 1.0)
    assert not peer_readies(cluster.sent)  # nobody heard alice's half: nobody introduced
    entry = cluster.logics["s2"].registry.get("bob", 1.0)
    assert entry is not None and entry.stored == float("-inf")
    cluster.pubsub.subscribe(server_channel("s1"))  # heard again
    while cluster.pubsub.get_message(timeout=0.2) is not None:
        pass
    cluster.deliver("s2", B, bob.refresh(2.0)[0][0], {A: alice, B: bob}, 2.0)
    assert set(peer_readies(cluster.sent)) == {A, B}


@needs_redis
def test_a_name_is_its_owners_on_every_server(store: RedisProcess) -> None:
    cluster = Cluster(store.url, ("s1", S1), ("s2", S2))
    alice = RendezvousClient("alice", "bob", S1, ())
    cluster.join("s1", alice, A, 0.0)
    mallory = RendezvousClient("alice", "bob", S2, ())  # another key, another server
    cluster.join("s2", mallory, M, 1.0)
    refused = [e for e in mallory.pop_events() if isinstance(e, Refused)]
    assert [r.code for r in refused] == [ERR_NAME_TAKEN]
    assert cluster.logics["s2"].registry.get("alice", 1.0) is None  # not even held locally
    owner = cluster.redis.hget(owner_key("alice"), "k")
    assert owner == alice.identity.public
    # The owner itself moves to the other server and keeps its name.
    again = RendezvousClient("alice", "bob", S2, (), identity=alice.identity)
    cluster.join("s2", again, A, 2.0)
    assert not [e for e in again.pop_events() if isinstance(e, Refused)]
    assert cluster.redis.hget(presence_key("alice"), "s") == b"s2"


@needs_redis
def test_leaving_takes_the_record_and_an_older_server_cannot(store: RedisProcess) -> None:
    cluster = Cluster(store.url, ("s1", S1), ("s2", S2))
    alice = RendezvousClient("alice", "bob", S1, ())
    cluster.join("s1", alice, A, 0.0)
    moved = RendezvousClient("alice", "bob", S2, (), identity=alice.identity)
    cluster.join("s2", moved, B, 1.0)
    # s1 still holds a stale local entry; its departure must not take s2's record.
    logic1 = cluster.logics["s1"]
    assert logic1.shared is not None
    logic1.shared.add(Departure("alice", alice.identity.public))
    cluster._pump(1.5)
    assert cluster.redis.exists(presence_key("alice"))
    cluster.deliver("s2", B, moved.leave(2.0)[0][0], {B: moved}, 2.0)
    assert not cluster.redis.exists(presence_key("alice"))
    assert cluster.redis.exists(owner_key("alice"))  # the name stays bound to its key
    ttl = cluster.redis.pttl(owner_key("alice"))
    assert 0 < ttl <= 7 * 86400 * 1000  # claimed today: on probation for a week


@needs_redis
def test_a_registration_lives_as_long_as_its_lifetime_in_the_store(store: RedisProcess) -> None:
    cluster = Cluster(store.url, ("s1", S1))
    cluster.join("s1", RendezvousClient("alice", "bob", S1, ()), A, 0.0)
    assert 25_000 < cluster.redis.pttl(presence_key("alice")) <= 30_000


@needs_redis
def test_a_refresh_that_changes_nothing_is_answered_at_once_and_touches_the_record(
    store: RedisProcess,
) -> None:
    cluster = Cluster(store.url, ("s1", S1))
    logic = cluster.logics["s1"]
    assert logic.shared is not None
    alice = RendezvousClient("alice", "bob", S1, ())
    cluster.join("s1", alice, A, 0.0)
    cluster.redis.pexpire(presence_key("alice"), 5000)
    refresh = alice.refresh(10.0)[0][0]
    answers = [(d, a) for d, a in logic.handle_datagram(refresh, A, 10.0)]
    assert len(answers) == 1  # answered before the store is asked anything
    ops = logic.shared.take_ops()
    assert [type(op) for op in ops] == [Touch]
    logic.shared.add(*ops)
    cluster._pump(10.0)
    assert cluster.redis.pttl(presence_key("alice")) > 25_000  # its life extended
    # A record gone from the store (expired there, say) is written again in full.
    cluster.redis.delete(presence_key("alice"))
    logic.handle_datagram(alice.refresh(20.0)[0][0], A, 20.0)
    cluster._pump(20.0)
    assert cluster.redis.hget(presence_key("alice"), "w") == b"bob"
    assert logic.stats["store_rewritten"] == 1
    # Another key's record under the name is not touched, and ours is not written over it
    # without the owner's check: the owner binding says whose it is.
    assert cluster.redis.hget(owner_key("alice"), "k") == alice.identity.public


@needs_redis
def test_a_failing_store_is_508_and_keeps_nothing(store: RedisProcess) -> None:
    cluster = Cluster(store.url, ("s1", S1))
    cluster.fail = True
    alice = RendezvousClient("alice", "bob", S1, ())
    cluster.join("s1", alice, A, 0.0)
    assert [e.code for e in alice.pop_events() if isinstance(e, Refused)] == [ERR_CAPACITY]
    logic = cluster.logics["s1"]
    assert logic.registry.get("alice", 0.0) is None and logic.stats["store_error"] == 1


def test_a_handoff_for_a_caller_who_is_gone_or_another_run_is_dropped() -> None:
    logic = RendezvousLogic()
    shared = logic.shared = SharedPresence("s1", logic.stats)
    alice = RendezvousClient("alice", "bob", S1, ())
    ready = PeerReady("bob", (), "ufrag", "p" * 22, False, bytes(32), None, bytes(32))
    handoff = Handoff("s1", "alice", alice.identity.public, ready, restart=False)
    assert shared.handed(logic, handoff_bytes(handoff), 0.0) == []
    assert logic.stats["handoff_stale"] == 1
    assert shared.handed(logic, b"\x01\x00\x00\x09alice", 0.0) == []
    assert shared.handed(logic, b"\xff" * 10, 0.0) == []
    assert logic.stats["handoff_malformed"] == 2


def test_handoff_bytes_round_trip() -> None:
    ready = PeerReady(
        "bob",
        (Candidate.make(CandidateType.SRFLX, B),),
        "ufrag",
        "p" * 22,
        True,
        bytes(range(32)),
        MAPPING_INDEPENDENT,
        bytes(32),
    )
    handoff = Handoff("s2", "alice", bytes(32), ready, restart=True)
    assert handoff_from_untrusted(handoff_bytes(handoff), "s2") == handoff


@given(st.lists(st.binary(max_size=40), max_size=10))
def test_store_replies_that_do_not_parse_raise_only_stun_error(reply: list[bytes]) -> None:
    with contextlib.suppress(StunError):
        StoreReply.from_reply_untrusted(reply)


@given(st.binary(max_size=300))
def test_handoffs_that_do_not_parse_raise_only_stun_error(data: bytes) -> None:
    with contextlib.suppress(StunError):
        handoff_from_untrusted(data, "s1")


# -- the command, end to end --------------------------------------------------------------


def caller(tmp_path: Path, me: str, peer: str, *where: str) -> subprocess.Popen[str]:
    """`callpeer --as ME PEER` with `--server` for each of `where`, silent, its report in
    ME.json."""
    flags = [arg for server in where for arg in ("--server", server)]
    return subprocess.Popen(
        [str(BIN / "callpeer"), "--as", me, peer, *flags, *SILENT, *LENGTHS, f"{me}.json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(tmp_path),
        cwd=tmp_path,
    )


def connected_directly(tmp_path: Path) -> None:
    """Both callers' reports: the call went direct, and each heard the other."""
    for me in ("alice", "bob"):
        report = json.loads((tmp_path / f"{me}.json").read_text())
        assert report["path"] == "direct"
        assert report["audio"]["frames_received"] >= 80


def stop(servers: list[tuple[subprocess.Popen[str], str]]) -> None:
    for proc, _ in servers:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def rendezvous_on(tmp_path: Path, url: str) -> tuple[subprocess.Popen[str], str]:
    proc, address = start_rendezvous(tmp_path, "--redis", url)
    assert proc.stdout is not None
    for line in proc.stdout:  # up to the line that says it shares presence through Redis
        if "Redis" in line:
            break
    return proc, address


@needs_redis
@pytest.mark.slow
def test_a_call_between_callers_on_two_servers(tmp_path: Path, store: RedisProcess) -> None:
    servers = [rendezvous_on(tmp_path, store.url) for _ in range(2)]
    try:
        procs = []
        for me, peer, (_, where) in (("alice", "bob", servers[0]), ("bob", "alice", servers[1])):
            procs.append(caller(tmp_path, me, peer, where))
            time.sleep(0.5)  # alice waits at her server before bob asks at his
        for proc in procs:
            _, err = proc.communicate(timeout=40)
            assert proc.returncode == 0, err
        connected_directly(tmp_path)
    finally:
        stop(servers)


@needs_redis
@pytest.mark.slow
def test_a_caller_whose_server_dies_while_waiting_meets_its_peer_through_another(
    tmp_path: Path, store: RedisProcess
) -> None:
    """Alice waits at S1, which dies; bob asks at S3 meanwhile (his ask cannot reach her: her
    record still names S1, which hears nothing, so the store keeps both asks); alice moves to
    S2 and asks again there, the store matches them, and the call connects."""
    servers = [rendezvous_on(tmp_path, store.url) for _ in range(3)]
    (s1, first), (_, second), (_, third) = servers

    try:
        alice = caller(tmp_path, "alice", "bob", first, second)
        deadline = time.monotonic() + 20
        while cluster_holder(store, "alice") is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cluster_holder(store, "alice") is not None, "alice never registered"
        s1.kill()  # the whole server: its workers die with it
        s1.wait(10)
        bob = caller(tmp_path, "bob", "alice", third)
        errors = {}
        for me, proc in (("alice", alice), ("bob", bob)):
            _, errors[me] = proc.communicate(timeout=60)
            assert proc.returncode == 0, errors[me]
        assert f"registering with {second}" in errors["alice"], errors["alice"]
        connected_directly(tmp_path)
    finally:
        stop(servers)


def cluster_holder(store: RedisProcess, name: str) -> bytes | None:
    value = redis.Redis.from_url(store.url).hget(presence_key(name), "s")
    return value if isinstance(value, bytes) else None


@needs_redis
def test_a_server_whose_subscription_is_lost_subscribes_again(
    store: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_presence, "WATCH_EVERY", 0.2)

    async def scenario() -> int:
        server = await RendezvousServer().start("127.0.0.1", 0, tcp=False)
        link = await redis_presence.share_presence(server, store.url, 365)
        try:
            channel = server_channel(link.shared.server_id)
            admin = redis.asyncio.Redis.from_url(store.url)
            await admin.client_kill_filter(_type="pubsub")  # every subscriber's connection
            for _ in range(50):
                await asyncio.sleep(0.1)
                [(_, count)] = await admin.pubsub_numsub(channel)
                if count:
                    break
            await admin.aclose()
            return int(count)
        finally:
            server.close()
            await link.close()

    assert asyncio.run(scenario()) == 1


def test_redis_and_store_do_not_go_together(tmp_path: Path) -> None:
    both = ("--redis", "redis://127.0.0.1:1/0", "--store", "x")
    out = rendezvous_command(*both, tmp_path=tmp_path)
    assert out.returncode == 2 and "--store and --redis" in out.stderr
    bad = rendezvous_command("--redis", "127.0.0.1:6379", tmp_path=tmp_path)
    assert bad.returncode == 2 and "redis://HOST:PORT/DB" in bad.stderr


def test_an_unreachable_redis_is_one_line_and_exit_1(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rendezvous",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--redis",
            f"unix://{tmp_path}/nothing.sock",
        ],
        capture_output=True,
        text=True,
        env=env(tmp_path),
        timeout=30,
        check=False,
    )
    assert out.returncode == 1, out.stderr
    assert "cannot reach Redis at unix://" in out.stderr and "Traceback" not in out.stderr
