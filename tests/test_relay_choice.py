"""A caller offered several relays allocates on the nearest (voip/nat/relay_choice.py): a Binding
to each at once, the first to answer wins, the first offered if none does. Sans-IO, bytes in."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from rich.console import Console

from rendezvous.logic import RelayOffer
from rendezvous.logic import RendezvousLogic
from rendezvous.relay_fleet import RelayFleet
from tests.test_rendezvous import converse
from tests.test_report_schema import errors
from voip.call_recorder import CallRecorder
from voip.cli_output import Presenter
from voip.cli_output import relay_choice_line
from voip.events import RelayChosen as ChosenLine
from voip.nat import rendezvous_client
from voip.nat.relay_base import RelayBase
from voip.nat.relay_choice import CHOICE_WAIT
from voip.nat.relay_choice import MAX_OFFERED
from voip.nat.relay_choice import RelayChooser
from voip.nat.relay_choice import RelayChosen
from voip.nat.rendezvous_client import RendezvousClient
from voip.nat.signal_events import Registered
from voip.nat.signal_events import TurnOffer
from voip.wire.stun import Address
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import check_fingerprint
from voip.wire.stun import encode
from voip.wire.stun import encode_address
from voip.wire.stun import encode_xor_address
from voip.wire.stun import parse_message_untrusted
from voip.wire.stun import text
from voip.wire.turn import rest_password

R1: Address = ("203.0.113.20", 3478)
R2: Address = ("203.0.113.21", 3478)
R3: Address = ("198.51.100.20", 3478)
ME: Address = ("198.51.100.7", 40000)
SERVER: Address = ("203.0.113.10", 3478)
A: Address = ("203.0.113.5", 4000)


def answer(probe: bytes, cls: Class = Class.SUCCESS) -> bytes:
    """A relay's answer to `probe`, as a TURN server sends it: our address, and FINGERPRINT."""
    req = parse_message_untrusted(probe)
    mapped = (Attr.XOR_MAPPED_ADDRESS, encode_xor_address(ME, req.transaction_id))
    return encode(req.reply(cls, [mapped]), fingerprint=True)


def probes(out: list[tuple[bytes, Address]]) -> dict[Address, bytes]:
    """Each relay's probe in `out` (one each), checked to be a Binding with FINGERPRINT."""
    by_relay: dict[Address, bytes] = {}
    for data, dest in out:
        msg = parse_message_untrusted(data)
        assert (msg.method, msg.cls) == (Method.BINDING, Class.REQUEST)
        assert check_fingerprint(msg)
        assert dest not in by_relay
        by_relay[dest] = data
    return by_relay


def state(chooser: RelayChooser) -> tuple[Address | None, bool]:
    """(the relay chosen, whether the figures are final), read afresh each time."""
    return chooser.chosen, chooser.done


def allocating_on(relay: RelayBase) -> Address | None:
    return relay.turn.server if relay.turn is not None else None


def test_the_faster_relay_wins_and_every_round_trip_is_timed() -> None:
    chooser = RelayChooser((R1, R2, R3), now=10.0)
    assert chooser.next_deadline() == 10.0  # the probes leave on the next poll, stamped then
    sent = probes(chooser.poll(10.0))
    assert set(sent) == {R1, R2, R3}  # all at once
    assert chooser.handle_untrusted(answer(sent[R2]), R2, 10.004)
    assert state(chooser) == (R2, False)  # chosen at the first answer
    assert chooser.result() is None  # the others are still timed, for the report
    assert chooser.handle_untrusted(answer(sent[R1]), R1, 10.030)
    assert state(chooser) == (R2, False)
    assert chooser.handle_untrusted(answer(sent[R3]), R3, 10.090)
    assert state(chooser) == (R2, True) and chooser.next_deadline() is None
    result = chooser.result()
    assert result is not None and result.server == R2 and result.answered
    rtts = dict(result.rtts)
    assert [r for r, _ in result.rtts] == [R1, R2, R3]  # in the order offered
    assert rtts[R2] == pytest.approx(0.004)
    assert rtts[R1] == pytest.approx(0.030)
    assert rtts[R3] == pytest.approx(0.090)


def test_a_relay_that_never_answers_is_skipped_and_its_rtt_is_none() -> None:
    chooser = RelayChooser((R1, R2), now=0.0)
    sent = probes(chooser.poll(0.0))
    assert chooser.handle_untrusted(answer(sent[R2]), R2, 0.012)
    assert chooser.chosen == R2
    now, resent = 0.0, []
    while (due := chooser.next_deadline()) is not None:
        now = due
        resent += chooser.poll(now)
    assert {dest for _, dest in resent} == {R1}  # only the silent one is asked again
    assert now == pytest.approx(CHOICE_WAIT)
    result = chooser.result()
    assert result is not None and result.server == R2
    assert dict(result.rtts) == {R1: None, R2: pytest.approx(0.012)}


def test_with_no_answer_the_first_relay_is_used_after_a_bounded_wait() -> None:
    chooser = RelayChooser((R1, R2), now=5.0)
    sends: list[tuple[float, bytes, Address]] = []
    now = 5.0
    while (due := chooser.next_deadline()) is not None:
        assert due <= 5.0 + CHOICE_WAIT  # never longer than the wait
        now = due
        sends += [(now, data, dest) for data, dest in chooser.poll(now)]
    assert chooser.done and chooser.chosen == R1
    result = chooser.result()
    assert result == RelayChosen(R1, ((R1, None), (R2, None)))
    assert not result.answered
    times = sorted({t - 5.0 for t, _, _ in sends})
    assert times == pytest.approx([0.0, 0.1, 0.3, 0.7])  # retransmitted on a short schedule
    tids = [parse_message_untrusted(data).transaction_id for _, data, _ in sends]
    assert len(set(tids)) == len(tids) == 8  # each send its own ID: an answer says which it was
    # An answer after the wait changes nothing (still taken: the ID was ours).
    late = next(data for _, data, dest in sends if dest == R2)
    assert chooser.handle_untrusted(answer(late), R2, 7.0)
    assert chooser.result() == result


def test_a_retransmission_is_timed_from_its_own_send() -> None:
    chooser = RelayChooser((R1, R2), now=0.0)
    chooser.poll(0.0)  # both first probes are lost
    again = probes(chooser.poll(0.1))
    assert chooser.handle_untrusted(answer(again[R1]), R1, 0.105)
    assert dict(chooser.rtts)[R1] == pytest.approx(0.005)  # not 0.105


def test_forged_and_broken_answers_are_ignored_without_raising() -> None:
    chooser = RelayChooser((R1, R2), now=0.0)
    sent = probes(chooser.poll(0.0))
    other_id = bytearray(answer(sent[R1]))
    other_id[12] ^= 0xFF  # another transaction ID
    assert not chooser.handle_untrusted(bytes(other_id), R1, 0.001)
    # R1's transaction ID from R2's address (or anyone's): not R1's answer, nor R2's.
    assert chooser.handle_untrusted(answer(sent[R1]), R2, 0.001)
    assert chooser.handle_untrusted(answer(sent[R1]), ("192.0.2.66", 3478), 0.001)
    bad_crc = bytearray(answer(sent[R2]))
    bad_crc[-1] ^= 0x01  # FINGERPRINT wrong
    assert chooser.handle_untrusted(bytes(bad_crc), R2, 0.001)
    assert chooser.forged == 3 and state(chooser) == (None, False) and chooser.rtts == {}
    for garbage in (b"", b"\x00" * 19, b"\x01\x01\x00\x04" + sent[R1][4:20], sent[R1][:-3]):
        assert not chooser.handle_untrusted(garbage, R1, 0.001)
    assert not chooser.handle_untrusted(sent[R1], R1, 0.001)  # our own request, reflected
    error = answer(sent[R1], Class.ERROR)  # an error answer: its, but no round trip to count
    assert chooser.handle_untrusted(error, R1, 0.001) and state(chooser) == (None, False)
    # The real answers still count, from the right relay.
    assert chooser.handle_untrusted(answer(sent[R2]), R2, 0.002)
    assert state(chooser) == (R2, False) and chooser.rtts == {R2: pytest.approx(0.002)}


def test_one_relay_is_no_choice_and_sends_no_probe() -> None:
    chooser = RelayChooser((R1, R1), now=0.0)  # a duplicate is one relay
    assert chooser.relays == (R1,)
    assert chooser.chosen == R1 and chooser.done
    assert chooser.next_deadline() is None and chooser.poll(0.0) == []
    offer = TurnOffer(R1, "1700000000:alice", "pw")
    relay = RelayBase(offer, None, off=False)
    out = relay.gather(offer, 0.0)
    [(data, dest)] = out  # the Allocate, at once, as before there were fleets
    assert dest == R1 and parse_message_untrusted(data).method == Method.ALLOCATE
    assert relay.choice is None and relay.poll_choice(0.0) == [] and relay.pop_chosen() is None


def test_the_relay_base_allocates_on_the_one_chosen_with_the_shared_credentials() -> None:
    offer = TurnOffer(R1, "1700000000:alice", "pw", also=(R2,))
    relay = RelayBase(None, None, off=False)
    assert relay.gather(offer, 0.0) == []  # nothing yet: the probes leave on the next poll
    assert allocating_on(relay) is None and relay.gather_deadline is not None
    assert relay.next_deadline() == 0.0
    sent = probes(relay.poll_choice(0.0))
    assert relay.chosen(parse_message_untrusted(answer(sent[R1])), R2, 0.001) == []  # forged
    assert allocating_on(relay) is None
    reply = parse_message_untrusted(answer(sent[R2]))
    [(data, dest)] = relay.chosen(reply, R2, 0.003) or []
    assert dest == R2 and parse_message_untrusted(data).method == Method.ALLOCATE
    assert allocating_on(relay) == R2 and relay.turn is not None
    assert (relay.turn.username, relay.turn.password) == (offer.username, offer.password)
    assert relay.offer == offer.on(R2) and relay.offer.also == ()  # a move allocates on R2
    unrelated = Message(Method.BINDING, Class.SUCCESS)
    assert relay.chosen(unrelated, R2, 0.004) is None  # not the choice's: for the others
    assert relay.pop_chosen() is None  # R1 is still timed
    relay.chosen(parse_message_untrusted(answer(sent[R1])), R1, 0.020)
    chosen = relay.pop_chosen()
    assert chosen is not None and chosen.server == R2
    assert dict(chosen.rtts) == {R1: pytest.approx(0.020), R2: pytest.approx(0.003)}
    assert relay.pop_chosen() is None  # told once


def test_the_relay_base_falls_back_to_the_first_and_without_udp_does_not_probe() -> None:
    offer = TurnOffer(R1, "u", "p", also=(R2, R3))
    relay = RelayBase(None, None, off=False)
    relay.gather(offer, 0.0)
    out: list[tuple[bytes, Address]] = []
    while allocating_on(relay) is None:
        due = relay.next_deadline()
        assert due is not None and due <= CHOICE_WAIT
        out = relay.poll_choice(due)
    [(data, dest)] = out
    assert dest == R1 and parse_message_untrusted(data).method == Method.ALLOCATE
    chosen = relay.pop_chosen()
    assert chosen is not None and not chosen.answered and chosen.server == R1
    blocked = RelayBase(None, None, off=False)
    [(data, dest)] = blocked.gather(offer, 0.0, probe=False)
    assert dest == R1 and parse_message_untrusted(data).method == Method.ALLOCATE
    assert blocked.pop_chosen() is None


def test_a_register_answer_offering_a_fleet_gives_every_relay_and_the_credentials() -> None:
    fleet = RelayFleet((R1, R2, R3))
    logic = RendezvousLogic(relay=RelayOffer(R1, "secret", fleet=fleet), wallclock=1.7e9)
    client = RendezvousClient("alice", "bob", SERVER, ())
    converse(logic, {A: client}, [(A, d) for d, _ in client.start(0.0)], 0.0)
    [registered] = [e for e in client.pop_events() if isinstance(e, Registered)]
    offer = registered.turn
    assert offer is not None
    assert offer.servers == (R1, R2, R3) and offer.server == R1
    assert offer.password == rest_password("secret", offer.username)


def test_an_offer_keeps_at_most_eight_relays_and_skips_what_it_cannot_read() -> None:
    relays = [("203.0.113.30", 3478 + i) for i in range(MAX_OFFERED + 3)]
    attrs = [
        (Attr.XOR_MAPPED_ADDRESS, b""),  # replaced below, once the ID is known
        (Attr.CP_TURN_SERVER, b"\x00\x07\x0d\x96\x01"),  # no family we know
        (Attr.CP_TURN_SERVER, encode_address(relays[0])),  # offered twice: one relay
        *((Attr.CP_TURN_SERVER, encode_address(r)) for r in relays),
        (Attr.CP_TURN_USERNAME, text("1700000000:alice")),
        (Attr.CP_TURN_PASSWORD, text("pw")),
    ]
    msg = Message(Method.CP_REGISTER, Class.SUCCESS, attributes=tuple(attrs))
    attrs[0] = (Attr.XOR_MAPPED_ADDRESS, encode_xor_address(A, msg.transaction_id))
    msg = parse_message_untrusted(encode(replace(msg, attributes=tuple(attrs))))
    mapped, _, _, offer, _ = rendezvous_client._answer_untrusted(msg, over_stream=False)
    assert mapped == A and offer is not None
    # The first MAX_OFFERED attributes: one unreadable, one a repeat, six relays.
    assert offer.servers == tuple(relays[: MAX_OFFERED - 2])
    only = [a for a in attrs if a[0] != Attr.CP_TURN_SERVER]
    only.insert(1, (Attr.CP_TURN_SERVER, encode_address(R1)))
    msg = parse_message_untrusted(encode(replace(msg, attributes=tuple(only))))
    offer = rendezvous_client._answer_untrusted(msg, over_stream=False)[3]
    assert offer == TurnOffer(R1, "1700000000:alice", "pw")  # one relay: as it always was


def test_the_report_and_the_progress_line_show_each_relays_rtt() -> None:
    event = RelayChosen(
        ("127.0.0.1", 40001), ((("127.0.0.1", 40002), 0.0148), (("127.0.0.1", 40001), 0.0003))
    )
    recorder = CallRecorder("alice", "bob")
    line = recorder.measured(event, None, lambda pair: "")
    assert line == ChosenLine(event.server, event.rtts)
    report = json.loads(json.dumps(recorder.build(None, None).to_dict()))
    assert report["paths"]["relay"]["choice"] == [
        {"server": "127.0.0.1:40002", "rtt_ms": 14.8, "chosen": False},
        {"server": "127.0.0.1:40001", "rtt_ms": 0.3, "chosen": True},
    ]
    assert errors(report) == []  # the schema takes it (a path object may have more keys)
    assert "choice" not in CallRecorder("a", "b").build(None, None).to_dict()["paths"]["relay"]
    assert relay_choice_line(line) == (
        "nearest relay: 127.0.0.1:40001 (0.3 ms; 127.0.0.1:40002 14.8 ms)"
    )
    silent = ChosenLine(
        ("127.0.0.1", 40001), ((("127.0.0.1", 40001), None), (("127.0.0.1", 40002), None))
    )
    assert relay_choice_line(silent) == (
        "no relay answered (127.0.0.1:40001, 127.0.0.1:40002): using the first offered, "
        "127.0.0.1:40001"
    )
    console = Console(record=True, width=200)
    Presenter(console)(line)
    assert "nearest relay: 127.0.0.1:40001 (0.3 ms;" in console.export_text()


def test_mutated_answers_never_raise() -> None:
    rng = random.Random(17)
    chooser = RelayChooser((R1, R2), now=0.0)
    sent = probes(chooser.poll(0.0))
    good = answer(sent[R1])
    for _ in range(2000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = rng.choice((len(data), rng.randrange(len(data) + 1)))
        chooser.handle_untrusted(bytes(data[:cut]), rng.choice((R1, R2)), 0.001)
    assert chooser.chosen in (None, R1)  # only R1's own answer, from R1, could have counted
