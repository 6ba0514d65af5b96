"""IPv6 beside IPv4: one dual-stack call socket, IPv6 host candidates first (RFC 8421), and
pairs through the relay kept to the allocation's family."""

from __future__ import annotations

import asyncio
import socket

import pytest

from voip.host_addresses import host_candidates
from voip.host_addresses import interleaved
from voip.nat.checklist import Checklist
from voip.nat.nominator import Nominator
from voip.nat.pairs import Base
from voip.nat.pairs import RelayMode
from voip.transport import UdpEndpoint
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.stun import Address


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
