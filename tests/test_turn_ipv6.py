"""IPv6 and dual relay allocations (RFC 8656 §7.2), sans-IO and on loopback: the Allocate
variants and their refusals, permissions and channels per family, data both ways, the peer
filter on IPv6 ranges, and our client asking for a dual allocation (and an old server that
will not make one)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import time

import pytest

from rendezvous.cli import relay_addresses
from rendezvous.limits import Limits
from rendezvous.relay_families import Asked
from rendezvous.relay_families import asked_untrusted
from rendezvous.server import RendezvousServer
from rendezvous.turn_server import Out
from rendezvous.turn_server import TurnPolicy
from rendezvous.turn_server import TurnServer
from rendezvous.turn_server import reply
from tests.test_dual_stack import ipv6_loopback
from tests.turn_shell import TurnShell
from tests.turn_shell import until
from voip.nat.checklist import Checklist
from voip.nat.nominator import Nominator
from voip.nat.pairs import Base
from voip.nat.pairs import RelayMode
from voip.nat.relay_base import RelayBase
from voip.nat.signal_events import TurnOffer
from voip.nat.turn_client import Allocated
from voip.nat.turn_client import PermissionRefused
from voip.nat.turn_client import TurnClient
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.signal import PeerReady
from voip.wire.stun import Address
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import decode_xor_address
from voip.wire.stun import encode
from voip.wire.stun import encode_error_code
from voip.wire.stun import long_term_key
from voip.wire.stun import looks_like_stun
from voip.wire.stun import parse_message_untrusted
from voip.wire.stun import text
from voip.wire.turn import address_family
from voip.wire.turn import decode_address_error_untrusted
from voip.wire.turn import dual_request
from voip.wire.turn import encode_address_error
from voip.wire.turn import looks_like_channel_data
from voip.wire.turn import parse_channel_data_untrusted
from voip.wire.turn import requested_transport
from voip.wire.turn import rest_password
from voip.wire.turn import rest_username

SERVER = ("203.0.113.20", 3478)
RELAY6 = "2001:db8:20::20"  # the relay's IPv6 address
CLIENT = ("203.0.113.1", 40000)
PEER4 = ("203.0.113.2", 50000)
PEER6 = ("2001:db8:2::2", 50000)
SECRET = "s3cret"
# The tests' internet is documentation ranges, refused by default: opened as the lab opens them.
INTERNET = [ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8::/32")]


class FakePorts:
    def __init__(self, host: str, limit: int = 100) -> None:
        self.host, self.limit = host, limit
        self.open_ports: set[Address] = set()
        self.next = 49152

    def open(self) -> Address | None:
        if len(self.open_ports) >= self.limit:
            return None
        addr = (self.host, self.next)
        self.next += 1
        self.open_ports.add(addr)
        return addr

    def close(self, relayed: Address) -> None:
        self.open_ports.discard(relayed)


def make_server(
    six: bool = True, limit6: int = 100, **policy: object
) -> tuple[TurnServer, FakePorts, FakePorts]:
    ports, ports6 = FakePorts(SERVER[0]), FakePorts(RELAY6, limit6)
    policy.setdefault("allowed_peers", INTERNET)
    server = TurnServer(
        ports,
        TurnPolicy(secret=SECRET, **policy),  # type: ignore[arg-type]
        wallclock=time.time(),
        ports6=ports6 if six else None,
    )
    server.add_own_addresses([SERVER[0], RELAY6])
    return server, ports, ports6


def credentials(name: str = "alice") -> tuple[str, str]:
    user = rest_username(int(time.time()) + 600, name)
    return user, rest_password(SECRET, user)


def allocate(
    server: TurnServer, attrs: tuple[tuple[int, bytes], ...], src: Address = CLIENT
) -> Message:
    """An Allocate with these attributes besides REQUESTED-TRANSPORT, through the challenge:
    the answer to the authenticated one."""
    user, password = credentials()
    base = ((Attr.REQUESTED_TRANSPORT, requested_transport()), *attrs)
    first = encode(
        Message(Method.ALLOCATE, Class.REQUEST, attributes=(*base, (Attr.SOFTWARE, b"x" * 40)))
    )
    [challenge] = server.handle_request(parse_message_untrusted(first), first, src, 0.0)
    answer = parse_message_untrusted(challenge.data)
    realm, nonce = answer.text(Attr.REALM), answer.text(Attr.NONCE)
    assert realm and nonce
    signed = (*base, (Attr.USERNAME, text(user)), (Attr.REALM, text(realm)))
    msg = Message(Method.ALLOCATE, Class.REQUEST, attributes=(*signed, (Attr.NONCE, text(nonce))))
    data = encode(msg, integrity_key=long_term_key(user, realm, password), fingerprint=True)
    [out] = server.handle_request(parse_message_untrusted(data), data, src, 0.0)
    return parse_message_untrusted(out.data)


def relayed_in(msg: Message) -> list[Address]:
    return [
        decode_xor_address(v, msg.transaction_id) for v in msg.get_all(Attr.XOR_RELAYED_ADDRESS)
    ]


REQUESTED6 = ((Attr.REQUESTED_ADDRESS_FAMILY, address_family(6)),)
ADDITIONAL6 = ((Attr.ADDITIONAL_ADDRESS_FAMILY, address_family(6)),)


# -- the wire ------------------------------------------------------------------------------


def test_the_family_attributes_and_address_error_code_as_bytes() -> None:
    assert address_family(4) == b"\x01\x00\x00\x00" and address_family(6) == b"\x02\x00\x00\x00"
    # ADDRESS-ERROR-CODE (§18.13): family, 13 reserved bits, class, number, reason phrase.
    value = encode_address_error(6, 440, "Address Family not Supported")
    assert value[:4] == bytes([0x02, 0x00, 4, 40]) and value[4:] == b"Address Family not Supported"
    assert decode_address_error_untrusted(value) == (6, 440, "Address Family not Supported")
    assert decode_address_error_untrusted(bytes([0x01, 0, 5, 8])) == (4, 508, "")
    # Our dual request: RFC 8656's ADDITIONAL-ADDRESS-FAMILY (0x8000), and the draft
    # codepoint coturn reads (0x8032), IPv6 in each.
    tlvs = b"".join(struct.pack("!HH", t, len(v)) + v for t, v in dual_request())
    assert tlvs.hex() == "800000040200000080320004" + "02000000"


@pytest.mark.parametrize(
    ("attrs", "asked"),
    [
        ((), Asked(4)),
        (((Attr.REQUESTED_ADDRESS_FAMILY, b"\x01\0\0\0"),), Asked(4)),
        (REQUESTED6, Asked(6)),
        (ADDITIONAL6, Asked(4, dual=True)),
        ((*REQUESTED6, *ADDITIONAL6), (400, "Bad Request")),  # both at once
        (((Attr.ADDITIONAL_ADDRESS_FAMILY, b"\x01\0\0\0"),), (400, "Bad Request")),
        (((Attr.REQUESTED_ADDRESS_FAMILY, b"\x03\0\0\0"),), (440, "Address Family not Supported")),
        (((Attr.REQUESTED_ADDRESS_FAMILY, b"\x02"),), (400, "Bad Request")),  # too short
        # coturn's draft codepoint alone is an attribute we ignore (comprehension-optional)
        (((Attr.DRAFT_ADDITIONAL_ADDRESS_FAMILY, b"\x02\0\0\0"),), Asked(4)),
    ],
)
def test_what_an_allocate_asks_for(attrs: tuple[tuple[int, bytes], ...], asked: object) -> None:
    assert asked_untrusted(Message(Method.ALLOCATE, Class.REQUEST, attributes=attrs)) == asked


# -- the Allocate variants -----------------------------------------------------------------


def test_requested_ipv6_gives_an_ipv6_relayed_address() -> None:
    server, ports, ports6 = make_server()
    answer = allocate(server, REQUESTED6)
    assert answer.cls == Class.SUCCESS
    [raw] = answer.get_all(Attr.XOR_RELAYED_ADDRESS)
    assert raw[:2] == b"\x00\x02" and len(raw) == 20  # family IPv6, 16 address bytes
    [relayed] = relayed_in(answer)
    assert relayed in ports6.open_ports and not ports.open_ports
    assert answer.get(Attr.ADDRESS_ERROR_CODE) is None
    alloc = server.allocations[CLIENT]
    assert alloc.relayed_for(True) == relayed and alloc.relayed_for(False) is None


def test_requested_ipv6_on_a_relay_without_one_is_440() -> None:
    server, ports, _ = make_server(six=False)
    answer = allocate(server, REQUESTED6)
    assert answer.cls == Class.ERROR and answer.error() == (440, "Address Family not Supported")
    assert not ports.open_ports and not server.allocations


def test_a_dual_allocation_lists_ipv4_then_ipv6() -> None:
    server, ports, ports6 = make_server()
    answer = allocate(server, ADDITIONAL6)
    assert answer.cls == Class.SUCCESS
    four, six = relayed_in(answer)
    assert four in ports.open_ports and six in ports6.open_ports
    assert answer.get(Attr.ADDRESS_ERROR_CODE) is None
    alloc = server.allocations[CLIENT]
    assert alloc.relayed_all == (four, six)
    assert server.by_relayed[four] is alloc and server.by_relayed[six] is alloc


@pytest.mark.parametrize(("six", "limit6", "code"), [(False, 100, 440), (True, 0, 508)])
def test_a_dual_allocation_without_ipv6_is_ipv4_and_says_why(
    six: bool, limit6: int, code: int
) -> None:
    """No IPv6 address at all (440), or none free (508): the IPv4 allocation still succeeds,
    with ADDRESS-ERROR-CODE for IPv6 (§7.2)."""
    server, ports, _ = make_server(six=six, limit6=limit6)
    answer = allocate(server, ADDITIONAL6)
    assert answer.cls == Class.SUCCESS
    [four] = relayed_in(answer)
    assert four in ports.open_ports and server.allocations[CLIENT].also is None
    error = answer.get(Attr.ADDRESS_ERROR_CODE)
    assert error is not None and error[0] == 0x02  # for IPv6
    assert decode_address_error_untrusted(error)[1] == code


def test_both_family_attributes_at_once_is_400() -> None:
    server, ports, ports6 = make_server()
    answer = allocate(server, (*REQUESTED6, *ADDITIONAL6))
    assert answer.error() == (400, "Bad Request")
    assert not ports.open_ports and not ports6.open_ports


def test_a_dual_allocation_counts_once_and_closes_both_sockets() -> None:
    server, ports, ports6 = make_server(limits=Limits(allocations_per_user=1))
    assert allocate(server, ADDITIONAL6).cls == Class.SUCCESS
    assert len(server.table) == 1
    second = allocate(server, ADDITIONAL6, src=("203.0.113.1", 40001))
    assert second.error() == (486, "Allocation Quota Reached")  # one allocation, not two
    assert len(ports.open_ports) == len(ports6.open_ports) == 1
    server.poll(10_000.0)  # past its lifetime
    assert not ports.open_ports and not ports6.open_ports and not server.by_relayed
    assert server.stats["expired"] == 1


# -- permissions, channels and data per family ---------------------------------------------


class Relayed:
    """A client with an allocation on a TurnServer, exchanging through it sans-IO."""

    def __init__(self, server: TurnServer, ipv6: bool, src: Address = CLIENT, name: str = "a"):
        self.server, self.src = server, src
        self.client = TurnClient(SERVER, *credentials(name), ipv6=ipv6)
        self.to_peers: list[Out] = []
        self.events: list[object] = []
        self.deliver(self.client.start(0.0))

    def deliver(self, sent: list[tuple[bytes, Address]], now: float = 1.0) -> None:
        while sent:
            data, _ = sent.pop(0)
            if looks_like_channel_data(data):
                outs = self.server.handle_channel_data(data, self.src, now)
            else:
                msg = parse_message_untrusted(data)
                outs = self.server.handle_request(msg, data, self.src, now)
            for out in outs:
                if out.dest != self.src:
                    self.to_peers.append(out)
                elif looks_like_stun(out.data):
                    sent += self.client.handle(parse_message_untrusted(out.data), SERVER, now) or []
        self.events += self.client.pop_events()

    def received(self, outs: list[Out]) -> list[tuple[bytes, Address]]:
        """What the client makes of the server's datagrams to it."""
        got = []
        for out in outs:
            assert out.dest == self.src and out.via is None
            if looks_like_channel_data(out.data):
                inner = self.client.unwrap_channel(out.data, SERVER)
            else:
                inner = self.client.unwrap(parse_message_untrusted(out.data), SERVER)
            assert inner is not None
            got.append(inner)
        return got


def test_a_dual_allocation_permits_and_relays_to_both_families() -> None:
    server, _, _ = make_server()
    a = Relayed(server, ipv6=True)
    [allocated] = a.events
    assert isinstance(allocated, Allocated) and allocated.relayed6 is not None
    four, six = allocated.relayed, allocated.relayed6
    assert ":" not in four[0] and six[0] == RELAY6
    assert a.client.families == {4, 6}
    a.deliver(a.client.permit([PEER4[0], PEER6[0]], 1.0))
    assert server.stats["permission"] == 2 and a.events == [allocated]  # none refused
    # Send indications: out of the relayed socket of the peer's family.
    a.deliver([a.client.wrap(b"to six", PEER6), a.client.wrap(b"to four", PEER4)])
    assert a.to_peers == [Out(b"to six", PEER6, six), Out(b"to four", PEER4, four)]
    # From peers, on either relayed socket: Data indications to the client.
    got = a.received(
        server.handle_peer(b"six here", six, PEER6, 2.0)
        + server.handle_peer(b"four here", four, PEER4, 2.0)
    )
    assert got == [(b"six here", PEER6), (b"four here", PEER4)]
    # Channels, one per family.
    a.deliver(a.client.bind_channel(PEER6, 2.0) + a.client.bind_channel(PEER4, 2.0))
    assert set(a.client.channels) == {PEER6, PEER4} and server.stats["channel_bind"] == 2
    a.to_peers.clear()
    a.deliver([a.client.wrap(b"by channel", PEER6)])
    assert a.to_peers == [Out(b"by channel", PEER6, six)]
    [back] = server.handle_peer(b"channel back", six, PEER6, 3.0)
    channel, payload = parse_channel_data_untrusted(back.data)
    assert channel == a.client.channels[PEER6] and payload == b"channel back"


@pytest.mark.parametrize("relay_family", [4, 6])
def test_a_single_family_allocation_refuses_peers_of_the_other_with_443(relay_family: int) -> None:
    """An IPv4 allocation, and one on a relay with an IPv6 address alone (`--relay-address`
    given once, an IPv6 one: every allocation is IPv6 there, as before there were families)."""
    server, _, _ = make_server()
    allowed, other = PEER4, PEER6
    if relay_family == 6:
        policy = TurnPolicy(secret=SECRET, allowed_peers=INTERNET)
        server = TurnServer(FakePorts(RELAY6), policy, wallclock=time.time())
        allowed, other = PEER6, PEER4
    a = Relayed(server, ipv6=False)
    assert a.client.families == {relay_family}
    a.deliver(a.client.permit([allowed[0], other[0]], 1.0))
    [refused] = a.events[1:]
    assert isinstance(refused, PermissionRefused) and refused.peer_ip == other[0]
    assert "443" in refused.reason and server.stats["peer_family_mismatch"] == 1
    # A ChannelBind to the other family is refused likewise, and nothing is sent there.
    a.deliver(a.client.bind_channel(other, 1.0))
    assert other not in a.client.channels and server.stats["peer_family_mismatch"] == 2


def test_two_dual_allocations_reach_each_other_inside_the_relay_over_ipv6() -> None:
    server, _, _ = make_server()
    a = Relayed(server, ipv6=True, src=CLIENT, name="alice")
    b = Relayed(server, ipv6=True, src=("203.0.113.3", 40000), name="bob")
    assert a.client.relayed6 and b.client.relayed6
    a.deliver(a.client.permit([RELAY6], 1.0))
    b.deliver(b.client.permit([RELAY6], 1.0))
    assert server.stats["permission"] == 2  # our own address: for allocations of ours
    send, _ = a.client.wrap(b"hello bob", b.client.relayed6)
    outs = server.handle_request(parse_message_untrusted(send), send, a.src, 2.0)
    assert server.stats["relayed_inside"] == 1
    assert b.received(outs) == [(b"hello bob", a.client.relayed6)]


# -- the peer filter on IPv6 ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "refused"),
    [
        ("::1", True),  # loopback
        ("fe80::1", True),  # link-local
        ("fd12:3456::1", True),  # unique local (fc00::/7)
        ("fc00::1", True),
        ("::ffff:198.18.0.1", True),  # IPv4-mapped: judged as the IPv4 it is (benchmarking)
        ("::ffff:127.0.0.1", True),
        ("::ffff:8.8.8.8", False),  # ... and a public one as public
        ("64:ff9b::c612:1", True),  # NAT64 of 198.18.0.1
        ("64:ff9b::808:808", False),  # NAT64 of 8.8.8.8
        ("2001:db8::1", True),  # documentation, unless allowed
        ("ff02::1", True),  # multicast
        ("ff0e::1", True),
        ("::", True),  # unspecified
        ("2606:4700::1111", False),  # a global unicast address
        (RELAY6, True),  # the relay itself
    ],
)
def test_the_peer_filter_judges_ipv6_as_it_does_ipv4(peer: str, refused: bool) -> None:
    server, _, _ = make_server(allowed_peers=[])
    assert (server.peer_refusal(peer) is not None) == refused, server.peer_refusal(peer)


def test_an_allowed_ipv6_range_is_relayed_to_and_own_addresses_never_are() -> None:
    server, _, _ = make_server(allowed_peers=[ipaddress.ip_network("2001:db8::/32")])
    assert server.peer_refusal("2001:db8:2::2") is None
    assert server.peer_refusal(RELAY6) is not None  # our own, though in the allowed range
    assert server.peer_refusal("::1") == "loopback"  # not opened by a range allowance


# -- our client ------------------------------------------------------------------------------


def test_our_client_asks_for_a_dual_allocation_and_takes_ipv4_alone_with_the_reason() -> None:
    server, _, _ = make_server(six=False)
    a = Relayed(server, ipv6=True)
    [allocated] = a.events
    assert isinstance(allocated, Allocated) and allocated.relayed6 is None
    assert a.client.relayed6 is None and a.client.families == {4}
    assert a.client.ipv6_refused == "440 Address Family not Supported"


@pytest.mark.parametrize("code", [400, 420])
def test_an_old_server_that_refuses_the_attribute_is_asked_again_without(code: int) -> None:
    """A relay that answers 400 or 420 (Unknown Attribute) to ADDITIONAL-ADDRESS-FAMILY is
    asked again without it: an IPv4 allocation, as before there were families."""
    server, _, _ = make_server()
    user, password = credentials()
    client = TurnClient(SERVER, user, password, ipv6=True)
    refusals = 0
    sent = client.start(0.0)
    while sent:
        data, _ = sent.pop(0)
        msg = parse_message_untrusted(data)
        if msg.has(Attr.ADDITIONAL_ADDRESS_FAMILY) and msg.has(Attr.USERNAME):
            refusals += 1  # the old server: it knows no such attribute
            key = long_term_key(user, "cp", password)
            err = [(Attr.ERROR_CODE, encode_error_code(code, "Unknown Attribute"))]
            outs = reply(msg, CLIENT, key, err, Class.ERROR)
        else:
            outs = server.handle_request(msg, data, CLIENT, 0.0)
        for out in outs:
            sent += client.handle(parse_message_untrusted(out.data), SERVER, 0.0) or []
    [event] = client.pop_events()
    assert isinstance(event, Allocated) and event.relayed6 is None and refusals == 1
    assert not client.ipv6 and client.families == {4}


def test_the_relay_base_offers_both_relayed_candidates_and_permits_both_families() -> None:
    server, _, _ = make_server()
    user, password = credentials()
    relay = RelayBase(TurnOffer(SERVER, user, password), None, off=False, ipv6=True)
    turn_out = relay.gather(relay.offer, 0.0)  # type: ignore[arg-type]
    assert relay.turn is not None
    a = Relayed.__new__(Relayed)
    a.server, a.src, a.client, a.to_peers, a.events = server, CLIENT, relay.turn, [], []
    a.deliver(turn_out)
    kinds = [(c.kind, c.address) for c in relay.candidates()]
    assert kinds == [
        (CandidateType.RELAY, relay.relayed),
        (CandidateType.RELAY, relay.relayed6),
    ] and relay.families == {4, 6}
    ready = PeerReady(
        "bob",
        candidates=(
            Candidate.make(CandidateType.HOST, ("198.18.0.2", 5000)),  # private: never
            Candidate.make(CandidateType.HOST, ("fe80::2", 5000)),  # link-local: never
            Candidate.make(CandidateType.HOST, PEER6),  # a global IPv6 host address
            Candidate.make(CandidateType.SRFLX, PEER4),
        ),
        remote_ufrag="u",
        remote_pwd="p" * 22,
        controlling=True,
        peer_key=b"k" * 32,
    )
    a.deliver(relay.permit(ready, 1.0))
    assert set(relay.turn.permissions) == {PEER4[0], PEER6[0]}
    assert server.stats["permission"] == 2


@pytest.mark.parametrize(
    ("families", "through"), [({4}, {PEER4}), ({4, 6}, {PEER4, PEER6}), ({6}, {PEER6})]
)
def test_pairs_through_the_relay_follow_the_families_of_the_allocation(
    families: set[int], through: set[Address]
) -> None:
    checklist = Checklist(Nominator(RelayMode.AUTO, False), True, 0.0, families)
    cands = [
        Candidate.make(CandidateType.SRFLX, PEER4),
        Candidate.make(CandidateType.HOST, PEER6),
        Candidate.make(CandidateType.HOST, ("fe80::2", 5000)),
        Candidate.make(CandidateType.HOST, ("fd00::2", 5000)),
        Candidate.make(CandidateType.HOST, ("198.18.0.2", 5000)),
    ]
    checklist.form(cands, [Base.HOST, Base.RELAY])
    assert {p.remote.address for p in checklist if p.base == Base.RELAY} == through
    assert len([p for p in checklist if p.base == Base.HOST]) == len(cands)


# -- on loopback, through real sockets -------------------------------------------------------


@pytest.mark.skipif(not ipv6_loopback(), reason="this host has no IPv6 (::1 cannot be bound)")
def test_a_dual_allocation_on_loopback_relays_to_an_ipv6_peer_and_back() -> None:
    """`callpeer-rendezvous --relay-address 127.0.0.1 --relay-address ::1`: a caller over IPv4
    gets both relayed addresses, and datagrams go between it and a peer on ::1 through the
    IPv6 one, as Send/Data indications and on a channel."""

    async def scenario() -> None:
        policy = TurnPolicy(secret=SECRET, allow_loopback_peers=True)
        server = RendezvousServer.with_relay("127.0.0.1", policy=policy, relay_host6="::1")
        await server.start("127.0.0.1", 0)
        shell = TurnShell(TurnClient(server.address, *credentials(), ipv6=True))
        try:
            await shell.start()
            await asyncio.wait_for(shell.allocated.wait(), 5)
            relayed, relayed6 = shell.client.relayed, shell.client.relayed6
            assert relayed is not None and relayed[0] == "127.0.0.1"
            assert relayed6 is not None and relayed6[0] == "::1"
            ports = server.relay_ports
            assert ports is not None and len(ports.sockets) == 2
            loop = asyncio.get_running_loop()
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as peer:
                peer.bind(("::1", 0))
                peer.setblocking(False)  # the relay runs in this loop: never block it
                peer_addr: Address = tuple(peer.getsockname()[:2])
                shell.endpoint.send_all(shell.client.permit(["::1"], loop.time()))
                await until(lambda: server.stats["permission"] >= 1)
                peer.sendto(b"from the peer", relayed6)
                await until(lambda: shell.received)
                assert shell.received[0] == (b"from the peer", peer_addr)
                shell.endpoint.send(*shell.client.wrap(b"to the peer", peer_addr))
                data, src = await asyncio.wait_for(loop.sock_recvfrom(peer, 100), 3)
                assert (data, src[:2]) == (b"to the peer", relayed6)
                shell.endpoint.send_all(shell.client.bind_channel(peer_addr, loop.time()))
                await until(lambda: peer_addr in shell.client.channels)
                shell.endpoint.send(*shell.client.wrap(b"by channel", peer_addr))
                data, src = await asyncio.wait_for(loop.sock_recvfrom(peer, 100), 3)
                assert (data, src[:2]) == (b"by channel", relayed6)
                peer.sendto(b"channel back", relayed6)
                await until(lambda: len(shell.received) == 2)
                assert shell.received[1] == (b"channel back", peer_addr)
            shell.close()
            await until(lambda: not ports.sockets)  # released: both closed
        finally:
            server.close()

    asyncio.run(scenario())


def test_relay_address_may_be_given_twice_once_per_family() -> None:
    assert relay_addresses(["::1", "127.0.0.1"]) == ("127.0.0.1", "::1")
    assert relay_addresses(["192.0.2.1"]) == ("192.0.2.1", None)
    with pytest.raises(ValueError, match="goes with an IPv4 one"):
        relay_addresses(["::1"])  # a default Allocate asks for IPv4, which it could not give
    assert relay_addresses([]) == (None, None)
    for twice in (["127.0.0.1", "127.0.0.2"], ["::1", "::2"], ["::1", "127.0.0.1", "::2"]):
        with pytest.raises(ValueError, match="an IPv4 and an IPv6 address"):
            relay_addresses(twice)


def test_our_client_takes_a_dual_answer_by_family_whatever_its_order() -> None:
    """RFC 8656 does not say which relayed address a dual answer lists first: a relay that
    puts IPv6 first still gives the IPv4 relayed address and the IPv6 one, each as itself."""
    server, _, _ = make_server()
    user, password = credentials()
    client = TurnClient(SERVER, user, password, ipv6=True)
    sent = client.start(0.0)
    while sent:
        data, _ = sent.pop(0)
        msg = parse_message_untrusted(data)
        outs = server.handle_request(msg, data, CLIENT, 0.0)
        for out in outs:
            data = out.data
            answer = parse_message_untrusted(data)
            relayed = answer.get_all(Attr.XOR_RELAYED_ADDRESS)
            if len(relayed) == 2:  # swap them, and sign the answer again
                others = [(t, v) for t, v in answer.attributes if t != Attr.XOR_RELAYED_ADDRESS]
                attrs = [(Attr.XOR_RELAYED_ADDRESS, v) for v in reversed(relayed)] + [
                    (t, v) for t, v in others if t not in (Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT)
                ]
                key = long_term_key(user, "cp", password)
                data = reply(msg, CLIENT, key, attrs)[0].data
            sent += client.handle(parse_message_untrusted(data), SERVER, 0.0) or []
    [event] = client.pop_events()
    assert isinstance(event, Allocated)
    assert ":" not in event.relayed[0] and event.relayed6 is not None and ":" in event.relayed6[0]
