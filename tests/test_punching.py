"""Rendezvous + hole punching through simulated NATs, sans-IO, in simulated time."""

from __future__ import annotations

import pytest

from rendezvous.behaviour import Addresses
from rendezvous.logic import RelayOffer
from rendezvous.logic import RendezvousLogic
from tests.netsim import Address
from tests.netsim import Nat
from tests.netsim import Network
from tests.netsim import Responder
from tests.netsim import Transmit
from voip.nat import checks
from voip.nat.checklist import TA
from voip.nat.connector import Connector
from voip.nat.connector import ConnectorEvent
from voip.nat.connector import Introduced
from voip.nat.connector import PeerTimeout
from voip.nat.connector import RelayUnavailable
from voip.nat.relay_base import GATHER_TIMEOUT
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.signal import MAPPING_DEPENDENT
from voip.wire.signal import MAPPING_INDEPENDENT
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import encode
from voip.wire.stun import message_type
from voip.wire.stun import parse_message_untrusted
from voip.wire.stun import text
from voip.wire.stun import u32
from voip.wire.stun import u64

SERVER: Address = ("203.0.113.10", 3478)


class ServerNode:
    def __init__(self) -> None:
        self.logic = RendezvousLogic()

    def handle(self, data: bytes, src: Address, now: float) -> list[Transmit]:
        return self.logic.handle_datagram(data, src, now)

    def poll(self, now: float) -> list[Transmit]:
        return self.logic.poll(now)

    def next_deadline(self) -> float | None:
        return self.logic.next_deadline()


class AlternateNode(Responder):
    """The rendezvous's RFC 5780 alternate address: Binding answers only, from there."""

    def __init__(self, logic: RendezvousLogic, local: Address):
        self.logic, self.local = logic, local

    def handle(self, data: bytes, src: Address, now: float) -> list[Transmit]:
        msg = parse_message_untrusted(data)
        return [(out.data, out.dest) for out in self.logic.binding(msg, src, self.local)]


class ClientNode:
    def __init__(
        self,
        name: str,
        peer: str,
        addr: Address,
        wait_timeout: float = 120.0,
        relay_mode: str = "off",
    ):
        hosts = (Candidate.make(CandidateType.HOST, addr),)
        self.connector = Connector(
            name, peer, SERVER, hosts, wait_timeout=wait_timeout, relay_mode=relay_mode
        )
        self.events: list[ConnectorEvent] = []
        self.media_from: list[Address] = []

    def handle(self, data: bytes, src: Address, now: float) -> list[Transmit]:
        out, _media = self.connector.handle(data, src, now)
        self.events += self.connector.pop_events()
        return out

    def poll(self, now: float) -> list[Transmit]:
        out = self.connector.poll(now)
        self.events += self.connector.pop_events()
        return out

    def next_deadline(self) -> float | None:
        return self.connector.next_deadline()

    def first(self, kind: type) -> object | None:
        return next((e for e in self.events if isinstance(e, kind)), None)


def build(
    nat_a: str | None,
    nat_b: str | None,
    same_nat: bool = False,
    hairpin: bool = False,
    delay: object = None,
    start_b: float = 0.3,
) -> tuple[Network, ClientNode, ClientNode]:
    net = Network(delay)  # type: ignore[arg-type]
    net.attach(SERVER, ServerNode())
    a_addr: Address = ("198.18.1.2", 5000) if nat_a else ("203.0.113.2", 5000)
    b_addr: Address = (
        ("198.18.1.3", 6000)
        if same_nat
        else (("198.18.2.2", 6000) if nat_b else ("203.0.113.3", 6000))
    )
    nat_a_obj = net.add_nat(Nat("203.0.113.100", nat_a, hairpin)) if nat_a else None
    if same_nat:
        nat_b_obj = nat_a_obj
    else:
        nat_b_obj = net.add_nat(Nat("198.51.100.200", nat_b)) if nat_b else None
    a = ClientNode("alice", "bob", a_addr)
    b = ClientNode("bob", "alice", b_addr)
    net.attach(a_addr, a, nat_a_obj)
    net.attach(b_addr, b, nat_b_obj)
    net.send(a_addr, a.connector.start(0.0))
    net.run(start_b)
    net.send(b_addr, b.connector.start(net.now))
    return net, a, b


def selected(node: ClientNode) -> checks.PathSelected | None:
    return node.first(checks.PathSelected)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("nat_a", "nat_b"),
    [
        (None, None),
        ("cone", "cone"),
        ("cone", "full-cone"),
        ("full-cone", "symmetric"),
        ("cone", None),
        (None, "symmetric"),
    ],
)
def test_punching_succeeds_where_a_mapping_is_predictable(
    nat_a: str | None, nat_b: str | None
) -> None:
    net, a, b = build(nat_a, nat_b)
    net.run(5.0, stop=lambda: selected(a) is not None and selected(b) is not None)
    sa, sb = selected(a), selected(b)
    assert sa is not None and sb is not None, (a.events, b.events)
    # Each side sends to the address the other's packets really come from: its public mapping.
    a_public = net.nats["203.0.113.100"].public_ip if nat_a else "203.0.113.2"
    b_public = net.nats["198.51.100.200"].public_ip if nat_b else "203.0.113.3"
    assert sa.pair.remote.address[0] == b_public
    assert sb.pair.remote.address[0] == a_public
    assert net.now < 1.0  # one or two round trips after bob starts, not a timeout


def test_symmetric_against_full_cone_learns_peer_reflexive_address() -> None:
    net, a, b = build("symmetric", "full-cone")
    net.run(5.0, stop=lambda: selected(a) is not None and selected(b) is not None)
    sb = selected(b)
    assert sb is not None
    # Alice's NAT gave the server one port and bob another: bob learns it from her check.
    assert sb.pair.remote.kind == CandidateType.PRFLX


@pytest.mark.parametrize(("nat_a", "nat_b"), [("symmetric", "symmetric"), ("symmetric", "cone")])
def test_unpunchable_pairs_fail_with_what_was_tried(nat_a: str, nat_b: str) -> None:
    # Symmetric vs port-restricted cone fails too: the cone NAT filters by port, and the
    # symmetric NAT's port towards it is one nobody could have told it.
    net, a, b = build(nat_a, nat_b)
    net.run(
        30.0,
        stop=lambda: (
            a.first(checks.ChecksFailed) is not None and b.first(checks.ChecksFailed) is not None
        ),
    )
    failed = a.first(checks.ChecksFailed)
    assert isinstance(failed, checks.ChecksFailed)
    assert any(t.startswith("srflx ") for t in failed.tried)
    assert selected(a) is None and selected(b) is None


def test_same_nat_without_hairpin_connects_over_host_candidates() -> None:
    net, a, b = build("cone", "cone", same_nat=True, hairpin=False)
    net.run(5.0, stop=lambda: selected(a) is not None and selected(b) is not None)
    sa = selected(a)
    assert sa is not None and sa.pair.remote.kind == CandidateType.HOST
    assert sa.pair.remote.address == ("198.18.1.3", 6000)


def test_lowest_rtt_valid_pair_is_chosen_over_higher_priority() -> None:
    # Same NAT, which hairpins: the host pair and the hairpinned srflx pair both work. Make the
    # LAN the slow one, so RTT and candidate priority disagree; the faster pair must win.
    def delay(src: Address, dst: Address) -> float:
        return 0.030 if dst[0].startswith("198.18.") else 0.002

    net, a, b = build("cone", "cone", same_nat=True, hairpin=True, delay=delay)
    net.run(5.0, stop=lambda: selected(a) is not None and selected(b) is not None)
    sa, sb = selected(a), selected(b)
    assert sa is not None and sb is not None
    assert sa.pair.remote.kind == CandidateType.SRFLX
    assert sb.pair.remote.address[0] == "203.0.113.100"  # bob agrees: the nominated pair
    assert a.connector.checks is not None
    host_pair = a.connector.checks.pairs[(checks.HOST, ("198.18.1.3", 6000))]
    assert sa.pair.rtt == pytest.approx(0.004, abs=0.001)
    # The LAN pair (60 ms round trip) was still unanswered when the 4 ms pair was nominated:
    # a pair that has not answered within 1.5 x the best RTT cannot beat it.
    assert host_pair.rtt is None or host_pair.rtt > 0.004
    assert net.now < 0.3 + 0.1  # bob starts at 0.3 s; connected within 100 ms of that


def test_introduction_arrives_at_both_sides_at_the_same_moment() -> None:
    net, a, b = build("cone", "cone")
    net.run(5.0, stop=lambda: selected(a) is not None and selected(b) is not None)
    peer_ready_type = message_type(Method.CP_PEER_READY, Class.REQUEST).to_bytes(2, "big")
    sends = [
        (t, dst) for t, src, dst, data in net.sent if src == SERVER and data[:2] == peer_ready_type
    ]
    first_send = {dst: t for t, dst in reversed(sends)}
    assert len(first_send) == 2 and len(set(first_send.values())) == 1


def test_forged_check_with_wrong_integrity_is_ignored() -> None:
    net, a, b = build("cone", "cone")
    net.run(5.0, stop=lambda: a.first(Introduced) is not None)
    intro = a.first(Introduced)
    assert isinstance(intro, Introduced)
    ready, ours = intro.ready, a.connector.signal.ice
    # The introduction names the key that owns the peer's name, and the peer's own credentials.
    assert ready.peer_key == b.connector.signal.identity.public
    assert ready.remote_ufrag == b.connector.signal.ice.ufrag
    # A stranger who knows the usernames (they are not secret) but not the password.
    msg = Message(
        Method.BINDING,
        Class.REQUEST,
        attributes=(
            (Attr.USERNAME, text(f"{ours.ufrag}:{ready.remote_ufrag}")),
            (Attr.PRIORITY, u32(1)),
            (Attr.ICE_CONTROLLED, u64(1)),
            (Attr.USE_CANDIDATE, b""),
        ),
    )
    forged = encode(msg, integrity_key=b"guessed-password", fingerprint=True)
    conn = a.connector
    assert conn.checks is not None
    before = conn.checks.ignored
    out, _ = conn.handle(forged, ("198.51.100.66", 4444), net.now)
    assert out == []  # no answer to a stranger
    assert conn.checks.ignored == before + 1
    assert ("host", ("198.51.100.66", 4444)) not in conn.checks.pairs  # nothing learned from it


def test_peer_that_never_calls_back_times_out() -> None:
    net = Network()
    net.attach(SERVER, ServerNode())
    a = ClientNode("alice", "bob", ("203.0.113.2", 5000), wait_timeout=3.0)
    net.attach(("203.0.113.2", 5000), a)
    net.send(("203.0.113.2", 5000), a.connector.start(0.0))
    net.run(10.0, stop=lambda: a.first(PeerTimeout) is not None)
    timeout = a.first(PeerTimeout)
    # 3 s after the server said she is waiting, which takes two simulated round trips from the
    # start (one for the cookie, one for the REGISTER that brings it back).
    assert isinstance(timeout, PeerTimeout) and 3.0 < timeout.waited <= 3.05, timeout


def test_an_unreachable_relay_delays_but_does_not_stop_the_call() -> None:
    """The rendezvous offers a relay nobody answers at: after the gather timeout each side asks
    for its peer anyway, punches, and reports the relay as unavailable with the reason."""
    net = Network()
    logic_node = ServerNode()
    logic_node.logic.relay = RelayOffer(("203.0.113.99", 3478), "secret")  # nothing there
    net.attach(SERVER, logic_node)
    a = ClientNode("alice", "bob", ("203.0.113.2", 5000), relay_mode="auto")
    b = ClientNode("bob", "alice", ("203.0.113.3", 6000), relay_mode="auto")
    net.attach(("203.0.113.2", 5000), a)
    net.attach(("203.0.113.3", 6000), b)
    net.send(("203.0.113.2", 5000), a.connector.start(0.0))
    net.send(("203.0.113.3", 6000), b.connector.start(0.0))
    net.run(10.0, stop=lambda: selected(a) is not None and selected(b) is not None)
    sa = selected(a)
    assert sa is not None and sa.pair.kind == "direct"
    assert GATHER_TIMEOUT <= net.now < GATHER_TIMEOUT + 0.5
    unavailable = a.first(RelayUnavailable)
    assert isinstance(unavailable, RelayUnavailable)
    assert "relay" in unavailable.reason


ALTERNATE: Address = ("203.0.113.11", 3479)
MAPPING = {
    None: MAPPING_INDEPENDENT,
    "cone": MAPPING_INDEPENDENT,
    "full-cone": MAPPING_INDEPENDENT,
    "symmetric": MAPPING_DEPENDENT,
}


def introduce_with_probes(
    nat_a: str | None, nat_b: str | None, alternate: str = "answers"
) -> tuple[Network, ClientNode, ClientNode]:
    net = Network()
    server = ServerNode()
    if alternate != "none":
        server.logic.addresses = Addresses(SERVER, ALTERNATE)
    if alternate == "answers":
        alt_local = (ALTERNATE[0], SERVER[1])
        net.attach(alt_local, AlternateNode(server.logic, alt_local))
    net.attach(SERVER, server)
    nats = [
        net.add_nat(Nat(ip, kind)) if kind else None
        for ip, kind in (("203.0.113.100", nat_a), ("198.51.100.200", nat_b))
    ]
    addrs: list[Address] = [
        ("198.18.1.2", 5000) if nat_a else ("203.0.113.2", 5000),
        ("198.18.2.2", 6000) if nat_b else ("203.0.113.3", 6000),
    ]
    a = ClientNode("alice", "bob", addrs[0], relay_mode="auto")
    b = ClientNode("bob", "alice", addrs[1], relay_mode="auto")
    for addr, node, nat in zip(addrs, (a, b), nats, strict=True):
        net.attach(addr, node, nat)
        net.send(addr, node.connector.start(0.0))
    net.run(3.0, stop=lambda: a.first(Introduced) is not None and b.first(Introduced) is not None)
    return net, a, b


@pytest.mark.parametrize(
    ("nat_a", "nat_b"),
    [("symmetric", "symmetric"), ("cone", "symmetric"), (None, "full-cone")],
)
def test_each_side_learns_its_mapping_at_registration_and_hears_the_peers(
    nat_a: str | None, nat_b: str | None
) -> None:
    """With an alternate address the server says so in its REGISTER answer; one Binding there
    tells each client its NAT's mapping, which it sends with its call request and the server
    hands to the peer. Only when both map per destination is punching called hopeless."""
    net, a, b = introduce_with_probes(nat_a, nat_b)
    assert net.now < 0.1  # one more round trip, in parallel with gathering, not a timeout
    for me, mine, theirs in ((a, nat_a, nat_b), (b, nat_b, nat_a)):
        assert me.connector.own_mapping == MAPPING[mine]
        intro = me.first(Introduced)
        assert isinstance(intro, Introduced) and intro.ready.peer_mapping == MAPPING[theirs]
        hopeless = nat_a == nat_b == "symmetric"
        assert me.connector.punch_hopeless is hopeless
        assert me.connector.checks is not None and me.connector.checks.punch_hopeless is hopeless


def test_without_an_alternate_address_nothing_is_probed() -> None:
    net, a, _ = introduce_with_probes("symmetric", "symmetric", alternate="none")
    assert a.first(Introduced) is not None and net.now < 0.1  # no probe to wait for either
    assert a.connector.probe is None and a.connector.own_mapping is None
    assert not a.connector.punch_hopeless  # unknown is not hopeless: punching is tried


def test_a_silent_alternate_address_delays_the_call_request_by_a_second_at_most() -> None:
    net, a, _ = introduce_with_probes("symmetric", "symmetric", alternate="silent")
    assert a.first(Introduced) is not None and 0.9 < net.now < 1.1
    assert a.connector.probe is not None and a.connector.own_mapping is None
    assert not a.connector.punch_hopeless


def agents(
    bobs: tuple[Candidate, ...], alices: Candidate, bases: tuple[checks.Base, ...] = (checks.HOST,)
) -> tuple[checks.ConnectivityChecks, checks.ConnectivityChecks]:
    """Alice (controlling, checking `bobs` from `bases`) and bob (checking `alices`), each with
    the other's credentials, at time 0."""
    alice = checks.ConnectivityChecks(
        "ua", "pa" * 11, "ub", "pb" * 11, True, bobs, now=0.0, bases=bases
    )
    bob = checks.ConnectivityChecks("ub", "pb" * 11, "ua", "pa" * 11, False, (alices,), now=0.0)
    return alice, bob


def test_direct_pairs_are_checked_before_triggered_relayed_ones() -> None:
    """A peer's checks arriving through a relay trigger relayed checks; queued first, paced Ta
    apart, they would hold back the direct pairs (and so the direct decision) by Ta each."""
    peer_host, peer_srflx, peer_relay = (
        ("198.18.2.2", 6000),
        ("198.51.100.200", 40000),
        ("203.0.113.20", 50000),
    )
    alice, bob = agents(
        (
            Candidate.make(CandidateType.HOST, peer_host),
            Candidate.make(CandidateType.SRFLX, peer_srflx),
            Candidate.make(CandidateType.RELAY, peer_relay),
        ),
        Candidate.make(CandidateType.HOST, ("203.0.113.2", 5000)),
        bases=(checks.HOST, checks.RELAY),
    )
    assert len(alice.poll(0.0)) == 1
    assert alice.pairs[(checks.HOST, peer_host)].state == checks.PairState.IN_PROGRESS
    [(bobs_check, _, _)] = bob.poll(0.0)
    # Bob's check reaches alice from his relayed address: she answers, and queues a triggered
    # check on that (relayed) pair.
    answer = alice.handle(parse_message_untrusted(bobs_check), peer_relay, 0.01, checks.HOST)
    assert answer
    sent = [(dest, base) for _, dest, base in alice.poll(TA)]
    assert sent == [(peer_srflx, checks.HOST)]  # the direct pair first
    sent = [(dest, base) for _, dest, base in alice.poll(2 * TA)]
    assert sent == [(peer_relay, checks.HOST)]  # then the triggered relayed one


def test_a_check_from_the_peer_on_a_pair_in_progress_triggers_one_at_once() -> None:
    """RFC 8445 §7.3.1.4: our first check on the pair may have met the peer's NAT (or IPv6
    firewall) before the peer's own check opened it; the peer's check has just come through,
    so check again now rather than CHECK_RTO later."""
    peer = ("2001:db8:2::2", 6000)
    alice, bob = agents(
        (Candidate.make(CandidateType.HOST, peer),),
        Candidate.make(CandidateType.HOST, ("2001:db8:1::2", 5000)),
    )
    [(first, dest, _)] = alice.poll(0.0)  # lost at bob's firewall, say
    assert dest == peer and alice.pairs[(checks.HOST, peer)].state == checks.PairState.IN_PROGRESS
    [(bobs_check, _, _)] = bob.poll(0.0)
    sent = alice.handle(parse_message_untrusted(bobs_check), peer, TA, checks.HOST) or []
    # The answer, and the triggered check, both to bob (not the first one's retransmission).
    assert [d for _, d, _ in sent] == [peer, peer]
    assert parse_message_untrusted(sent[1][0]).transaction_id != (
        parse_message_untrusted(first).transaction_id
    )


def test_a_pair_answered_on_a_later_check_stays_succeeded_when_an_older_one_times_out() -> None:
    """The check sent at once beside one still out (RFC 8445 §7.3.1.4) may be answered while
    the first, lost at the peer's NAT, runs out its retransmissions: that is no failure. Bob
    (controlled, so no nomination of his own to muddle the pair's state) is the one."""
    alice_at, bob_at = ("203.0.113.1", 5000), ("198.51.100.7", 6000)
    alice, bob = agents(
        (Candidate.make(CandidateType.SRFLX, bob_at),),
        Candidate.make(CandidateType.SRFLX, alice_at),
    )
    bob.poll(0.0)  # lost at alice's NAT
    [(alices_check, _, _)] = alice.poll(0.0)
    sent = bob.handle(parse_message_untrusted(alices_check), alice_at, TA, checks.HOST) or []
    bobs_second = parse_message_untrusted(sent[1][0])  # beside the first, not instead of it
    answer = (alice.handle(bobs_second, bob_at, 0.1, checks.HOST) or [])[0][0]
    bob.handle(parse_message_untrusted(answer), alice_at, 0.12, checks.HOST)
    pair = bob.pairs[(checks.HOST, alice_at)]
    assert pair.state == checks.PairState.SUCCEEDED
    for t in range(1, 200):  # the first check's schedule runs out (CHECK_RC sends, then RM)
        bob.poll(0.1 * t)
    assert pair.state == checks.PairState.SUCCEEDED
