"""Client transactions: RFC 8489 §6.2.1 retransmission schedule, in caller-supplied time."""

from __future__ import annotations

import itertools

import pytest

from voip.nat import checks
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import parse_message_untrusted
from voip.wire.transactions import Transaction
from voip.wire.transactions import TransactionTable


def schedule(txn: Transaction[None]) -> tuple[list[float], float]:
    table: TransactionTable[None] = TransactionTable()
    table.start(0.0, txn)
    sends = [0.0]
    while (deadline := table.next_deadline()) is not None:
        resend, failed = table.poll(deadline)
        if failed:
            return sends, deadline
        sends += [deadline] * len(resend)
    raise AssertionError("never failed")


def test_default_schedule_is_rfc8489() -> None:
    # §6.2.1: with RTO 500 ms and Rc 7, sends at 0, 500, 1500, 3500, 7500, 15500, 31500 ms,
    # and failure 16 RTOs (8 s) after the last: 39.5 s.
    sends, failed_at = schedule(Transaction(b"t" * 12, b"x", ("203.0.113.1", 3478), None))
    assert sends == pytest.approx([0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5])
    assert failed_at == pytest.approx(39.5)


def test_response_ends_the_transaction_and_strays_are_ignored() -> None:
    table: TransactionTable[str] = TransactionTable()
    req = Message(Method.BINDING, Class.REQUEST)
    table.start(0.0, Transaction(req.transaction_id, b"x", ("203.0.113.1", 3478), "ctx"))
    assert table.match(Message(Method.BINDING, Class.SUCCESS)) is None  # someone else's
    txn = table.match(req.reply(Class.SUCCESS))
    assert txn is not None and txn.context == "ctx"
    assert table.next_deadline() is None and len(table) == 0


def test_new_checks_are_paced_ta_apart() -> None:
    cands = tuple(
        Candidate.make(CandidateType.HOST, (f"198.51.100.{i}", 4000), 65535 - i)
        for i in range(1, 5)
    )
    agent = checks.ConnectivityChecks("l", "l" * 22, "r", "r" * 22, True, cands, now=0.0)
    first_send: dict[tuple[str, int], float] = {}
    now = 0.0
    while now < 0.5:
        for data, dest, _base in agent.poll(now):
            msg = parse_message_untrusted(data)
            assert msg.method == Method.BINDING and msg.cls == Class.REQUEST
            first_send.setdefault(dest, now)
        now = agent.next_deadline() or now + 0.01
    times = sorted(first_send.values())
    assert len(times) == 4
    # One new check per Ta (RFC 8445 §14.2), highest priority first.
    assert [round(b - a, 3) for a, b in itertools.pairwise(times)] == [0.05] * 3
    assert min(first_send, key=first_send.__getitem__) == ("198.51.100.1", 4000)


def test_deadlines_give_the_earliest_and_forget_what_was_replaced() -> None:
    from voip.wire.deadlines import Deadlines

    d: Deadlines[str] = Deadlines()
    d.set("a", 5.0)
    d.set("b", 3.0)
    d.set("b", 7.0)  # moved later: its old 3.0 must not come up
    assert d.next() == 5.0
    d.discard("a")
    assert d.next() == 7.0
    d.set("c", 1.0)
    assert d.due(6.0) == ["c"] and d.due(7.0) == ["b"] and d.next() is None
    for i in range(10_000):  # one key refreshed in a loop: the heap stays small
        d.set("x", float(i))
    assert len(d) == 1 and len(d._heap) <= 2 * len(d) + 64 and d.next() == 9999.0
