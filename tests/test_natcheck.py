"""NAT behaviour discovery: the RFC 5780 server answers, the classification, the command."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rendezvous.behaviour import CHANGE_IP, CHANGE_PORT, Addresses, answer_binding, change_request
from voip.nat.natcheck import ADM, APDM, EIM, NatTests, classify
from voip.wire.stun import Attr, Class, Message, Method, encode, parse_message_untrusted

P1, P2 = ("203.0.113.10", 3478), ("203.0.113.11", 3479)
CLIENT = ("198.51.100.5", 40000)
ADDRS = Addresses(P1, P2)


def ask(
    flags: int, local: tuple[str, int] = P1, addrs: Addresses = ADDRS
) -> tuple[Message, object]:
    attrs = ((Attr.CHANGE_REQUEST, change_request(flags)),) if flags else ()
    req = parse_message_untrusted(encode(Message(Method.BINDING, Class.REQUEST, attributes=attrs)))
    [out] = answer_binding(req, CLIENT, local, addrs, "test")
    return parse_message_untrusted(out.data), out.via


@pytest.mark.parametrize(
    ("flags", "origin"),
    [
        (0, P1),
        (CHANGE_PORT, (P1[0], P2[1])),
        (CHANGE_IP, (P2[0], P1[1])),
        (CHANGE_IP | CHANGE_PORT, P2),
    ],
)
def test_answers_come_from_the_address_asked_for(flags: int, origin: tuple[str, int]) -> None:
    reply, via = ask(flags)
    assert via == origin
    assert reply.address(Attr.RESPONSE_ORIGIN) == origin
    assert reply.address(Attr.OTHER_ADDRESS) == P2
    assert reply.xor_address() == CLIENT


def test_change_request_without_an_alternate_address_is_420() -> None:
    reply, _ = ask(CHANGE_IP, addrs=Addresses(P1))
    assert reply.error() is not None and reply.error()[0] == 420  # type: ignore[index]
    plain, _ = ask(0, addrs=Addresses(P1))
    assert plain.address(Attr.OTHER_ADDRESS) is None  # the client learns it cannot test here


def test_classic_rfc3489_client_gets_its_attributes() -> None:
    import struct

    data = (
        struct.pack("!HHI", 0x0001, 8, 0x01020304)
        + bytes(12)
        + struct.pack("!HHI", Attr.CHANGE_REQUEST, 4, CHANGE_PORT)
    )
    req = parse_message_untrusted(data)
    [out] = answer_binding(req, CLIENT, P1, ADDRS, "test")
    reply = parse_message_untrusted(out.data)
    assert reply.address() == CLIENT  # MAPPED-ADDRESS
    assert reply.address(0x0004) == (P1[0], P2[1])  # SOURCE-ADDRESS: where it came from
    assert reply.address(0x0005) == P2  # CHANGED-ADDRESS


LOCAL = ("198.18.1.2", 5000)


def observed(
    m1: tuple[str, int],
    m2: tuple[str, int] | None,
    m3: tuple[str, int] | None,
    any_ok: bool,
    port_ok: bool | None,
) -> NatTests:
    return NatTests(
        local=LOCAL,
        server=P1,
        other=P2,
        mapped1=m1,
        mapped2=m2,
        mapped3=m3,
        filter_any=any_ok,
        filter_port=port_ok,
    )


@pytest.mark.parametrize(
    ("tests", "mapping", "filtering", "words"),
    [
        (observed(LOCAL, LOCAL, None, True, None), EIM, EIM, "no NAT"),
        (
            observed(("203.0.113.1", 5000), ("203.0.113.1", 5000), None, True, None),
            EIM,
            EIM,
            "full cone",
        ),
        (
            observed(("203.0.113.1", 5000), ("203.0.113.1", 5000), None, False, False),
            EIM,
            APDM,
            "cone",
        ),
        (
            observed(("203.0.113.1", 5000), ("203.0.113.1", 5000), None, False, True),
            EIM,
            ADM,
            "filters by address",
        ),
        (
            observed(
                ("203.0.113.1", 5000), ("203.0.113.1", 6001), ("203.0.113.1", 6001), False, False
            ),
            ADM,
            APDM,
            "symmetric",
        ),
        (
            observed(
                ("203.0.113.1", 5000), ("203.0.113.1", 6001), ("203.0.113.1", 7002), False, False
            ),
            APDM,
            APDM,
            "symmetric",
        ),
    ],
)
def test_classification(tests: NatTests, mapping: str, filtering: str, words: str) -> None:
    verdict = classify(tests)
    assert (verdict.mapping, verdict.filtering) == (mapping, filtering)
    assert words in verdict.kind


def test_no_answer_and_no_alternate_are_said_plainly() -> None:
    silent = classify(NatTests(local=LOCAL, server=P1))
    assert not silent.reachable and "no answer" in silent.kind
    partial = classify(NatTests(local=LOCAL, server=P1, mapped1=("203.0.113.1", 5000)))
    assert partial.reachable and partial.mapping is None and "OTHER-ADDRESS" in partial.kind


BIN = Path(sys.executable).parent


@pytest.mark.parametrize("alternate", [True, False])
def test_natcheck_command_on_loopback(tmp_path: Path, alternate: bool) -> None:
    from rendezvous.server import RendezvousServer

    async def scenario() -> subprocess.CompletedProcess[str]:
        server = await RendezvousServer().start("127.0.0.1", 0, "127.0.0.2" if alternate else None)
        try:
            proc = await asyncio.create_subprocess_exec(
                str(BIN / "callpeer"),
                "natcheck",
                "--server",
                f"127.0.0.1:{server.address[1]}",
                "--json",
                "-",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            return subprocess.CompletedProcess([], proc.returncode or 0, out.decode(), err.decode())
        finally:
            server.close()

    result = asyncio.run(scenario())
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["behind_nat"] is False and report["public"] == report["local"]
    if alternate:
        assert (report["mapping"], report["filtering"]) == (EIM, EIM)
        assert "no NAT" in report["kind"]
    else:
        assert report["mapping"] is None and report["notes"]
