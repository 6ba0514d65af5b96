"""IPv6 beside IPv4: one dual-stack call socket, IPv6 host candidates first (RFC 8421), and
pairs through the relay kept to the allocation's family."""

from __future__ import annotations

import asyncio
import socket

import pytest

from rendezvous.local import loopback_server
from rendezvous.server import RendezvousServer
from tests.test_call import silent_call
from voip import Call
from voip import CallOptions
from voip.host_addresses import host_candidates
from voip.host_addresses import interleaved
from voip.nat.checklist import Checklist
from voip.nat.nominator import Nominator
from voip.nat.pairs import Base
from voip.nat.pairs import Pair
from voip.nat.pairs import PairState
from voip.nat.pairs import PathKind
from voip.nat.pairs import RelayMode
from voip.transport import UdpEndpoint
from voip.transport import resolve
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.stun import Address
from voip.wire.turn import turn_uri


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="this host has no IPv6 (::1 cannot be bound)")
def test_one_dual_stack_socket_talks_to_both_families_and_names_ipv4_plainly() -> None:
    async def scenario() -> list[tuple[bytes, Address]]:
        got: list[tuple[bytes, Address]] = []
        endpoint = UdpEndpoint.open("::", 0, lambda data, src, now: got.append((data, src)))
        assert endpoint.dual
        port = endpoint.local_address[1]
        peers = {}
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            peer = socket.socket(family, socket.SOCK_DGRAM)
            peer.bind((host, 0))
            peer.setblocking(False)
            peer.sendto(host.encode(), (host, port))
            peers[host] = peer
        for _ in range(100):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
        for data, src in list(got):  # answer each where it came from, as the core would
            endpoint.send(b"back to " + data, src)
        await asyncio.sleep(0.05)
        for host, peer in peers.items():
            data, _ = peer.recvfrom(100)
            assert data == b"back to " + host.encode()
            peer.close()
        endpoint.close()
        return got

    got = asyncio.run(scenario())
    assert {src[0] for _, src in got} == {"127.0.0.1", "::1"}  # never ::ffff:127.0.0.1


def test_host_candidates_put_ipv6_first_and_take_the_families_in_turn() -> None:
    assert interleaved(["2001:db8::1", "2001:db8::2"], ["198.18.1.2"]) == [
        "2001:db8::1",
        "198.18.1.2",
        "2001:db8::2",
    ]
    assert interleaved([], ["198.18.1.2", "198.18.9.2"]) == ["198.18.1.2", "198.18.9.2"]


def test_a_socket_bound_to_one_address_offers_that_one_alone() -> None:
    [host] = host_candidates("198.18.1.2", 4000, dual=False)
    assert host.address == ("198.18.1.2", 4000) and host.kind == CandidateType.HOST
    assert host_candidates("127.0.0.1", 4000, dual=False) == ()  # loopback goes nowhere


def test_candidates_on_all_addresses_are_usable_ones_of_this_host() -> None:
    hosts = host_candidates("0.0.0.0", 4000, dual=True)
    priorities = [c.priority for c in hosts]
    assert priorities == sorted(priorities, reverse=True)  # in the order offered
    for c in hosts:
        assert c.address[1] == 4000
        assert not c.address[0].startswith(("127.", "::1", "fe80")) and "%" not in c.address[0]


def test_pairs_through_the_relay_skip_ipv6_candidates_and_the_host_base_keeps_them() -> None:
    checklist = Checklist(Nominator(RelayMode.AUTO, False), controlling=True, now=0.0)
    six = Candidate.make(CandidateType.SRFLX, ("2001:db8:2::2", 5000))
    four = Candidate.make(CandidateType.SRFLX, ("203.0.113.2", 5000))
    checklist.form([six, four], [Base.HOST, Base.RELAY])
    keys = {(p.base, p.remote.address) for p in checklist}
    assert keys == {
        (Base.HOST, six.address),
        (Base.HOST, four.address),
        (Base.RELAY, four.address),  # an IPv4 allocation relays to IPv4 peers only
    }


@pytest.mark.skipif(not ipv6_loopback(), reason="this host has no IPv6 (::1 cannot be bound)")
@pytest.mark.parametrize("bob_over", ["ipv6", "ipv4"])
def test_a_rendezvous_listening_twice_introduces_callers_of_either_family(bob_over: str) -> None:
    """`--listen 127.0.0.1:P --listen [::1]:Q`: alice registers over IPv6 (her public address
    is an IPv6 one), bob over IPv6 too or over IPv4; both are introduced and connect, and over
    IPv6 both ways the audio goes over IPv6."""

    async def scenario() -> tuple[Call, Call, RendezvousServer]:
        server = loopback_server()
        await server.start("127.0.0.1", 0, also=(("::1", 0),))
        try:
            [six] = server.also
            calls = [
                silent_call(
                    me,
                    peer,
                    six if over == "ipv6" else server.address,
                    CallOptions(bind_host="::" if over == "ipv6" else "127.0.0.1"),
                )
                for me, peer, over in (("alice", "bob", "ipv6"), ("bob", "alice", bob_over))
            ]
            alice, bob = calls
            async with alice, bob:
                await asyncio.wait_for(asyncio.gather(alice.run(1.0), bob.run(1.0)), 20)
        finally:
            server.close()
        return alice, bob, server

    alice, bob, server = asyncio.run(scenario())
    a, b = alice.report().to_dict(), bob.report().to_dict()
    assert a["local_public"].startswith("[::1]:")
    assert b["local_public"].startswith("[::1]:" if bob_over == "ipv6" else "127.0.0.1:")
    assert a["path"] != "none" and b["path"] != "none"
    if bob_over == "ipv6":
        assert a["path"] == b["path"] == "direct"
        assert a["paths"]["direct"]["family"] == b["paths"]["direct"]["family"] == "ipv6"
    assert server.stats["udp_from_stream_address"] == 0


def valid_pair(address: Address, rtt: float, kind: CandidateType = CandidateType.SRFLX) -> Pair:
    pair = Pair.make(Base.HOST, Candidate.make(kind, address), controlling=True)
    pair.state, pair.peer_checked, pair.rtt = PairState.SUCCEEDED, True, rtt
    return pair


def test_of_pairs_about_as_fast_the_ipv6_one_carries_the_call() -> None:
    four = valid_pair(("203.0.113.2", 5000), 0.0110)
    six = valid_pair(("2001:db8:2::2", 5000), 0.0220)  # checked first, while both were busy
    assert Nominator.best([four, six], PathKind.DIRECT) is six


@pytest.mark.parametrize(("four", "six"), [(0.005, 0.019), (0.020, 0.040), (0.050, 0.075)])
def test_a_clearly_faster_ipv4_pair_wins_over_ipv6(four: float, six: float) -> None:
    fast = valid_pair(("203.0.113.2", 5000), four)
    slow = valid_pair(("2001:db8:2::2", 5000), six)
    assert Nominator.best([fast, slow], PathKind.DIRECT) is fast


def test_a_clearly_faster_ipv4_pair_wins_over_a_tunnel() -> None:
    four = valid_pair(("203.0.113.2", 5000), 0.020)
    six = valid_pair(("2001:db8:2::2", 5000), 0.040)  # a tunnel, say: twice the delay
    assert Nominator.best([four, six], PathKind.DIRECT) is four


def test_of_pairs_about_as_fast_the_higher_priority_one_wins() -> None:
    host = valid_pair(("198.18.1.3", 5000), 0.0011, CandidateType.HOST)
    punched = valid_pair(("203.0.113.2", 5000), 0.0010)  # a hairpin, as fast on a LAN
    assert Nominator.best([punched, host], PathKind.DIRECT) is host


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("turn:203.0.113.20", ("203.0.113.20", 3478, "auto")),
        ("turn:relay.example:3479?transport=tcp", ("relay.example", 3479, "tcp")),
        ("turn:relay.example?transport=udp", ("relay.example", 3478, "udp")),
        ("turns:relay.example", ("relay.example", 5349, "tls")),
        ("turns:[2001:db8::20]:443", ("2001:db8::20", 443, "tls")),
        ("turn:[2001:db8::20]", ("2001:db8::20", 3478, "auto")),
    ],
)
def test_turn_uris_as_rfc_7065_writes_them(uri: str, parsed: tuple[str, int, str]) -> None:
    assert turn_uri(uri) == parsed


@pytest.mark.parametrize(
    "uri",
    [
        "stun:relay.example",
        "turn:2001:db8::20:3478",
        "turns:h?transport=udp",
        "turn:h?x=1",
        "turn:",
    ],
)
def test_turn_uris_that_are_not(uri: str) -> None:
    with pytest.raises(ValueError, match="bad TURN server"):
        turn_uri(uri)


@pytest.mark.skipif(not ipv6_loopback(), reason="this host has no IPv6 (::1 cannot be bound)")
def test_a_server_is_resolved_to_ipv6_as_typed_and_to_ipv4_first_by_name() -> None:
    assert asyncio.run(resolve("[::1]", 3478)) == ("::1", 3478)
    assert asyncio.run(resolve("::1", 3478)) == ("::1", 3478)
    assert asyncio.run(resolve("localhost", 3478)) == ("127.0.0.1", 3478)


@pytest.mark.skipif(not ipv6_loopback(), reason="this host has no IPv6 (::1 cannot be bound)")
def test_a_rendezvous_on_the_ipv6_wildcard_takes_both_families_over_udp_and_tcp() -> None:
    async def scenario() -> list[tuple[str, int]]:
        server = await RendezvousServer().start("::", 0)
        try:
            port = server.address[1]
            reached = []
            for host in ("127.0.0.1", "::1"):
                _, writer = await asyncio.open_connection(host, port)  # TCP, IPv4 too
                reached.append(writer.get_extra_info("sockname")[:2])
                writer.close()
            return reached
        finally:
            server.close()

    assert [host for host, _ in asyncio.run(scenario())] == ["127.0.0.1", "::1"]


def test_listen_is_refused_twice_in_one_family(capsys: pytest.CaptureFixture[str]) -> None:
    from rendezvous import cli

    given = ["--listen", "127.0.0.1:0", "--listen", "127.0.0.2:0", "--store", ":memory:"]
    assert cli.main(given) == 2
    assert "an IPv4 and an IPv6 address" in capsys.readouterr().err
