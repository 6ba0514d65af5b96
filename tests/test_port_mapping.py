"""Port mapping: PCP and NAT-PMP messages as bytes, the sans-IO mapper, and whole calls through
two NATs that map per destination, one of whose routers opens a port on request (netsim)."""

from __future__ import annotations

import struct

import pytest

from tests.netsim import Nat
from tests.netsim import Network
from tests.netsim import PcpGateway
from tests.netsim_caller import SERVER
from tests.netsim_caller import Caller
from tests.test_failover import A_PUBLIC
from tests.test_failover import B_PUBLIC
from tests.test_failover import ServerHost
from voip.call_core import CallOptions
from voip.nat.port_mapper import ASK_WAIT
from voip.nat.port_mapper import LIFETIME
from voip.nat.port_mapper import RETRIES
from voip.nat.port_mapper import UPNP
from voip.nat.port_mapper import UPNP_WAIT
from voip.nat.port_mapper import PortMapped
from voip.nat.port_mapper import PortMapper
from voip.nat.port_mapper import PortMappingFailed
from voip.wire.port_mapping import PortMappingError
from voip.wire.port_mapping import natpmp_external_address_request
from voip.wire.port_mapping import natpmp_map_request
from voip.wire.port_mapping import parse_answer_untrusted
from voip.wire.port_mapping import pcp_map_request

GATEWAY = ("198.18.1.1", 5351)
NONCE = bytes(range(1, 13))
MAPPED_V4 = bytes(10) + b"\xff\xff"  # an IPv4 address in PCP's 16 bytes (RFC 6887 §5)


def pcp_answer(
    nonce: bytes, internal: int, external: int, lifetime: int = 600, result: int = 0
) -> bytes:
    """A PCP MAP success laid out field by field from RFC 6887 §7.2 and §11.1."""
    header = bytes([2, 0x81, 0, result]) + struct.pack("!II", lifetime, 1234) + bytes(12)
    return (
        header
        + nonce
        + bytes([17, 0, 0, 0])
        + struct.pack("!HH", internal, external)
        + (MAPPED_V4 + bytes([203, 0, 113, 1]))
    )


# -- the messages ---------------------------------------------------------------------------
def test_pcp_map_request_is_laid_out_as_rfc_6887_says() -> None:
    data = pcp_map_request("198.18.1.2", 40000, NONCE, 600)
    assert len(data) == 60  # 24-byte header and the 36-byte MAP payload
    assert data[:4] == bytes([2, 1, 0, 0])  # version 2, R=0 and opcode MAP, reserved
    assert data[4:8] == (600).to_bytes(4, "big")
    assert data[8:24] == MAPPED_V4 + bytes([198, 18, 1, 2])  # the PCP client's address
    assert data[24:36] == NONCE
    assert data[36:40] == bytes([17, 0, 0, 0])  # UDP, reserved
    assert data[40:44] == struct.pack("!HH", 40000, 0)  # internal port, no suggestion
    assert data[44:60] == MAPPED_V4 + bytes(4)  # the all-zeros IPv4 address: no preference
    renew = pcp_map_request("198.18.1.2", 40000, NONCE, 600, ("203.0.113.1", 40001))
    assert renew[42:44] == struct.pack("!H", 40001) and renew[56:60] == bytes([203, 0, 113, 1])
    with pytest.raises(ValueError, match="12 bytes"):
        pcp_map_request("198.18.1.2", 40000, b"short", 600)


def test_natpmp_requests_are_laid_out_as_rfc_6886_says() -> None:
    assert natpmp_external_address_request() == b"\x00\x00"
    assert natpmp_map_request(40000, 7200) == bytes.fromhex("000100009c40000000001c20")
    assert natpmp_map_request(40000, 0) == bytes.fromhex("000100009c40000000000000")


def test_answers_are_parsed_and_garbage_refused() -> None:
    answer = parse_answer_untrusted(pcp_answer(NONCE, 40000, 40001))
    assert (answer.protocol, answer.ok, answer.lifetime, answer.epoch) == ("PCP", True, 600, 1234)
    assert answer.external == ("203.0.113.1", 40001) and answer.nonce == NONCE
    refused = parse_answer_untrusted(bytes([2, 0x81, 0, 2]) + bytes(20))  # NOT_AUTHORIZED
    assert not refused.ok and refused.reason() == "PCP: not authorized"
    # NAT-PMP: the external address (RFC 6886 §3.2), a mapping (§3.3), and the "unsupported
    # version" a NAT-PMP-only router sends back for a PCP request (RFC 6887 §9).
    ext = parse_answer_untrusted(bytes.fromhex("0080000000000010cb007101"))
    assert (ext.protocol, ext.external_ip, ext.epoch) == ("NAT-PMP", "203.0.113.1", 16)
    mapped = parse_answer_untrusted(bytes.fromhex("00810000000000109c409c4100000258"))
    assert (mapped.internal_port, mapped.external_port, mapped.lifetime) == (40000, 40001, 600)
    old = parse_answer_untrusted(bytes.fromhex("0081000100000010"))
    assert (old.protocol, old.result) == ("NAT-PMP", 1)
    for garbage in (
        b"",
        b"\x02",
        b"\x07" + bytes(59),  # no such version
        pcp_map_request("198.18.1.2", 40000, NONCE, 600),  # a request, not an answer
        bytes([2, 0x82, 0, 0]) + bytes(56),  # PEER, not MAP
        bytes([2, 0x81, 0, 0]) + bytes(20),  # a success without its payload
        pcp_answer(NONCE, 1, 2)[:36] + bytes([6]) + pcp_answer(NONCE, 1, 2)[37:],  # not UDP
        bytes([2, 0x81, 0, 0]) + bytes(1200),  # longer than PCP allows
        bytes.fromhex("0001"),  # a NAT-PMP request
        bytes.fromhex("008000000000"),  # cut short
    ):
        with pytest.raises(PortMappingError):
            parse_answer_untrusted(garbage)


# -- the mapper -----------------------------------------------------------------------------
def held(m: PortMapper) -> tuple[str, int] | None:
    """The mapping now (read through a call: mypy would keep an earlier assert's narrowing)."""
    return m.public


def mapper() -> tuple[PortMapper, bytes]:
    m = PortMapper("198.18.1.1", "198.18.1.2", 40000)
    [(request, to)] = m.start(0.0)
    assert to == GATEWAY
    return m, request


def test_a_pcp_mapping_is_taken_renewed_at_half_its_life_and_deleted_at_the_end() -> None:
    m, request = mapper()
    nonce = request[24:36]
    assert m.waiting(0.05) and not m.waiting(0.2)  # the ask waits a moment, no longer
    assert m.handle(pcp_answer(nonce, 40000, 40001, 120), GATEWAY, 0.01) == []
    assert m.public == ("203.0.113.1", 40001) and not m.waiting(0.02)
    assert m.pop_events() == [PortMapped(("203.0.113.1", 40001), "PCP", 120)]
    assert m.next_deadline() == pytest.approx(0.01 + 60)
    [(renew, _)] = m.poll(60.01)
    assert renew[24:36] == nonce and renew[42:44] == struct.pack("!H", 40001)  # the same again
    m.handle(pcp_answer(nonce, 40000, 40001, 120), GATEWAY, 60.02)
    assert m.renewals == 1 and m.pop_events() == []  # renewed: nothing new to tell
    [(delete, to)] = m.release(70.0)
    assert to == GATEWAY and delete[4:8] == bytes(4) and delete[24:36] == nonce
    assert held(m) is None and m.next_deadline() is None


def test_a_router_that_maps_anew_on_renewal_is_told_as_a_new_mapping() -> None:
    m, request = mapper()
    nonce = request[24:36]
    m.handle(pcp_answer(nonce, 40000, 40001, 120), GATEWAY, 0.0)
    m.poll(60.0)
    m.handle(pcp_answer(nonce, 40000, 40077, 120), GATEWAY, 60.01)  # it lost its table
    assert m.renewals == 0 and m.public == ("203.0.113.1", 40077)
    assert [e.public for e in m.pop_events() if isinstance(e, PortMapped)] == [
        ("203.0.113.1", 40001),
        ("203.0.113.1", 40077),
    ]


def test_unanswered_renewals_back_off_and_a_pending_request_is_deleted_at_hangup() -> None:
    m, request = mapper()
    m.handle(pcp_answer(request[24:36], 40000, 40001, 120), GATEWAY, 0.0)
    sent, now = 0, 0.0
    while (deadline := m.next_deadline()) is not None and deadline < 200:
        now = deadline
        sent += len(m.poll(now))
    # Renewals double their interval (and halve it towards the expiry), then, the mapping gone,
    # one more bounded round asks for a new one: 17 requests in 140 s, not one a second.
    assert 5 <= sent <= 20 and held(m) is None and m.failed is not None
    m, _ = mapper()  # asked, and no answer yet when the call ends: a late one may hold a port
    [(delete, to)] = m.release(0.05)
    assert to == GATEWAY and delete[4:8] == bytes(4)


def test_answers_not_for_this_mapping_are_ignored() -> None:
    m, request = mapper()
    nonce = request[24:36]
    m.handle(pcp_answer(bytes(12), 40000, 40001), GATEWAY, 0.01)  # another mapping's nonce
    m.handle(pcp_answer(nonce, 40999, 40001), GATEWAY, 0.01)  # another internal port
    m.handle(pcp_answer(nonce, 40000, 40001), ("203.0.113.66", 5351), 0.01)  # not the gateway
    m.handle(b"\x02garbage", GATEWAY, 0.01)
    assert m.public is None and m.failed is None and m.pop_events() == []


def test_a_natpmp_router_is_asked_again_in_natpmp() -> None:
    m, _ = mapper()
    out = m.handle(bytes.fromhex("0081000100000010"), GATEWAY, 0.01)  # unsupported version
    assert sorted(data for data, _ in out) == [b"\x00\x00", natpmp_map_request(40000, LIFETIME)]
    m.handle(bytes.fromhex("00810000000000109c409c4100000258"), GATEWAY, 0.02)
    assert m.public is None  # the port, but not yet the address
    m.handle(bytes.fromhex("0080000000000010cb007101"), GATEWAY, 0.02)
    assert m.pop_events() == [PortMapped(("203.0.113.1", 40001), "NAT-PMP", 600)]
    [(delete, _)] = m.release(5.0)
    assert delete == natpmp_map_request(40000, 0)


def test_a_silent_router_is_given_up_on_after_a_bounded_number_of_tries() -> None:
    m, _ = mapper()
    # The ask stops waiting for it at ASK_WAIT (the connector's deadline); the retries follow
    # on their own schedule.
    assert m.ask_by == ASK_WAIT and m.waiting(ASK_WAIT - 0.01) and not m.waiting(ASK_WAIT)
    sent, now = 1, 0.0
    while (deadline := m.next_deadline()) is not None:
        assert deadline - now in RETRIES
        now = deadline
        sent += len(m.poll(now))
    assert sent == len(RETRIES) + 1 and now < 3.0
    assert m.pop_events() == [PortMappingFailed("no answer from the router to PCP or NAT-PMP")]
    assert m.release(now) == []  # nothing to delete


def test_a_refusal_ends_it_and_a_refused_renewal_keeps_the_mapping_until_it_expires() -> None:
    m, request = mapper()
    m.handle(bytes([2, 0x81, 0, 2]) + bytes(20), GATEWAY, 0.01)
    assert m.failed == "PCP: not authorized" and m.next_deadline() is None
    m, request = mapper()
    nonce = request[24:36]
    m.handle(pcp_answer(nonce, 40000, 40001, 100), GATEWAY, 0.0)
    m.poll(50.0)
    m.handle(pcp_answer(nonce, 40000, 40001, 0, result=8), GATEWAY, 50.01)  # out of resources
    assert m.public == ("203.0.113.1", 40001) and m.next_deadline() == 100.0
    assert m.poll(100.0) == []
    assert held(m) is None and m.next_deadline() is None


# -- whole calls ----------------------------------------------------------------------------
def symmetric_call(gateway: PcpGateway | None, relay: str = "auto") -> tuple[Caller, Caller]:
    """Alice and bob behind NATs that map per destination; alice's router answers PCP when
    `gateway` is given (alice asks it either way, as a caller with a default gateway does)."""
    net = Network(lambda s, d: 0.005)
    server = ServerHost(net)
    net.attach(SERVER, server)
    a_addr, b_addr = ("198.18.1.2", 5000), ("198.18.2.2", 6000)
    alice_nat = net.add_nat(Nat(A_PUBLIC, "symmetric"))
    options = CallOptions(relay=relay, gateway=("198.18.1.1", a_addr[0]))
    alice = Caller("alice", "bob", a_addr, options)
    bob = Caller("bob", "alice", b_addr, CallOptions(relay=relay))
    net.attach(a_addr, alice, alice_nat)
    net.attach(b_addr, bob, net.add_nat(Nat(B_PUBLIC, "symmetric")))
    if gateway is not None:
        gateway.nat = alice_nat
        net.attach(GATEWAY, gateway, alice_nat)
    net.send(a_addr, alice.core.start(0.0))
    net.run(ASK_WAIT + 0.03)  # 5 ms to the server: an ask sent at ASK_WAIT is there by now
    alice_entry = server.node.logic.registry.get("alice", net.now)
    assert alice_entry is not None and alice_entry.wants == "bob"  # the router made no one wait
    net.run(0.5)
    net.send(b_addr, bob.core.start(net.now))
    net.run(4.0)
    net.send(a_addr, alice.core.hangup(net.now))
    net.run(net.now + 0.1)
    return alice, bob


@pytest.mark.parametrize("relay", ["auto", "off"])
def test_symmetric_against_symmetric_goes_direct_through_a_port_the_router_opened(
    relay: str,
) -> None:
    gateway = PcpGateway(Nat(A_PUBLIC))
    alice, bob = symmetric_call(gateway, relay)
    public = alice.core.connector.port_mapper.public if alice.core.connector.port_mapper else None
    a, b = alice.core.report(), bob.core.report()
    assert a.path == b.path == "direct", (a.to_dict(), b.to_dict())
    assert a.direct.found_by == "our port mapping (PCP)"
    assert b.direct.found_by == "the peer's port mapping"
    assert b.direct.remote is not None and b.direct.remote.startswith(f"{A_PUBLIC}:")
    assert a.to_dict()["port_mapping"]["protocol"] == "PCP"
    assert public is None and not gateway.nat.opened  # hung up: the mapping was deleted
    assert gateway.requests[-1][4:8] == bytes(4)


def test_without_an_answer_symmetric_against_symmetric_stays_relayed() -> None:
    alice, bob = symmetric_call(PcpGateway(Nat(A_PUBLIC), answer=False))
    a = alice.core.report()
    assert a.path == bob.core.report().path == "relay"
    assert a.port_mapping == {
        "protocol": None,
        "public": None,
        "reason": "no answer from the router to PCP or NAT-PMP",
    }
    assert a.direct.found_by is None and not a.direct.available


# -- UPnP IGD beside PCP and NAT-PMP (voip/call_upnp.py asks it and tells the mapper) ---------
def test_with_upnp_asked_too_the_ask_waits_for_it_and_takes_its_port() -> None:
    m, _ = mapper()
    m.upnp_asking(0.0)
    assert m.ask_by == UPNP_WAIT and m.waiting(ASK_WAIT + 0.01)  # longer than PCP alone
    assert m.upnp_mapped(("203.0.113.1", 40000), 3600)
    assert not m.waiting(0.2) and held(m) == ("203.0.113.1", 40000)
    assert m.pop_events() == [PortMapped(("203.0.113.1", 40000), UPNP, 3600)]
    assert m.next_deadline() is None  # PCP and NAT-PMP are not asked again
    assert m.poll(10.0) == [] and m.release(11.0) == []  # the shell deletes it over HTTP
    assert held(m) is None


def test_a_upnp_port_that_comes_after_pcps_is_not_taken() -> None:
    m, request = mapper()
    m.upnp_asking(0.0)
    m.handle(pcp_answer(request[24:36], 40000, 40001), GATEWAY, 0.01)
    assert not m.upnp_mapped(("203.0.113.1", 40000), 3600)  # the shell deletes it
    assert held(m) == ("203.0.113.1", 40001) and m.protocol == "PCP"


def test_the_failure_is_told_once_when_pcp_and_upnp_have_both_failed() -> None:
    m, _ = mapper()
    m.upnp_asking(0.0)
    m.upnp_failed("no UPnP router answered")
    assert m.pop_events() == []  # PCP may still answer
    assert m.waiting(0.05) and not m.waiting(ASK_WAIT)  # PCP's own wait holds it still
    for t in (0.25, 0.75, 1.75, 2.75):
        m.poll(t)
    assert m.pop_events() == [
        PortMappingFailed(
            "no answer from the router to PCP or NAT-PMP; UPnP IGD: no UPnP router answered"
        )
    ]
    m2, _ = mapper()
    m2.upnp_asking(0.0)
    for t in (0.25, 0.75, 1.75, 2.75):
        m2.poll(t)
    assert m2.pop_events() == []  # UPnP has not said yet
    m2.upnp_failed("refused")
    assert [type(e) for e in m2.pop_events()] == [PortMappingFailed]
