"""Fuzzing with a small budget: bench/fuzz.py's targets, a few thousand inputs each.

Every parser of untrusted bytes is fed its real seeds and mutations of them, and nothing but its
own error type may escape; the whole-datagram entry points may raise nothing. `make fuzz` runs
the same targets with a budget of a million inputs each.
"""

from __future__ import annotations

import random

import pytest

from bench.fuzz import TARGETS
from bench.fuzz import Mutator
from bench.fuzz import Spec
from bench.fuzz import Target
from bench.fuzz import main
from bench.fuzz import run_target
from bench.fuzz import turn_scenario
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.stun import encode
from voip.wire.stun import parse_message_untrusted
from voip.wire.stun import u32

BUDGET = 2_000
SEED = 1


@pytest.mark.parametrize("name", TARGETS)
def test_only_the_parsers_own_errors_escape(name: str) -> None:
    result = run_target(TARGETS[name], BUDGET, SEED)
    assert result.inputs == BUDGET
    assert not result.escapes, result.describe_escapes()
    assert len(result.outcomes) > 1, result.outcomes  # the inputs got somewhere


def test_the_seeds_are_real_packets_and_get_past_the_checks() -> None:
    """Seeds come from the project's own encoders: the STUN ones parse, carry a good
    FINGERPRINT and MESSAGE-INTEGRITY under keys the target knows; SRTP ones decrypt; each
    Noise message is read by the state that expects it."""
    stun = TARGETS["stun"].build()
    outcomes = {stun.feed(seed) for seed in stun.seeds}
    assert "parsed authentic fingerprinted" in outcomes
    assert all(o.startswith("parsed") for o in outcomes), outcomes
    srtp = TARGETS["srtp"].build()
    assert [srtp.feed(s) for s in srtp.seeds] == ["plain"] * len(srtp.seeds)
    for n in (1, 2, 3):
        noise = TARGETS[f"noise_msg{n}"].build()
        assert noise.feed(noise.seeds[0]).startswith("read"), n


def test_mutations_are_reproducible_from_the_seed() -> None:
    built = TARGETS["stun"].build()

    def draw(seed: int) -> list[bytes]:
        mutator = Mutator(built, random.Random(seed))
        return [mutator() for _ in range(200)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)
    inputs = draw(7)
    assert len(set(inputs)) > 150  # mutations, not the seeds again
    structured = [i for i in inputs if i not in built.seeds]
    assert any(parse_ok(i) for i in structured)  # and many still parse: they go deep


def parse_ok(data: bytes) -> bool:
    try:
        parse_message_untrusted(data)
    except StunError:
        return False
    return True


def _fussy() -> Target:
    """A parser with a bug: an IndexError for any input that starts with 0xFF."""

    def feed(data: bytes) -> str:
        if data[:1] == b"\xff":
            raise IndexError("off the end")
        if not data:
            raise ValueError("empty")  # its own error type
        return "read"

    return Target([b"\x00abc", b"\xffabc"], feed, (ValueError,))


def test_an_escape_is_reported_with_a_reproducer_and_fails_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = Spec("fussy", "raises IndexError on 0xFF", _fussy)
    result = run_target(spec, 500, SEED)
    [escape] = result.escapes.values()
    assert escape.kind == "IndexError: off the end" and "in feed" in escape.where
    assert escape.reproducer[:1] == b"\xff" and escape.count == result.escaped >= 1
    assert result.outcomes["read"] > 0  # the rest ran on
    monkeypatch.setitem(TARGETS, "fussy", spec)
    assert main(["--inputs", "300", "--only", "fussy"]) == 1
    out = capsys.readouterr().out
    assert "ESCAPE in fussy: IndexError" in out and "--replay ff" in out
    assert main(["--only", "fussy", "--replay", "00"]) == 0
    assert main(["--only", "fussy", "--replay", "ff00"]) == 1
    assert main(["--inputs", "300", "--only", "rtp"]) == 0


@pytest.mark.parametrize(
    ("method", "cls", "attrs"),
    [
        (Method.REFRESH, Class.SUCCESS, ((Attr.LIFETIME, bytes(8)),)),
        (
            Method.CREATE_PERMISSION,
            Class.ERROR,
            ((Attr.ERROR_CODE, bytes((0, 0, 4, 38))), (Attr.NONCE, b"\xff\xfe")),
        ),
    ],
    ids=["refresh-lifetime-of-8-bytes", "438-nonce-not-utf8"],
)
def test_turn_client_survives_a_malformed_answer_to_its_request(
    method: int, cls: Class, attrs: tuple[tuple[int, bytes], ...]
) -> None:
    """Found by bench/fuzz.py. Anyone on the path sees the transaction ID; an answer with an
    8-byte LIFETIME or a NONCE that is not UTF-8 must be dropped, and the transaction kept for
    the real answer (it used to raise out of CallCore.handle and lose the refresh)."""
    turn = turn_scenario()
    alice = turn.clients[0]  # allocated, its last requests unanswered
    sent = [parse_message_untrusted(d) for d in turn.to_server if d[0] < 4]
    tid = [m for m in sent if m.method == method and m.cls == Class.REQUEST][-1].transaction_id
    forged = encode(Message(method, cls, tid, attrs), fingerprint=True)
    assert alice.handle(parse_message_untrusted(forged), alice.server, turn.now) == []
    genuine = Message(method, Class.SUCCESS, tid, ((Attr.LIFETIME, u32(600)),))
    assert alice.handle(genuine, alice.server, turn.now) is not None  # still awaited
