"""Direct through NATs that map per destination: port prediction and birthday punching (no root).

The sans-IO pieces (the prober's bounds, the opener's sockets, the predicted ports) are tested
alone; then whole calls run through netsim's NATs with the rendezvous's RFC 5780 alternate
address, so each side learns its NAT's mapping at registration as a real caller does.
"""

from __future__ import annotations

import json
import random

import pytest

from rendezvous.behaviour import Addresses
from tests.netsim import Nat
from tests.netsim import Network
from tests.netsim_caller import SERVER
from tests.netsim_caller import Caller
from tests.test_failover import A_PUBLIC
from tests.test_failover import B_PUBLIC
from tests.test_failover import ServerHost
from tests.test_punching import AlternateNode
from tests.test_report_schema import errors
from voip.call_core import CallOptions
from voip.nat import birthday
from voip.nat.birthday import MAX_PROBES
from voip.nat.birthday import PROBE_BATCH
from voip.nat.birthday import PROBE_DELAY
from voip.nat.birthday import PROBE_INTERVAL
from voip.nat.birthday import SOCKETS
from voip.nat.birthday import Opener
from voip.nat.birthday import Prober
from voip.nat.checklist import Checklist
from voip.nat.mapping_probe import PREDICTED
from voip.nat.mapping_probe import MappingProbe
from voip.nat.nominator import Nominator
from voip.nat.pairs import Base
from voip.nat.pairs import RelayMode
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.signal import MAPPING_DEPENDENT
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import encode
from voip.wire.stun import encode_xor_address
from voip.wire.stun import parse_message_untrusted

HARD_IP = "198.51.100.200"
ALTERNATE = ("203.0.113.11", 3479)


# -- the easy side's probes -----------------------------------------------------------------
def test_the_prober_stays_within_its_rate_and_its_total_and_on_the_peers_ip() -> None:
    prober = Prober(HARD_IP, {40000, 40001}, now=0.0)
    assert prober.poll(0.0, lambda dest: b"x") == []  # the hard side opens its ports first
    t, sent, times = PROBE_DELAY, [], []
    while (due := prober.next_deadline()) is not None:
        assert due >= t - 1e-9
        t = due
        batch = prober.poll(t, lambda dest: b"check to %d" % dest[1])
        assert 0 < len(batch) <= PROBE_BATCH
        sent += batch
        times.append(t)
    ports = [dest[1] for _, dest in sent]
    assert len(ports) == MAX_PROBES == len(set(ports))  # the total, never a port twice
    assert {dest[0] for _, dest in sent} == {HARD_IP}  # only the IP the rendezvous gave
    assert not {40000, 40001} & set(ports)  # those are checked as candidates anyway
    assert all(1024 <= p <= 65535 for p in ports)
    rate = len(ports) / (times[-1] - times[0] + PROBE_INTERVAL)
    assert rate <= PROBE_BATCH / PROBE_INTERVAL + 1e-6  # 500 a second at most
    assert sent[0][0] == b"check to %d" % ports[0]  # each probe made for its own destination


def test_the_prober_stops_when_a_probed_port_answers_and_only_then() -> None:
    prober = Prober(HARD_IP, set(), now=0.0)
    batch = prober.poll(PROBE_DELAY, lambda dest: b"x")
    hit = batch[3][1]
    assert not prober.heard(("203.0.113.9", hit[1]), 0.3)  # another IP
    assert not prober.heard((HARD_IP, 1), 0.3)  # a port never probed
    assert prober.heard(hit, 0.5)
    assert prober.next_deadline() is None and prober.poll(1.0, lambda d: b"x") == []
    assert prober.describe() == f"birthday, {PROBE_BATCH} probes, 0.5 s"


# -- the hard side's sockets -----------------------------------------------------------------
def test_the_opener_sends_one_indication_per_socket_adopts_the_first_and_gives_up() -> None:
    peer = ("203.0.113.100", 40000)
    opener = Opener(peer, now=0.0)
    assert opener.open == tuple(range(SOCKETS))
    sends = opener.poll(0.0)
    assert [s.index for s in sends] == list(range(SOCKETS)) and {s.dest for s in sends} == {peer}
    indication = parse_message_untrusted(sends[0].data)
    assert (indication.method, indication.cls) == (Method.BINDING, Class.INDICATION)
    assert opener.poll(0.5) == []  # once
    assert opener.adopt(17, 1.2) and opener.open == (17,)
    assert not opener.adopt(18, 1.3) and opener.adopt(17, 1.4)  # the winner stays the winner
    assert opener.describe() == f"birthday, {SOCKETS} ports opened, 1.2 s"
    lonely = Opener(peer, now=0.0)
    lonely.poll(0.0)
    lonely.poll(birthday.GIVE_UP)
    assert lonely.open == () and lonely.next_deadline() is None
    assert not lonely.adopt(3, birthday.GIVE_UP + 1)  # too late: every socket is closed


# -- port prediction --------------------------------------------------------------------------
def binding_answer(probe: MappingProbe, mapped: tuple[str, int]) -> Message:
    request = parse_message_untrusted(probe.start(0.0)[0][0])
    value = encode_xor_address(mapped, request.transaction_id)
    return Message(
        Method.BINDING,
        Class.SUCCESS,
        transaction_id=request.transaction_id,
        attributes=((0x0020, value),),
    )


@pytest.mark.parametrize(
    ("alternate_port", "predicted"),
    [(40001, [40002, 40003]), (40004, [40008, 40012]), (40000, []), (51234, []), (39999, [])],
)
def test_the_registration_probe_predicts_ports_only_for_a_nat_that_maps_in_sequence(
    alternate_port: int, predicted: list[int]
) -> None:
    probe = MappingProbe(("198.51.100.200", 40000), SERVER, ALTERNATE)
    assert probe.handle(binding_answer(probe, ("198.51.100.200", alternate_port)), ALTERNATE)
    cands = probe.predicted()
    assert [c.address[1] for c in cands[:2]] == predicted
    if predicted:
        assert len(cands) == PREDICTED and probe.result == MAPPING_DEPENDENT
        assert {c.kind for c in cands} == {CandidateType.PREDICTED}
        assert [c.priority for c in cands] == sorted((c.priority for c in cands), reverse=True)


def test_checks_to_the_peers_predicted_ports_go_first_and_in_order() -> None:
    host = Candidate.make(CandidateType.HOST, ("198.18.2.2", 6000))
    srflx = Candidate.make(CandidateType.SRFLX, (HARD_IP, 40000))
    predicted = [
        Candidate.make(CandidateType.PREDICTED, (HARD_IP, 40001 + i), 65535 - i) for i in range(3)
    ]
    checklist = Checklist(Nominator(RelayMode.AUTO, False), controlling=True, now=0.0)
    checklist.form([host, srflx, *reversed(predicted)], [Base.HOST])
    order = []
    while (pair := checklist.next(None)) is not None:
        pair.state = pair.state.__class__.IN_PROGRESS
        order.append(pair.remote)
    assert order == [*predicted, host, srflx]


# -- whole calls through netsim's NATs ------------------------------------------------------
def hard_call(
    nat_a: str, nat_b: str, duration: float = 6.0, seed: int = 1
) -> tuple[Network, Caller, Caller]:
    """Alice behind `nat_a`, bob behind `nat_b`, 5 ms one way on every link; the rendezvous
    has its alternate address, so each learns its NAT's mapping at registration. `seed`: the
    easy side's choice of ports to probe."""
    net = Network(lambda s, d: 0.005)
    server = ServerHost(net)
    server.node.logic.addresses = Addresses(SERVER, ALTERNATE)
    alt_local = (ALTERNATE[0], SERVER[1])
    net.attach(alt_local, AlternateNode(server.node.logic, alt_local))
    net.attach(SERVER, server)
    a_addr, b_addr = ("198.18.1.2", 5000), ("198.18.2.2", 6000)
    options = CallOptions(port_mapping=False)
    alice = Caller("alice", "bob", a_addr, options, net)
    bob = Caller("bob", "alice", b_addr, options, net)
    net.attach(a_addr, alice, net.add_nat(Nat(A_PUBLIC, nat_a)))
    net.attach(b_addr, bob, net.add_nat(Nat(B_PUBLIC, nat_b)))
    alice.core.connector.hard.rng = random.Random(seed)
    bob.core.connector.hard.rng = random.Random(seed + 1)
    net.send(a_addr, alice.core.start(0.0))
    net.run(0.3)
    net.send(b_addr, bob.core.start(net.now))
    net.run(duration)
    return net, alice, bob


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cone_against_symmetric_starts_on_the_relay_and_goes_direct_by_birthday_punching(
    seed: int,
) -> None:
    net, easy, hard = hard_call("cone", "symmetric", seed=seed)
    assert easy.core.connected and hard.core.connected
    e, h = easy.core.report(), hard.core.report()
    assert e.path == h.path == "direct", (e.to_dict(), h.to_dict())
    # The audio began on the relay, and moved once: the controlling side when the guess
    # landed, the other following (a guess that lands before the relay is chosen goes
    # direct at once, and neither moves).
    switched = [(s.path, s.why) for s in easy.switches() + hard.switches()]
    assert switched in (
        [],
        [("direct", "the direct path was found"), ("direct", "the peer moved to it")],
        [("direct", "the peer moved to it"), ("direct", "the direct path was found")],
    )
    assert e.relay.available and h.relay.available  # the relay stays the standby
    assert e.setup_ms is not None and e.direct_ms is not None
    assert (e.direct_ms > e.setup_ms) is bool(switched)  # moved from the relay: later
    for report in (e, h):  # what the report says is what its contract allows
        assert errors(json.loads(json.dumps(report.to_dict()))) == []
    assert e.direct.found_by is not None and e.direct.found_by.startswith("birthday, ")
    probes = int(e.direct.found_by.split(", ")[1].split()[0])
    assert 0 < probes <= MAX_PROBES
    assert h.direct.found_by is not None
    assert h.direct.found_by.startswith(f"birthday, {SOCKETS} ports opened")
    assert e.direct.remote is not None and e.direct.remote.startswith(f"{B_PUBLIC}:")
    # Bounded: every extra socket but the winner closed, no probe after the hit.
    assert hard.side_opened == SOCKETS and len(hard.side) == 1
    prober = easy.core.connector.hard.prober
    assert prober is not None and prober.next_deadline() is None and prober.sent == probes
    to_hard_ip = [d for t, s, d, _ in net.sent if s[0] == A_PUBLIC and d[0] == B_PUBLIC]
    assert len({d[1] for d in to_hard_ip}) <= probes + 8  # probes, and the candidates given
    # The audio goes on there, both ways.
    frames = easy.sink.frames, hard.sink.frames
    net.run(net.now + 1.0)
    assert easy.sink.frames - frames[0] >= 45 and hard.sink.frames - frames[1] >= 45


@pytest.mark.parametrize(
    ("nat_a", "nat_b"), [("symmetric-sequential", "cone"), ("symmetric-sequential",) * 2]
)
def test_a_nat_that_maps_in_sequence_goes_direct_at_the_predicted_port(
    nat_a: str, nat_b: str
) -> None:
    _, alice, bob = hard_call(nat_a, nat_b, duration=3.0)
    a, b = alice.core.report(), bob.core.report()
    assert a.path == b.path == "direct", (a.to_dict(), b.to_dict())
    assert b.direct.found_by == "the peer's predicted port"
    assert a.direct.found_by == (
        "our predicted port" if nat_b == "cone" else "the peer's predicted port"
    )
    assert alice.side_opened == bob.side_opened == 0  # no birthday sockets for a predictable NAT


def test_two_random_symmetric_nats_stay_relayed_quickly_and_open_no_extra_sockets() -> None:
    _, alice, bob = hard_call("symmetric", "symmetric", duration=3.0)
    a = alice.core.report()
    assert a.path == bob.core.report().path == "relay"
    assert alice.core.connector.punch_hopeless
    assert a.setup_ms is not None and a.setup_ms < 1000
    assert alice.side_opened == bob.side_opened == 0
    assert alice.core.connector.hard.prober is None and bob.core.connector.hard.prober is None


def test_a_random_symmetric_nat_against_a_sequential_one_is_relayed_at_once() -> None:
    """Only one side can predict: the random side's NAT never lets the other's checks in, so
    the relay is used as soon as it answers, not after waiting for punching."""
    _, alice, bob = hard_call("symmetric", "symmetric-sequential", duration=3.0)
    a = alice.core.report()
    assert a.path == bob.core.report().path == "relay"
    assert alice.core.connector.punch_hopeless and bob.core.connector.punch_hopeless
    assert a.setup_ms is not None and a.setup_ms < 1000


def test_garbage_on_an_extra_socket_is_counted_and_dropped() -> None:
    """A stranger's bytes on one of the hard side's extra sockets: a malformed STUN message
    and a check whose USERNAME is not UTF-8 are counted with the call socket's garbage and
    raise nothing; the path found stays."""
    net, _, hard = hard_call("cone", "symmetric", duration=3.0)
    connector = hard.core.connector
    opener = connector.hard.opener
    assert opener is not None and opener.winner is not None
    other = (opener.winner + 1) % SOCKETS
    bad_name = encode(
        Message(Method.BINDING, Class.REQUEST, attributes=((Attr.USERNAME, b"\xff\xfe"),))
    )
    before = connector.malformed
    for data in (bad_name, bad_name[:24], b"\x00\x01\x00\x04" + bytes(16)):
        assert hard.core.handle(data, ("203.0.113.9", 4000), net.now, side=other) == []
    assert connector.malformed == before + 3
    assert opener.winner is not None and hard.core.report().path == "direct"
