"""ICE restart through the rendezvous (RFC 8445 §9), sans-IO: who may ask to meet again, what
both sides are handed, and how a client tells a restart from a retransmission or a replay.

Whole calls that recover by meeting again (a NAT that forgets its mappings, a host that moves)
are in tests/test_faults.py."""

from __future__ import annotations

from dataclasses import replace

from rendezvous.introductions import RESTARTS_PER_WINDOW
from rendezvous.logic import RendezvousLogic
from tests.test_rendezvous import SERVER
from tests.test_rendezvous import Addr
from tests.test_rendezvous import converse
from voip.nat.rendezvous_client import RendezvousClient
from voip.nat.signal_events import GotPeer
from voip.nat.signal_events import Refreshed
from voip.security.identity import Identity
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.signal import PeerReady
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import encode
from voip.wire.stun import parse_message_untrusted

A, A2 = ("203.0.113.5", 4000), ("203.0.113.5", 4711)  # alice, and alice after her NAT forgot
B = ("198.51.100.7", 5000)


def intros(seen: list[tuple[Addr, Message]]) -> dict[Addr, PeerReady]:
    return {
        dest: PeerReady.from_message_untrusted(m)
        for dest, m in seen
        if m.method == Method.CP_PEER_READY and m.cls == Class.REQUEST
    }


def in_a_call(lifetime: float = 30.0) -> tuple[RendezvousLogic, RendezvousClient, RendezvousClient]:
    """Alice (first, so controlling) and bob, introduced; their events taken."""
    logic = RendezvousLogic(lifetime)
    alice = RendezvousClient("alice", "bob", SERVER, ())
    bob = RendezvousClient("bob", "alice", SERVER, ())
    converse(logic, {A: alice}, [(A, d) for d, _ in alice.start(0.0)], 0.0)
    seen = converse(logic, {A: alice, B: bob}, [(B, d) for d, _ in bob.start(1.0)], 1.0)
    assert set(intros(seen)) == {A, B}
    alice.pop_events()
    bob.pop_events()
    return logic, alice, bob


def test_asking_again_in_a_call_introduces_both_again_from_where_they_are_now() -> None:
    logic, alice, bob = in_a_call()
    first = (alice.peer_ready, bob.peer_ready)
    # Alice's NAT forgot her mapping: her refresh comes from a new port (a cookie round trip
    # there first), shows her she moved, and she asks for bob again.
    clients = {A2: alice, B: bob}
    converse(logic, clients, [(A2, d) for d, _ in alice.refresh(5.0)], 5.0)
    assert alice.pop_events() == [Refreshed(A2, moved=True)]
    seen = converse(logic, clients, [(A2, d) for d, _ in alice.ask(5.1)], 5.1)
    again = intros(seen)
    assert set(again) == {A2, B}  # to alice where she is now
    to_alice, to_bob = again[A2], again[B]
    assert to_bob.candidates[0] == Candidate.make(CandidateType.SRFLX, A2)
    assert to_alice.candidates[0] == Candidate.make(CandidateType.SRFLX, B)
    # The call's credentials, keys and roles: only where each can be reached has changed.
    assert first[0] is not None and first[1] is not None
    assert replace(to_alice, candidates=()) == replace(first[0], candidates=())
    assert replace(to_bob, candidates=()) == replace(first[1], candidates=())
    assert to_alice.controlling and not to_bob.controlling
    assert logic.stats["restarted"] == 1
    assert alice.pop_events() == [Refreshed(A2, False, asked=True), GotPeer(to_alice, again=True)]
    assert bob.pop_events() == [GotPeer(to_bob, again=True)]


def test_a_retransmitted_reintroduction_restarts_once() -> None:
    logic, alice, _ = in_a_call()
    seen = converse(logic, {}, [(A, d) for d, _ in alice.ask(5.0)], 5.0)  # nothing delivered
    to_alice = next(m for dest, m in seen if dest == A and m.method == Method.CP_PEER_READY)
    for _ in range(3):  # and then the server's retransmissions: each acknowledged
        acks = alice.handle(to_alice, SERVER, 5.2)
        assert acks and parse_message_untrusted(acks[0][0]).cls == Class.SUCCESS
    assert [type(e) for e in alice.pop_events()] == [GotPeer]


def test_a_replayed_first_introduction_is_acknowledged_and_ignored() -> None:
    logic = RendezvousLogic()
    alice = RendezvousClient("alice", "bob", SERVER, ())
    bob = RendezvousClient("bob", "alice", SERVER, ())
    converse(logic, {A: alice}, [(A, d) for d, _ in alice.start(0.0)], 0.0)
    seen = converse(logic, {A: alice, B: bob}, [(B, d) for d, _ in bob.start(1.0)], 1.0)
    replayed = next(m for dest, m in seen if dest == A and m.method == Method.CP_PEER_READY)
    alice.pop_events()
    assert alice.handle(replayed, SERVER, 30.0)  # acknowledged, as a retransmission
    assert alice.pop_events() == []


def test_only_the_call_itself_can_ask_to_meet_again() -> None:
    logic, alice, bob = in_a_call()
    # A new run of alice's identity (new credentials) asking for bob is a new call: it waits
    # for bob to ask, and bob's call hears nothing of it.
    rerun = RendezvousClient("alice", "bob", SERVER, (), identity=alice.identity)
    seen = converse(logic, {A: rerun, B: bob}, [(A, d) for d, _ in rerun.start(5.0)], 5.0)
    assert intros(seen) == {} and logic.stats["restart_refused"] == 0
    # Carol, in no call with bob, asking for him: waiting, and nothing goes to bob.
    carol = RendezvousClient("carol", "bob", SERVER, (), identity=Identity.generate())
    carol_at = ("198.51.100.99", 7000)
    sent = [(carol_at, d) for d, _ in carol.start(6.0)]
    seen = converse(logic, {carol_at: carol, B: bob}, sent, 6.0)
    assert intros(seen) == {} and bob.pop_events() == []
    assert logic.stats["restarted"] == 0


def test_restarts_are_capped_per_caller() -> None:
    """Each restart sends the peer a datagram it did not ask for: a caller gets a dozen a
    minute, which no real call needs (one per outage)."""
    logic, alice, bob = in_a_call(lifetime=300.0)  # no refreshes needed in this test
    clients = {A: alice, B: bob}
    for i in range(RESTARTS_PER_WINDOW + 3):
        converse(logic, clients, [(A, d) for d, _ in alice.ask(5.0 + i)], 5.0 + i)
    assert logic.stats["restarted"] == RESTARTS_PER_WINDOW
    assert logic.stats["restart_refused"] == 3
    converse(logic, clients, [(A, d) for d, _ in alice.ask(70.0)], 70.0)  # a minute on
    assert logic.stats["restarted"] == RESTARTS_PER_WINDOW + 1


def test_a_client_in_a_call_drops_a_reintroduction_to_another_key() -> None:
    """The server would never send it (the call is bound to both keys); a client does not
    trust that: the call's peer is whoever held the name when it began."""
    _, alice, _ = in_a_call()
    assert alice.peer_ready is not None and alice._key is not None
    other = replace(alice.peer_ready, peer_key=Identity.generate().public).to_message()
    signed = encode(other, integrity_key=alice._key, integrity_sha256=True, fingerprint=True)
    assert alice.handle(parse_message_untrusted(signed), SERVER, 5.0) == []
    assert alice.pop_events() == [] and alice.forged == 1


def test_a_restart_does_not_reach_a_new_run_of_the_peer() -> None:
    """Bob's call ended and he runs callpeer again, same identity and address: his new run has
    new credentials. Alice's old call asking to meet again must not hand his new run the old
    call's (it would take them for its first introduction, and fail its checks)."""
    logic, alice, bob = in_a_call()
    rerun = RendezvousClient("bob", "alice", SERVER, (), ask_now=False, identity=bob.identity)
    converse(logic, {B: rerun}, [(B, d) for d, _ in rerun.start(5.0)], 5.0)
    rerun.pop_events()
    seen = converse(logic, {A: alice, B: rerun}, [(A, d) for d, _ in alice.ask(6.0)], 6.0)
    assert intros(seen) == {} and rerun.pop_events() == [] and rerun.peer_ready is None
    assert logic.stats["restarted"] == 0
