"""A fleet of relays offered by the rendezvous (--turn-url given more than once): all sharing
one REST secret, probed with Binding, those that stop answering left out of the offer."""

from __future__ import annotations

from rendezvous.logic import RelayOffer
from rendezvous.logic import RendezvousLogic
from rendezvous.node import RendezvousNode
from rendezvous.relay_fleet import DOWN_AFTER
from rendezvous.relay_fleet import PROBE_EVERY
from rendezvous.relay_fleet import RelayFleet
from tests.test_rendezvous import converse
from voip.nat.rendezvous_client import RendezvousClient
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Method
from voip.wire.stun import decode_address
from voip.wire.stun import encode
from voip.wire.stun import parse_message_untrusted
from voip.wire.turn import rest_password

Addr = tuple[str, int]
R1: Addr = ("203.0.113.20", 3478)
R2: Addr = ("203.0.113.21", 3478)
R3: Addr = ("198.51.100.20", 3478)
SERVER: Addr = ("203.0.113.10", 3478)
A: Addr = ("203.0.113.5", 4000)


def answer_probes(fleet: RelayFleet, now: float, alive: set[Addr]) -> None:
    for out in fleet.poll(now):
        msg = parse_message_untrusted(out.data)
        assert (msg.method, msg.cls) == (Method.BINDING, Class.REQUEST)
        if out.dest in alive:
            fleet.answered(parse_message_untrusted(encode(msg.reply(Class.SUCCESS))))


def test_a_relay_that_stops_answering_leaves_the_offer_and_comes_back() -> None:
    fleet = RelayFleet((R1, R2, R3))
    now = 0.0
    answer_probes(fleet, now, {R1, R2, R3})
    assert fleet.up() == [R1, R2, R3]
    for _ in range(DOWN_AFTER + 1):  # R2 goes quiet
        now += PROBE_EVERY
        answer_probes(fleet, now, {R1, R3})
    assert fleet.up() == [R1, R3] and fleet.stats["relay_down"] == 1
    now += PROBE_EVERY
    answer_probes(fleet, now, {R1, R2, R3})
    assert fleet.up() == [R1, R2, R3] and fleet.stats["relay_back"] == 1
    assert fleet.poll(now + 1.0) == []  # one round per PROBE_EVERY


def test_with_no_relay_answering_all_are_offered() -> None:
    fleet = RelayFleet((R1, R2))
    for i in range(DOWN_AFTER + 2):
        answer_probes(fleet, i * PROBE_EVERY, set())
    assert fleet.up() == [R1, R2]


def test_an_answer_to_no_probe_of_ours_changes_nothing() -> None:
    fleet = RelayFleet((R1, R2))
    fleet.poll(0.0)
    for i in range(1, DOWN_AFTER + 1):
        fleet.poll(i * PROBE_EVERY)
    assert fleet.up() == [R1, R2]  # none answers: all offered, but both are down
    forged = encode(parse_message_untrusted(fleet.poll(99.0)[0].data).reply(Class.SUCCESS))
    other = bytearray(forged)
    other[10] ^= 0xFF  # another transaction ID
    assert not fleet.answered(parse_message_untrusted(bytes(other)))
    assert fleet.answered(parse_message_untrusted(forged))  # R1's probe
    assert fleet.up() == [R1]


def test_callers_are_offered_every_live_relay_with_credentials_good_on_all() -> None:
    fleet = RelayFleet((R1, R2, R3))
    logic = RendezvousLogic(relay=RelayOffer(R1, "secret", fleet=fleet), wallclock=1.7e9)
    node = RendezvousNode(logic, None, SERVER)
    for out in node.poll(0.0):  # the node probes them, and hears the answers itself
        if out.dest != R3:
            answer = encode(parse_message_untrusted(out.data).reply(Class.SUCCESS))
            assert node.handle(answer, out.dest, SERVER, 0.1) == []
    for i in range(1, DOWN_AFTER + 1):
        for out in node.poll(i * PROBE_EVERY):
            if out.dest != R3:
                node.handle(
                    encode(parse_message_untrusted(out.data).reply(Class.SUCCESS)),
                    out.dest,
                    SERVER,
                    0.1,
                )
    client = RendezvousClient("alice", "bob", SERVER, ())
    seen = converse(logic, {A: client}, [(A, d) for d, _ in client.start(20.0)], 20.0)
    [served] = [m for _, m in seen if m.cls == Class.SUCCESS and m.method == Method.CP_REGISTER]
    relays = [decode_address(v) for t, v in served.attributes if t == Attr.CP_TURN_SERVER]
    assert relays == [R1, R2]  # R3 stopped answering
    username = served.text(Attr.CP_TURN_USERNAME)
    assert username is not None
    assert served.text(Attr.CP_TURN_PASSWORD) == rest_password("secret", username)
