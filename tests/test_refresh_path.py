"""Refreshes that change nothing: answered by rendezvous/refresh_path.py byte for byte as the
full rules answer them, and only while the full rules would still serve them."""

from __future__ import annotations

from rendezvous.logic import RelayOffer
from rendezvous.logic import RendezvousLogic
from rendezvous.node import RendezvousNode
from tests.test_rendezvous import converse
from voip.nat.rendezvous_client import RendezvousClient
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.stun import parse_message_untrusted

Addr = tuple[str, int]
A: Addr = ("203.0.113.5", 4000)
SERVER: Addr = ("203.0.113.10", 3478)


def registered(peer: str = "bob") -> tuple[RendezvousNode, RendezvousClient]:
    logic = RendezvousLogic(relay=RelayOffer(("203.0.113.20", 3478), "secret"), wallclock=1.7e9)
    node = RendezvousNode(logic, None, SERVER)
    host = Candidate.make(CandidateType.HOST, ("198.18.0.2", 4000))
    client = RendezvousClient("alice", peer, SERVER, (host,))
    converse(logic, {A: client}, [(A, d) for d, _ in client.start(0.0)], 0.0)
    return node, client


def test_a_refresh_that_changes_nothing_gets_the_full_rules_answer_byte_for_byte() -> None:
    node, client = registered()
    refresh = client.refresh(5.0)[0][0]
    node.logic.refreshes._known.clear()  # the full rules answer it, and it is learnt again
    [full] = node.handle(refresh, A, SERVER, 5.0)
    assert len(node.logic.refreshes) == 1
    [quick] = node.handle(refresh, A, SERVER, 5.0)  # the same request, at the same time
    assert node.logic.refreshes._known  # still known: it was the quick path
    assert quick.data == full.data and quick.dest == full.dest == A
    assert client.handle(parse_message_untrusted(quick.data), SERVER, 5.0) == []
    assert node.logic.stats["register"] == 3
    # The name's life was extended by the quick one too.
    entry = node.logic.registry.get("alice", 5.0)
    assert entry is not None and entry.expires == 5.0 + node.logic.registry.lifetime


def test_only_the_same_request_with_a_good_mac_from_the_same_address_is_quick() -> None:
    node, client = registered()
    refresh = bytearray(client.refresh(5.0)[0][0])
    node.handle(bytes(refresh), A, SERVER, 5.0)  # learnt again from this one
    refresh[-20] ^= 1  # inside the MAC
    assert node.logic.refreshes.answer(bytes(refresh), A, 6.0) is None
    other = client.refresh(6.0)[0][0]
    assert node.logic.refreshes.answer(other, ("203.0.113.5", 4001), 6.0) is None
    assert node.logic.refreshes.answer(other, A, 6.0) is not None


def test_a_refresh_is_not_quick_once_the_entry_left_or_changed() -> None:
    node, client = registered()
    refresh = client.refresh(5.0)[0][0]
    assert node.logic.refreshes.answer(refresh, A, 5.0) is not None
    entry = node.logic.registry.get("alice", 5.0)
    assert entry is not None
    entry.wants = None  # introduced meanwhile: the full rules decide what its ask means now
    assert node.logic.refreshes.answer(client.refresh(6.0)[0][0], A, 6.0) is None
    node2, client2 = registered()
    again = client2.refresh(7.0)[0][0]
    node2.logic.handle_datagram(client2.leave(7.0)[0][0], A, 7.0)
    assert node2.logic.refreshes.answer(again, A, 8.0) is None
    node3, client3 = registered()
    late = node3.logic.registry.lifetime + 1
    assert node3.logic.refreshes.answer(client3.refresh(late)[0][0], A, late) is None


def test_only_the_last_request_the_full_rules_served_is_quick() -> None:
    """Candidates that flap (C1, C2, C1 again): the third is served by the full rules, so the
    registration holds C1, never an old answer for C1 while it holds C2."""
    node, client = registered()
    first = client.refresh(5.0)[0][0]
    assert node.logic.refreshes.answer(first, A, 5.0) is not None
    other = Candidate.make(CandidateType.HOST, ("198.18.0.9", 4000))
    client.host_candidates = (other,)
    node.handle(client.refresh(6.0)[0][0], A, SERVER, 6.0)  # the full rules: C2
    entry = node.logic.registry.get("alice", 6.0)
    assert entry is not None and entry.host_candidates == (other,)
    assert node.logic.refreshes.answer(first, A, 7.0) is None  # C1 again: the full rules
    assert len(node.logic.refreshes) == 1  # one remembered request per registration
