"""The media key agreement over a simulated lossy path: completion, loss, refusal, MITM, forgery."""

from __future__ import annotations

import heapq
import itertools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from voip.security.handshake import MAX_RESPONDER_SESSIONS
from voip.security.handshake import NEVER_ANSWERED
from voip.security.handshake import NEVER_FINISHED
from voip.security.handshake import SRTP_KEYING_BYTES
from voip.security.handshake import HandshakeResult
from voip.security.handshake import MediaHandshake
from voip.security.handshake import commitment
from voip.security.handshake import frame
from voip.security.handshake import is_handshake
from voip.security.identity import Identity
from voip.security.noise import NoiseXX

LATENCY = 0.05
PROLOGUE = b"callpeer media v1 test"


def accept(_key: bytes) -> str | None:
    return None


@dataclass
class Net:
    """Handshakes joined by paths of fixed latency: each node's datagrams go to its peer,
    unless `drop` says to lose them. Time jumps from one event to the next."""

    nodes: dict[str, MediaHandshake]
    peer: dict[str, str]
    drop: Callable[[str, bytes], bool] = lambda _sender, _data: False
    now: float = 0.0
    log: list[tuple[float, str, bytes]] = field(default_factory=list)
    _queue: list[tuple[float, int, str, bytes]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def send(self, sender: str, datagrams: list[bytes]) -> None:
        for data in datagrams:
            self.log.append((self.now, sender, data))
            if not self.drop(sender, data):
                self.inject(self.now + LATENCY, self.peer[sender], data)

    def inject(self, at: float, to: str, data: bytes) -> None:
        heapq.heappush(self._queue, (at, next(self._seq), to, data))

    def sent(self, sender: str, number: int) -> list[float]:
        return [t for t, s, d in self.log if s == sender and d[1] == number]

    def run(self, until: float = 30.0) -> None:
        for name, node in self.nodes.items():
            self.send(name, node.start(self.now))
        while True:
            deadlines = [d for n in self.nodes.values() if (d := n.next_deadline()) is not None]
            times = deadlines + ([self._queue[0][0]] if self._queue else [])
            if not times or min(times) > until:
                return
            self.now = min(times)
            if self._queue and self._queue[0][0] <= self.now:
                _, _, to, data = heapq.heappop(self._queue)
                if to in self.nodes:
                    self.send(to, self.nodes[to].handle_untrusted(data, self.now))
            for name, node in self.nodes.items():
                deadline = node.next_deadline()
                if deadline is not None and deadline <= self.now:
                    self.send(name, node.poll(self.now))


def pair(
    alice_verify: Callable[[bytes], str | None] = accept,
    bob_verify: Callable[[bytes], str | None] = accept,
    drop: Callable[[str, bytes], bool] | None = None,
) -> tuple[Net, Identity, Identity]:
    alice_id, bob_id = Identity.generate(), Identity.generate()
    alice = MediaHandshake(True, alice_id.private, PROLOGUE, alice_verify)
    bob = MediaHandshake(False, bob_id.private, PROLOGUE, bob_verify)
    net = Net({"alice": alice, "bob": bob}, {"alice": "bob", "bob": "alice"})
    if drop is not None:
        net.drop = drop
    return net, alice_id, bob_id


def results(net: Net, a: str = "alice", b: str = "bob") -> tuple[HandshakeResult, HandshakeResult]:
    ra, rb = net.nodes[a].result, net.nodes[b].result
    assert ra is not None and rb is not None
    return ra, rb


def assert_agree(ra: HandshakeResult, rb: HandshakeResult) -> None:
    assert ra.sas == rb.sas
    assert re.fullmatch(r"[A-Z2-7]{4}-[A-Z2-7]{4}", ra.sas)
    assert ra.handshake_hash == rb.handshake_hash
    assert ra.local_srtp == rb.remote_srtp and ra.remote_srtp == rb.local_srtp
    assert len(ra.local_srtp) == len(ra.remote_srtp) == SRTP_KEYING_BYTES
    assert ra.local_srtp != ra.remote_srtp


def test_perfect_link() -> None:
    net, alice_id, bob_id = pair()
    net.run()
    ra, rb = results(net)
    assert_agree(ra, rb)
    assert ra.remote_static == bob_id.public and rb.remote_static == alice_id.public
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    # One round trip for the initiator, one and a half for the responder; nothing resent.
    assert alice.completed_at == pytest.approx(2 * LATENCY)
    assert bob.completed_at == pytest.approx(3 * LATENCY)
    assert alice.started_at == bob.started_at == 0.0
    assert [len(net.sent(s, n)) for s, n in (("alice", 1), ("bob", 2), ("alice", 3))] == [1, 1, 1]
    assert alice.rejected == bob.rejected == 0
    assert alice.next_deadline() is None and bob.next_deadline() is None
    assert alice.poll(99.0) == [] and bob.poll(99.0) == []


def drop_first(number: int) -> Callable[[str, bytes], bool]:
    dropped: list[bytes] = []

    def drop(_sender: str, data: bytes) -> bool:
        if data[1] == number and not dropped:
            dropped.append(data)
            return True
        return False

    return drop


@pytest.mark.parametrize("lost", [1, 2, 3])
def test_each_message_lost_once(lost: int) -> None:
    net, _, _ = pair(drop=drop_first(lost))
    net.run()
    ra, rb = results(net)
    assert_agree(ra, rb)
    bob = net.nodes["bob"]
    assert bob.completed_at is not None and bob.completed_at > 3 * LATENCY
    assert net.nodes["alice"].rejected == bob.rejected == 0  # repeats are answered, not refused
    if lost == 3:  # nothing answers msg3: bob's resent msg2 draws alice's cached msg3
        assert len(net.sent("bob", 2)) >= 2 and len(set(d for _, s, d in net.log if d[1] == 3)) == 1


def test_cached_replies_are_identical() -> None:
    net, _, _ = pair()
    net.run()
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    msg1, msg2, msg3 = (d for _, _, d in net.log)
    assert bob.handle_untrusted(msg1, 1.0) == []  # complete: a stale msg1 needs no answer
    assert alice.handle_untrusted(msg2, 1.0) == [msg3]
    assert bob.handle_untrusted(msg3, 1.0) == []
    assert alice.rejected == bob.rejected == 0

    fresh = MediaHandshake(False, X25519PrivateKey.generate(), PROLOGUE, accept)
    fresh.start(0.0)
    first = fresh.handle_untrusted(msg1, 0.1)
    assert fresh.handle_untrusted(msg1, 0.2) == first


def test_initiator_refuses_before_sending_msg3() -> None:
    seen: list[bytes] = []

    def refuse(key: bytes) -> str | None:
        seen.append(key)
        assert net.sent("alice", 3) == []  # called before msg3 is written
        return "bob's key is not the one pinned for bob"

    net, _, bob_id = pair(alice_verify=refuse)
    net.run()
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    assert seen == [bob_id.public]
    assert alice.failure == "bob's key is not the one pinned for bob" and alice.result is None
    assert net.sent("alice", 3) == []
    assert [t for t, s, _ in net.log if s == "alice" and t > 2 * LATENCY] == []  # then silent
    # Bob answered msg1 and waited for a msg3 that never came: he says why that may be.
    assert bob.result is None and bob.failure == NEVER_FINISHED


def test_responder_refuses_before_completing() -> None:
    seen: list[bytes] = []

    def refuse(key: bytes) -> str | None:
        seen.append(key)
        return "unknown caller"

    net, alice_id, _ = pair(bob_verify=refuse)
    net.run()
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    assert seen == [alice_id.public]
    assert bob.failure == "unknown caller" and bob.result is None and bob.completed_at is None
    assert [t for t, s, _ in net.log if s == "bob" and t > 2 * LATENCY] == []
    assert alice.result is not None  # she sent msg3; bob's refusal is heard above this layer


def test_man_in_the_middle_gets_different_sas() -> None:
    alice_id, bob_id, mallory_id = Identity.generate(), Identity.generate(), Identity.generate()
    nodes = {
        "alice": MediaHandshake(True, alice_id.private, PROLOGUE, accept),
        "m_resp": MediaHandshake(False, mallory_id.private, PROLOGUE, accept),
        "m_init": MediaHandshake(True, mallory_id.private, PROLOGUE, accept),
        "bob": MediaHandshake(False, bob_id.private, PROLOGUE, accept),
    }
    peers = {"alice": "m_resp", "m_resp": "alice", "m_init": "bob", "bob": "m_init"}
    net = Net(nodes, peers)
    net.run()
    ra, rm1 = results(net, "alice", "m_resp")
    rm2, rb = results(net, "m_init", "bob")
    assert ra.remote_static == rb.remote_static == mallory_id.public
    assert ra.sas == rm1.sas and rb.sas == rm2.sas  # each half agrees with mallory...
    assert ra.sas != rb.sas  # ...but alice and bob, reading theirs aloud, do not agree
    assert ra.local_srtp != rb.remote_srtp


def test_forged_and_garbage_datagrams_are_counted_and_harmless() -> None:
    net, _, _ = pair()
    mallory = NoiseXX(True, X25519PrivateKey.generate(), PROLOGUE)
    forged_msg1 = frame(1, mallory.write_message())  # well formed, arrives before alice's
    garbage = [
        b"",
        b"\x10",
        b"\x10\x01\x00",
        frame(1, b"short"),  # too short for a key
        b"\x10\x01\x00\x01" + bytes(32),  # reserved bits set
        b"\x11\x01\x00\x00" + bytes(32),  # a type in the range that is not ours
        frame(9, bytes(32)),
        frame(2, os.urandom(96)),  # msg2 to the responder
        frame(3, os.urandom(64)),  # a msg3 no session can read
        os.urandom(100),
    ]
    net.inject(0.0, "bob", forged_msg1)
    for n, data in enumerate(garbage):
        net.inject(0.01 + n * 0.001, "bob", data)
    to_alice = [frame(2, os.urandom(96)), frame(1, bytes(32)), frame(3, os.urandom(64)), b"\x80"]
    for n, data in enumerate(to_alice):
        net.inject(0.02 + n * 0.001, "alice", data)
    net.run()
    ra, rb = results(net)
    assert_agree(ra, rb)
    alice, bob = net.nodes["alice"], net.nodes["bob"]
    assert bob.rejected == len(garbage)
    # Bob answered the forged msg1 too, and alice could not read that answer.
    assert alice.rejected >= len(to_alice) + 1


def test_a_flood_of_forged_msg1_does_not_shut_out_the_genuine_one() -> None:
    net, _, _ = pair()
    for n in range(3 * MAX_RESPONDER_SESSIONS):
        forged = frame(1, NoiseXX(True, X25519PrivateKey.generate(), PROLOGUE).write_message())
        net.inject(n * 0.001, "bob", forged)
    net.run()
    assert_agree(*results(net))


def test_gives_up_with_a_reason() -> None:
    alice = MediaHandshake(True, X25519PrivateKey.generate(), PROLOGUE, accept)
    net = Net({"alice": alice}, {"alice": "nobody"})
    net.run()
    assert alice.failure == NEVER_ANSWERED and alice.result is None
    sends = net.sent("alice", 1)
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert gaps[:3] == pytest.approx([0.25, 0.5, 1.0])
    assert max(gaps) == pytest.approx(1.0)
    assert sends[-1] < 10.0 and net.now == pytest.approx(10.0)
    assert alice.next_deadline() is None

    bob = MediaHandshake(False, X25519PrivateKey.generate(), PROLOGUE, accept, give_up_after=3.0)
    assert bob.start(5.0) == []
    assert bob.next_deadline() == pytest.approx(8.0)
    assert bob.poll(7.9) == [] and bob.failure is None
    assert bob.poll(8.0) == [] and bob.failure == NEVER_ANSWERED


def test_is_handshake() -> None:
    stun = bytes.fromhex("000100002112a442") + bytes(12)
    rtp = bytes.fromhex("80000001") + bytes(8)
    dtls = bytes([22, 0xFE, 0xFD])
    assert not is_handshake(stun) and not is_handshake(rtp) and not is_handshake(dtls)
    assert not is_handshake(b"") and not is_handshake(b"\x0f") and not is_handshake(b"\x14")
    assert all(is_handshake(bytes([b, 1, 0, 0])) for b in (16, 17, 18, 19))
    assert is_handshake(frame(1, bytes(32)))


@settings(max_examples=200, deadline=None)
@given(
    initiator=st.booleans(),
    data=st.one_of(
        st.binary(max_size=200),
        st.builds(frame, st.integers(1, 3), st.binary(max_size=200)),
    ),
)
def test_handle_untrusted_never_raises(initiator: bool, data: bytes) -> None:
    side = MediaHandshake(initiator, X25519PrivateKey.generate(), PROLOGUE, accept)
    side.start(0.0)
    out = side.handle_untrusted(data, 0.1)
    assert side.result is None and side.failure is None
    assert all(is_handshake(d) for d in out)


def committed_pair() -> tuple[Net, X25519PrivateKey, X25519PrivateKey]:
    """As a call runs it: each side's ephemeral committed to ahead, and held by the other."""
    ea, eb = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    alice, bob = (
        MediaHandshake(
            initiator,
            Identity.generate().private,
            PROLOGUE,
            accept,
            ephemeral=mine,
            peer_commitment=commitment(theirs),
        )
        for initiator, mine, theirs in ((True, ea, eb), (False, eb, ea))
    )
    return Net({"alice": alice, "bob": bob}, {"alice": "bob", "bob": "alice"}), ea, eb


def test_committed_ephemerals_complete_and_strangers_get_no_answer() -> None:
    """With commitments, a msg1 that is not the committed one is dropped unread: no key
    exchange for a stranger, no msg2 sent back, and a flood that comes after the genuine msg1
    (the race the session table alone loses) changes nothing."""
    net, _, _ = committed_pair()
    for n in range(50):
        forged = frame(1, NoiseXX(True, X25519PrivateKey.generate(), PROLOGUE).write_message())
        net.inject(0.051 + n * 0.0001, "bob", forged)  # just after alice's msg1 lands
    net.run()
    assert_agree(*results(net))
    bob = net.nodes["bob"]
    assert bob.rejected == 50
    assert len(net.sent("bob", 2)) == 1  # one msg2, to the genuine msg1 only


def test_a_man_in_the_middle_cannot_choose_his_ephemeral_after_seeing_alice() -> None:
    """Mallory answers alice's msg1 with a msg2 from an ephemeral of his choosing (what he
    would grind for a SAS collision): it is not the one committed to, so it is dropped."""
    net, _, _ = committed_pair()
    alice = net.nodes["alice"]
    msg1 = alice.start(0.0)[0]
    mallory = NoiseXX(False, X25519PrivateKey.generate(), PROLOGUE)
    mallory.read_message_untrusted(msg1[4:])
    assert alice.handle_untrusted(frame(2, mallory.write_message()), 0.01) == []
    assert alice.rejected == 1 and alice.result is None
    # The genuine responder, with the committed ephemeral, still gets through.
    bob = net.nodes["bob"]
    msg2 = bob.handle_untrusted(msg1, 0.02)
    assert len(msg2) == 1 and alice.handle_untrusted(msg2[0], 0.03) != []
    assert alice.result is not None


def test_a_payload_is_refused_where_none_may_be() -> None:
    """A payload is free for its writer and moves h: a msg2 that carries one is rejected, and
    the state is as before it, so the genuine msg2 still completes."""
    net, _, eb = committed_pair()
    alice = net.nodes["alice"]
    msg1 = alice.start(0.0)[0]
    with_payload = NoiseXX(False, X25519PrivateKey.generate(), PROLOGUE, ephemeral=eb)
    with_payload.read_message_untrusted(msg1[4:])
    assert alice.handle_untrusted(frame(2, with_payload.write_message(b"grind me")), 0.01) == []
    assert alice.rejected == 1
    msg2 = net.nodes["bob"].handle_untrusted(msg1, 0.02)
    assert alice.handle_untrusted(msg2[0], 0.03) != [] and alice.result is not None
