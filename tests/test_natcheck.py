"""NAT behaviour discovery: the RFC 5780 server answers, the classification, the command."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rendezvous.behaviour import Addresses
from rendezvous.behaviour import answer_binding
from voip.lab.echo import ECHO_PORT
from voip.lab.nat import NAT_KINDS
from voip.lab.nat import SEQUENTIAL_FIRST
from voip.lab.nat import SEQUENTIAL_PORTS
from voip.lab.nat import router_ruleset
from voip.lab.port_mapping import PCP_PORT
from voip.natcheck.memory import MAX_AGE
from voip.natcheck.memory import memory_path
from voip.natcheck.memory import recall
from voip.natcheck.memory import remember
from voip.natcheck.probing import padded
from voip.natcheck.verdict import ADM
from voip.natcheck.verdict import APDM
from voip.natcheck.verdict import EIM
from voip.natcheck.verdict import NatTests
from voip.natcheck.verdict import bounds
from voip.natcheck.verdict import classify
from voip.natcheck.verdict import coarse_waits
from voip.natcheck.verdict import hairpinning
from voip.natcheck.verdict import keepalive_interval
from voip.natcheck.verdict import mapping_ports
from voip.natcheck.verdict import port_allocation
from voip.natcheck.verdict import refine_waits
from voip.wire.stun import CHANGE_IP
from voip.wire.stun import CHANGE_PORT
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.stun import change_request
from voip.wire.stun import encode
from voip.wire.stun import parse_message_untrusted

P1, P2 = ("203.0.113.10", 3478), ("203.0.113.11", 3479)
CLIENT = ("198.51.100.5", 40000)
ADDRS = Addresses(P1, P2)


def ask(
    flags: int, local: tuple[str, int] = P1, addrs: Addresses = ADDRS, pad: bool = True
) -> tuple[Message, object]:
    """A Binding as natcheck sends it: padded, so the answer has room for RFC 5780's attributes."""
    attrs = ((Attr.CHANGE_REQUEST, change_request(flags)),) if flags else ()
    msg = Message(Method.BINDING, Class.REQUEST, attributes=padded(attrs) if pad else attrs)
    req = parse_message_untrusted(encode(msg, fingerprint=True))
    [out] = answer_binding(req, CLIENT, local, addrs, "test")
    assert len(out.data) <= max(len(req.raw), 40)  # never amplified past a plain Binding's 40
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
    # Unpadded (28 bytes), the 420 would be larger than the question: no answer at all.
    small = Message(
        Method.BINDING, Class.REQUEST, attributes=((Attr.CHANGE_REQUEST, bytes(3) + b"\x04"),)
    )
    req = parse_message_untrusted(encode(small))
    assert answer_binding(req, CLIENT, P1, Addresses(P1), "test") == []


def test_an_unpadded_binding_gets_the_mapped_address_alone() -> None:
    """Binding is answered to anyone, so its answer is the least a client needs: 32 bytes to a
    20-byte request, 40 with FINGERPRINT; RFC 5780's extras and SOFTWARE only in the room the
    request itself made."""
    for fingerprint, size in ((False, 32), (True, 40)):
        data = encode(Message(Method.BINDING, Class.REQUEST), fingerprint=fingerprint)
        [out] = answer_binding(parse_message_untrusted(data), CLIENT, P1, ADDRS, "test")
        reply = parse_message_untrusted(out.data)
        assert len(out.data) == size and reply.xor_address() == CLIENT
        assert [t for t, _ in reply.attributes if t != Attr.FINGERPRINT] == [
            Attr.XOR_MAPPED_ADDRESS
        ]
    reply, _ = ask(0)  # natcheck's padded request gets everything
    assert reply.address(Attr.OTHER_ADDRESS) == P2 and reply.text(Attr.SOFTWARE) == "test"


def test_classic_rfc3489_client_gets_its_attributes() -> None:
    import struct

    def classic(padding: int) -> bytes:  # as Debian's `stun` sends it, 28 bytes, or padded
        return (
            struct.pack("!HHI", 0x0001, 8 + padding, 0x01020304)
            + bytes(12)
            + struct.pack("!HHI", Attr.CHANGE_REQUEST, 4, CHANGE_PORT)
            + bytes(padding)
        )

    [out] = answer_binding(parse_message_untrusted(classic(0)), CLIENT, P1, ADDRS, "test")
    reply = parse_message_untrusted(out.data)
    assert reply.address() == CLIENT  # MAPPED-ADDRESS
    assert reply.address(0x0005) == P2  # CHANGED-ADDRESS: without it, it cannot test its NAT
    assert len(out.data) == 44  # of 28: a smaller factor than a plain Binding's 32 of 20
    [out] = answer_binding(parse_message_untrusted(classic(64)), CLIENT, P1, ADDRS, "test")
    reply = parse_message_untrusted(out.data)
    assert reply.address(0x0004) == (P1[0], P2[1])  # SOURCE-ADDRESS: where it came from
    # RFC 3489 attributes are whole words; Debian's `stun` rejects a SERVER of another length.
    assert len(reply.get(Attr.SOFTWARE) or b"") % 4 == 0


def test_response_port_aims_the_answer_at_another_port_of_the_same_ip() -> None:
    attrs = ((Attr.RESPONSE_PORT, bytes([0x9C, 0x41, 0, 0])),)  # port 40001
    req = parse_message_untrusted(encode(Message(Method.BINDING, Class.REQUEST, attributes=attrs)))
    [out] = answer_binding(req, CLIENT, P1, ADDRS, "test")
    assert out.dest == (CLIENT[0], 40001)
    assert parse_message_untrusted(out.data).xor_address() == CLIENT  # still who asked
    bad = ((Attr.RESPONSE_PORT, bytes(4)),)
    req = parse_message_untrusted(encode(Message(Method.BINDING, Class.REQUEST, attributes=bad)))
    with pytest.raises(StunError):
        answer_binding(req, CLIENT, P1, ADDRS, "test")


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


def test_hairpinning_words_follow_the_source_the_request_came_from() -> None:
    pub = ("203.0.113.1", 5000)
    t = NatTests(local=LOCAL, server=P1, mapped1=pub, sender_local=("198.18.1.2", 5001))
    assert hairpinning(t) is None  # not tested
    t.hairpin = False
    assert (hairpinning(t) or "").startswith("no")
    t.hairpin, t.sender_mapped = True, ("203.0.113.1", 5001)
    t.hairpin_source = t.sender_mapped
    assert "public address" in (hairpinning(t) or "")
    t.hairpin_source = t.sender_local
    assert "local address" in (hairpinning(t) or "")


@pytest.mark.parametrize(
    ("ports", "behind", "starts"),
    [
        ([(5000, 5000), (5001, 5001)], True, None),  # too few to tell
        ([(5000, 5000), (5001, 5001), (6000, 6000)], False, "not translated"),
        ([(5000, 5000), (5001, 5001), (6000, 6000)], True, "preserved"),
        ([(5000, 1024), (5001, 1025), (6000, 1027), (6100, 1028)], True, "sequential"),
        ([(5000, 20480), (5001, 20481), (6000, 20482)], True, "sequential (steps of 1):"),
        ([(5000, 1024), (5001, 1025), (6000, 1024)], True, "random"),  # a step back
        ([(5000, 31000), (5001, 4500), (6000, 52000)], True, "random"),
    ],
)
def test_port_allocation(ports: list[tuple[int, int]], behind: bool, starts: str | None) -> None:
    words = port_allocation(ports, behind)
    assert (words or "").startswith(starts or "") and (words is None) == (starts is None)


def sequential_router_tests(step: int, start: int = SEQUENTIAL_FIRST) -> NatTests:
    """What natcheck collects behind a router giving each new mapping the port `step` after the
    last: the first socket's, its two to the alternate address, then five fresh sockets'."""
    public = [start + step * i for i in range(8)]
    tests = observed(
        ("203.0.113.1", public[0]),
        ("203.0.113.1", public[1]),
        ("203.0.113.1", public[2]),
        False,
        False,
    )
    tests.ports = [(40000 + 7 * i, port) for i, port in enumerate(public[:1] + public[3:])]
    return tests


def test_a_symmetric_nat_that_allocates_in_sequence_is_told_from_a_random_one() -> None:
    tests = sequential_router_tests(1)
    assert mapping_ports(tests) == list(range(SEQUENTIAL_FIRST, SEQUENTIAL_FIRST + 8))
    # The fresh sockets alone are 3 apart where the mapping tests made two mappings between.
    assert (port_allocation(tests.ports, True) or "").startswith("sequential (steps of 1/3)")
    verdict = classify(tests)
    assert (verdict.mapping, verdict.filtering) == (APDM, APDM)
    assert verdict.port_allocation == (
        "sequential (steps of 1): the next public port can be predicted"
    )
    assert verdict.kind.startswith("symmetric, in sequence") and "predicted" in verdict.kind
    assert "port prediction" in verdict.direct_with
    assert (port_allocation(sequential_router_tests(2).ports, True, None) or "").startswith(
        "sequential (steps of 2/6)"
    )
    assert (classify(sequential_router_tests(2)).port_allocation or "").startswith(
        "sequential (steps of 2)"
    )
    # Random ports: the plain symmetric words, no prediction.
    scattered = [31000, 4500, 52000, 18000, 61000, 2048, 40001, 9999]
    random_tests = sequential_router_tests(1)
    random_tests.mapped2 = ("203.0.113.1", scattered[1])
    random_tests.mapped3 = ("203.0.113.1", scattered[2])
    random_tests.ports = [(40000 + i, p) for i, p in enumerate(scattered[:1] + scattered[3:])]
    random_tests.mapped1 = ("203.0.113.1", scattered[0])
    verdict = classify(random_tests)
    assert (verdict.port_allocation or "").startswith("random")
    assert verdict.kind.startswith("symmetric: ") and "predicted" not in verdict.kind
    # An endpoint-independent NAT made no mapping in its mapping tests: nothing between.
    cone = observed(("203.0.113.1", 5000), ("203.0.113.1", 5000), None, False, False)
    cone.ports = [(5000, 5000), (5001, 5001), (5002, 5002)]
    assert mapping_ports(cone) == [5000, 5001, 5002]


def test_lab_symmetric_sequential_router_is_a_numgen_masquerade() -> None:
    """The lab's `symmetric-sequential` router: UDP from the LAN takes the next port of a block
    from a counter that moves once per new conntrack flow (the nat chain sees no other
    packet); the rest is masqueraded to random ports, as the `symmetric` router does it all."""
    assert "symmetric-sequential" in NAT_KINDS
    ruleset = router_ruleset("symmetric-sequential", ["198.18.1.2"])
    lan = 'oifname "wan" ip saddr 198.18.1.0/24'
    ports = ", ".join(f"{i} : {SEQUENTIAL_FIRST + i}" for i in range(SEQUENTIAL_PORTS))
    counter = f"numgen inc mod {SEQUENTIAL_PORTS} map {{ {ports} }}"
    udp = f"{lan} meta l4proto udp masquerade to : {counter}"
    rest = f"{lan} masquerade fully-random"
    assert f"        {udp}\n        {rest}\n" in ruleset  # UDP's rule first: the first match wins
    assert ruleset.replace(f"        {udp}\n", "") == router_ruleset("symmetric", ["198.18.1.2"])
    for kind in ("cone", "full-cone", "symmetric"):
        assert "numgen" not in router_ruleset(
            kind, ["198.18.1.2"], hairpin=True, wan_ip="203.0.113.1"
        )
    # Clear of every fixed port of the lab and of Linux's ephemeral range (32768-60999), where
    # the LAN hosts', miniupnpd's and the router's own ports are; never a well-known port.
    block = range(SEQUENTIAL_FIRST, SEQUENTIAL_FIRST + SEQUENTIAL_PORTS)
    assert block[0] >= 1024 and block[-1] < 32768
    assert not {ECHO_PORT, 3478, PCP_PORT, 9000} & set(block)


def test_lifetime_search_plans_and_bounds() -> None:
    assert coarse_waits(10) == [2, 4, 8, 10]
    assert coarse_waits(120) == [2, 4, 8, 15, 30, 60, 120]
    assert refine_waits(30, 60) == [36, 42, 48, 54]
    assert bounds({2: True, 4: True, 8: False}) == (4, 8)
    assert bounds({36: True, 42: False}, 30, 60) == (36, 42)  # refines, never widens
    assert bounds({2: True, 10: True}) == (10, None)  # outlived the longest tried
    assert keepalive_interval(30) == 10 and keepalive_interval(4) == 4 / 3
    assert keepalive_interval(0.5) == 1.0 and keepalive_interval(600) == 10


def test_nat_memory_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    pub = ("203.0.113.1", 5000)
    tests = NatTests(local=LOCAL, server=P1, other=P2, mapped1=pub, mapped2=pub, filter_any=True)
    tests.lifetime = (24.0, 30.0)
    assert remember(tests, classify(tests), now=1000.0) == memory_path()
    known = recall(LOCAL[0], now=2000.0)
    assert known is not None and known.lifetime == 24.0 and known.mapping == EIM
    assert recall("192.0.2.7", now=2000.0) is None  # another network
    assert recall(LOCAL[0], now=1000.0 + MAX_AGE + 1) is None  # too old
    tests.lifetime = None  # a later run without --lifetime keeps the measured one
    remember(tests, classify(tests), now=3000.0)
    again = recall(LOCAL[0], now=3000.0)
    assert again is not None and again.lifetime == 24.0 and again.measured_at == 3000.0
    memory_path().write_text("{not json", encoding="utf-8")
    assert recall(LOCAL[0], now=3000.0) is None
    memory_path().write_text(json.dumps({LOCAL[0]: {"measured_at": "x"}}), encoding="utf-8")
    assert recall(LOCAL[0], now=3000.0) is None


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
                "--lifetime",
                "2",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)},
            )
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            return subprocess.CompletedProcess([], proc.returncode or 0, out.decode(), err.decode())
        finally:
            server.close()

    result = asyncio.run(scenario())
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["behind_nat"] is False and report["public"] == report["local"]
    # No NAT: a quiet socket stays reachable (RESPONSE-PORT answers reach it), ports unchanged.
    assert report["lifetime_s"] == {"alive_after": 2.0, "gone_by": None}
    assert report["port_allocation"].startswith("not translated")
    assert report["hairpinning"] is None  # nothing to turn around without a NAT
    assert "a mapping quiet for 2.0 s still lets answers in" in result.stderr
    if alternate:
        assert (report["mapping"], report["filtering"]) == (EIM, EIM)
        assert "no NAT" in report["kind"]
    else:
        assert report["mapping"] is None and report["notes"]
