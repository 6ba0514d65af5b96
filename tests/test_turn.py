"""TURN relay and client, sans-IO: credentials, nonces, peers refused, quotas, lifetimes, data."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time

import pytest

from rendezvous.limits import Limits
from rendezvous.peer_filter import NOT_GLOBAL
from rendezvous.peer_filter import OWN_CACHE
from rendezvous.peer_filter import PeerFilter
from rendezvous.server import RECEIVE_BUFFER
from rendezvous.server import RendezvousServer
from rendezvous.turn_server import Out
from rendezvous.turn_server import TurnPolicy
from rendezvous.turn_server import TurnServer
from voip.nat.turn_client import Allocated
from voip.nat.turn_client import PermissionRefused
from voip.nat.turn_client import TurnClient
from voip.nat.turn_client import TurnFailed
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import encode
from voip.wire.stun import long_term_key
from voip.wire.stun import parse_message_untrusted
from voip.wire.stun import text
from voip.wire.stun import u32
from voip.wire.turn import REST_CREDENTIAL_TTL
from voip.wire.turn import looks_like_channel_data
from voip.wire.turn import requested_transport
from voip.wire.turn import rest_credentials
from voip.wire.turn import rest_expiry
from voip.wire.turn import rest_password
from voip.wire.turn import rest_username

SERVER = ("203.0.113.20", 3478)
CLIENT = ("203.0.113.1", 40000)
PEER = ("203.0.113.2", 50000)
SECRET = "s3cret"
# The tests' internet is a documentation range, refused by default: opened as the lab opens it.
INTERNET = ipaddress.ip_network("203.0.113.0/24")
PRIVATE = next(n for n in NOT_GLOBAL if n.version == 4 and n.prefixlen == 8)  # RFC 1918's /8


class FakePorts:
    def __init__(self, host: str = "203.0.113.20") -> None:
        self.host = host
        self.open_ports: set[tuple[str, int]] = set()
        self.next = 49152

    def open(self) -> tuple[str, int] | None:
        addr = (self.host, self.next)
        self.next += 1
        self.open_ports.add(addr)
        return addr

    def close(self, relayed: tuple[str, int]) -> None:
        self.open_ports.discard(relayed)


def make_server(**policy: object) -> tuple[TurnServer, FakePorts]:
    ports = FakePorts()
    policy.setdefault("allowed_peers", [INTERNET])
    # Simulated time starts at 0; the wall clock says now is now, so REST expiries compare right.
    server = TurnServer(ports, TurnPolicy(secret=SECRET, **policy), wallclock=time.time())  # type: ignore[arg-type]
    return server, ports


def rest_client(ttl: int = 600, name: str = "alice", secret: str = SECRET) -> TurnClient:
    user = rest_username(int(time.time()) + ttl, name)
    return TurnClient(SERVER, user, rest_password(secret, user))


def exchange(
    client: TurnClient,
    server: TurnServer,
    sent: list[tuple[bytes, tuple[str, int]]],
    now: float,
    src: tuple[str, int] = CLIENT,
) -> list[Out]:
    """Deliver client datagrams to the server and its answers back, until quiet."""
    to_peer: list[Out] = []
    while sent:
        data, _ = sent.pop(0)
        msg = parse_message_untrusted(data)
        for out in server.handle_request(msg, data, src, now):
            if out.via is not None:
                to_peer.append(out)
                continue
            answer = client.handle(parse_message_untrusted(out.data), SERVER, now)
            sent += answer or []
    return to_peer


def allocated(client: TurnClient, server: TurnServer, now: float = 0.0) -> Allocated:
    exchange(client, server, client.start(now), now)
    [event] = client.pop_events()
    assert isinstance(event, Allocated), event
    return event


def test_allocate_is_challenged_then_succeeds_with_rest_credentials() -> None:
    server, ports = make_server()
    client = rest_client()
    first = client.start(0.0)
    challenge = server.handle_request(
        parse_message_untrusted(first[0][0]), first[0][0], CLIENT, 0.0
    )
    [out] = challenge
    reply = parse_message_untrusted(out.data)
    assert reply.error() == (401, "")
    assert reply.text(Attr.REALM) == "cp" and reply.text(Attr.NONCE)
    assert len(out.data) == 52
    event = allocated(rest_client(), server)
    assert event.relayed in ports.open_ports and event.mapped == CLIENT
    assert event.lifetime == 600


def test_bad_password_is_refused() -> None:
    server, _ = make_server()
    client = rest_client(secret="not the secret")
    exchange(client, server, client.start(0.0), 0.0)
    [event] = client.pop_events()
    assert isinstance(event, TurnFailed) and "refused the credentials" in event.reason
    assert server.stats["bad_credentials"] == 1


def test_expired_rest_credential_is_refused() -> None:
    server, ports = make_server()
    client = rest_client(ttl=-10)
    exchange(client, server, client.start(0.0), 0.0)
    [event] = client.pop_events()
    assert isinstance(event, TurnFailed)
    assert server.stats["rest_expired"] >= 1 and not ports.open_ports


def test_stale_nonce_is_renewed_transparently() -> None:
    server, _ = make_server()
    client = rest_client(ttl=3600)
    allocated(client, server, now=0.0)
    later = 700.0  # past the nonce lifetime: the refresh gets 438 and retries with a new nonce
    exchange(client, server, client.permit([PEER[0]], later), later)
    assert server.stats["challenge_438"] == 1 and server.stats["permission"] == 1
    assert client.pop_events() == []


@pytest.mark.parametrize("extra", [(), ((Attr.LIFETIME, u32(600)),)])
def test_unauthenticated_request_never_gets_a_larger_reply(
    extra: tuple[tuple[int, bytes], ...],
) -> None:
    server, _ = make_server()
    req = Message(
        Method.ALLOCATE,
        Class.REQUEST,
        attributes=((Attr.REQUESTED_TRANSPORT, requested_transport()), *extra),
    )
    data = encode(req)  # 28 or 36 bytes: smaller than any 401 that carries a nonce
    assert server.handle_request(req, data, CLIENT, 0.0) == []
    assert server.stats["challenge_withheld"] == 1
    ours = rest_client().start(0.0)[0][0]
    [out] = server.handle_request(parse_message_untrusted(ours), ours, CLIENT, 0.0)
    assert len(out.data) <= len(ours)


def test_loopback_and_private_peers_are_refused() -> None:
    server, _ = make_server()
    client = rest_client()
    allocated(client, server)
    private_ip = str(next(PRIVATE.hosts()))
    exchange(
        client, server, client.permit(["127.0.0.1", private_ip, "169.254.1.1", PEER[0]], 1.0), 1.0
    )
    refused = {e.peer_ip for e in client.pop_events() if isinstance(e, PermissionRefused)}
    assert refused == {"127.0.0.1", private_ip, "169.254.1.1"}
    assert server.stats["peer_refused"] == 3 and server.stats["permission"] == 1


def test_allowed_private_range_is_relayed_to() -> None:
    server, _ = make_server(allowed_peers=[PRIVATE])
    assert server.peer_refusal(str(next(PRIVATE.hosts()))) is None
    assert server.peer_refusal("127.0.0.1") == "loopback"  # not by a private-range allowance
    assert server.peer_refusal("0.0.0.1") is not None
    loopback_ok, _ = make_server(allow_loopback_peers=True)
    assert loopback_ok.peer_refusal("127.0.0.1") is None


def test_quota_per_user() -> None:
    server, _ = make_server(limits=Limits(allocations_per_user=1))
    allocated(rest_client(), server)
    second = rest_client()
    exchange(second, server, second.start(0.0), 0.0, src=("203.0.113.1", 40001))
    [event] = second.pop_events()
    assert isinstance(event, TurnFailed) and "486" in event.reason


def test_refresh_keeps_and_expiry_releases_the_allocation() -> None:
    server, ports = make_server()
    client = rest_client()
    event = allocated(client, server)
    refresh_at = client.next_deadline()
    assert refresh_at == pytest.approx(540.0)  # lifetime minus a minute
    exchange(client, server, client.poll(540.0), 540.0)
    assert server.stats["refresh"] == 1
    server.poll(900.0)
    assert event.relayed in ports.open_ports  # refreshed at 540 s: good until 1140 s
    server.poll(1141.0)
    assert event.relayed not in ports.open_ports and server.stats["expired"] == 1


def test_close_releases_at_once() -> None:
    server, ports = make_server()
    client = rest_client()
    allocated(client, server)
    [(data, _)] = client.close(5.0)
    server.handle_request(parse_message_untrusted(data), data, CLIENT, 5.0)
    assert not ports.open_ports and server.stats["released"] == 1


def test_data_flows_both_ways_by_indication_and_by_channel() -> None:
    server, _ = make_server()
    client = rest_client()
    relayed = allocated(client, server).relayed
    # No permission yet: the peer's datagram is dropped, and so is our Send.
    assert server.handle_peer(b"early", relayed, PEER, 1.0) == []
    exchange(client, server, client.permit([PEER[0]], 1.0), 1.0)
    data, _ = client.wrap(b"hello peer", PEER)
    [out] = server.handle_request(parse_message_untrusted(data), data, CLIENT, 1.1)
    assert out == Out(b"hello peer", PEER, relayed)
    [back] = server.handle_peer(b"hello client", relayed, PEER, 1.2)
    assert client.unwrap(parse_message_untrusted(back.data), SERVER) == (b"hello client", PEER)
    # With a channel: 4 bytes of overhead instead of 36.
    exchange(client, server, client.bind_channel(PEER, 2.0), 2.0)
    data, dest = client.wrap(b"by channel", PEER)
    assert looks_like_channel_data(data) and dest == SERVER
    assert server.handle_channel_data(data, CLIENT, 2.1) == [Out(b"by channel", PEER, relayed)]
    [back] = server.handle_peer(b"channel back", relayed, PEER, 2.2)
    assert looks_like_channel_data(back.data)
    assert client.unwrap_channel(back.data, SERVER) == (b"channel back", PEER)
    # A stranger without permission still gets nothing through.
    assert server.handle_peer(b"x", relayed, ("198.51.100.9", 1), 2.3) == []


def test_retransmitted_allocate_gets_the_same_answer() -> None:
    server, _ = make_server()
    client = rest_client()
    first = client.start(0.0)
    challenge = server.handle_request(parse_message_untrusted(first[0][0]), first[0][0], CLIENT, 0)
    [(authed, _)] = client.handle(parse_message_untrusted(challenge[0].data), SERVER, 0.0) or []
    msg = parse_message_untrusted(authed)
    one = server.handle_request(msg, authed, CLIENT, 0.1)
    two = server.handle_request(msg, authed, CLIENT, 0.6)
    assert one == two and server.stats["allocate"] == 1


# -- abuse (issue: harden the rendezvous and the relay) -----------------------------------


def mapped_v6(ip: str) -> str:
    return str(ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ipaddress.IPv4Address(ip).packed))


@pytest.mark.parametrize(
    "peer",
    [
        "::ffff:127.0.0.1",
        "::ffff:7f00:1",
        mapped_v6(str(next(PRIVATE.hosts()))),
        "::ffff:0.0.0.0",
        "::127.0.0.1",  # IPv4-compatible
        "64:ff9b::7f00:1",  # NAT64's well-known prefix around loopback
    ],
)
def test_ipv4_inside_ipv6_is_judged_as_ipv4_and_gets_443_on_an_ipv4_allocation(peer: str) -> None:
    server, _ = make_server()
    assert server.peer_refusal(peer) is not None  # what it carries is refused...
    client = rest_client()
    allocated(client, server)
    exchange(client, server, client.permit([peer], 1.0), 1.0)
    [event] = client.pop_events()
    # ...and an IPv4 allocation relays to IPv4 peers only (RFC 8656 §9.1).
    assert isinstance(event, PermissionRefused) and event.reason.startswith("443"), event
    assert server.stats["permission"] == 0


@pytest.mark.parametrize(
    ("peer", "why"),
    [
        ("192.0.0.8", "not globally reachable"),
        ("198.18.0.1", "not globally reachable"),  # benchmarking: the lab's LANs
        ("198.51.100.1", "not globally reachable"),
        ("240.0.0.1", "not globally reachable"),
        ("100.64.0.1", "not globally reachable"),  # carrier-grade NAT
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("127.0.0.2", "loopback"),
    ],
)
def test_special_purpose_ranges_are_refused_by_default(peer: str, why: str) -> None:
    server, _ = make_server(allowed_peers=[])
    assert why in (server.peer_refusal(peer) or ""), server.peer_refusal(peer)
    assert server.peer_refusal("8.8.8.8") is None  # a globally reachable address is fine
    opened, _ = make_server(allowed_peers=[ipaddress.ip_network("198.18.0.0/15")])
    assert opened.peer_refusal("198.18.0.1") is None  # --allow-peer opens a range
    assert opened.peer_refusal("0.0.0.0") is not None  # but never "this host"


def test_the_relays_own_address_is_never_reached_over_the_network() -> None:
    """Relaying to the relay's own address reached services listening on 0.0.0.0 of its host.
    Now a datagram for another allocation of ours is handed to it inside the relay (two
    callers on one relay still reach each other relayed to relayed), and one for any other port
    of ours goes nowhere."""
    server, ports = make_server()  # 203.0.113.0/24 allowed, and the relay is on it
    server.add_own_addresses([SERVER[0], "203.0.113.30", "0.0.0.0"])
    alice, bob = rest_client(name="alice"), rest_client(name="bob")
    alice_relayed = allocated(alice, server).relayed
    bob_src = ("203.0.113.2", 40000)
    exchange(bob, server, bob.start(0.0), 0.0, src=bob_src)
    [bob_alloc] = [e for e in bob.pop_events() if isinstance(e, Allocated)]
    # Permission for the relay's own IP: allowed, it hosts allocations. For another IP of the
    # host that hosts none: refused.
    exchange(alice, server, alice.permit([SERVER[0], "203.0.113.30"], 1.0), 1.0)
    refused = [e for e in alice.pop_events() if isinstance(e, PermissionRefused)]
    assert [e.peer_ip for e in refused] == ["203.0.113.30"] and refused[0].reason.startswith("403")
    exchange(bob, server, bob.permit([SERVER[0]], 1.0), 1.0, src=bob_src)
    # Alice to bob's relayed address: delivered to bob inside the relay, never sent out.
    data, _ = alice.wrap(b"to bob", bob_alloc.relayed)
    [out] = server.handle_request(parse_message_untrusted(data), data, CLIENT, 1.1)
    assert out.via is None and out.dest == bob_src
    assert bob.unwrap(parse_message_untrusted(out.data), SERVER) == (b"to bob", alice_relayed)
    # Alice to the relay's listening port, or any port of its own that is no allocation: dropped.
    for port in (SERVER[1], 22, 49999):
        data, _ = alice.wrap(b"hello, services", (SERVER[0], port))
        assert server.handle_request(parse_message_untrusted(data), data, CLIENT, 1.2) == []
    assert server.stats["own_address_dropped"] == 3 and server.stats["relayed_inside"] == 1
    assert server.peer_refusal(mapped_v6(SERVER[0])) == "the relay's own address"
    assert ports.open_ports  # (both allocations still there)


def test_two_allocations_on_a_loopback_relay_reach_each_other_inside_it() -> None:
    """A relay on 127.0.0.1 that allows loopback peers does not count loopback as its own (its
    peers share it), so it used to send a datagram for another of its allocations out of one
    relayed socket and read it back in at the other: twice the work (bench/relay_load.py).
    An allocation's own relayed address is where the datagram would arrive all the same."""
    ports = FakePorts("127.0.0.1")
    server = TurnServer(
        ports, TurnPolicy(secret=SECRET, allow_loopback_peers=True), wallclock=time.time()
    )
    server.add_own_addresses(["127.0.0.1"])  # as the server adds where it listens and relays
    alice, bob = rest_client(name="alice"), rest_client(name="bob")
    alice_relayed = allocated(alice, server).relayed
    bob_src = ("127.0.0.1", 40000)
    exchange(bob, server, bob.start(0.0), 0.0, src=bob_src)
    [bob_alloc] = [e for e in bob.pop_events() if isinstance(e, Allocated)]
    assert alice_relayed[0] == bob_alloc.relayed[0] == "127.0.0.1"
    exchange(alice, server, alice.permit(["127.0.0.1"], 1.0), 1.0)
    exchange(bob, server, bob.permit(["127.0.0.1"], 1.0), 1.0, src=bob_src)
    data, _ = alice.wrap(b"to bob", bob_alloc.relayed)
    [out] = server.handle_request(parse_message_untrusted(data), data, CLIENT, 1.1)
    assert out.via is None and out.dest == bob_src  # straight to bob, not out of a socket
    assert bob.unwrap(parse_message_untrusted(out.data), SERVER) == (b"to bob", alice_relayed)
    assert server.stats["relayed_inside"] == 1 and server.stats["relayed_to_peer"] == 0


def test_allocations_are_capped_per_source_ip_and_in_all() -> None:
    server, ports = make_server(limits=Limits(allocations_per_ip=2, allocations=3))

    def allocate(name: str, src: tuple[str, int]) -> list[object]:
        client = rest_client(name=name)
        exchange(client, server, client.start(0.0), 0.0, src=src)
        return list(client.pop_events())

    for i in range(2):  # two names from one address: both get one
        assert isinstance(allocate(f"u{i}", ("203.0.113.1", 40000 + i))[0], Allocated)
    [event] = allocate("u2", ("203.0.113.1", 40002))
    assert isinstance(event, TurnFailed) and "486" in event.reason  # this source's share
    assert isinstance(allocate("u3", ("198.51.100.7", 40000))[0], Allocated)
    assert len(ports.open_ports) == 3
    [event] = allocate("u4", ("198.51.100.8", 40000))
    assert isinstance(event, TurnFailed) and "508" in event.reason  # the relay is full


def test_no_socket_to_be_had_is_508_not_an_exception() -> None:
    server, ports = make_server()
    ports.open = lambda: None  # type: ignore[method-assign]  # as at EMFILE
    client = rest_client()
    exchange(client, server, client.start(0.0), 0.0)
    [event] = client.pop_events()
    assert isinstance(event, TurnFailed) and "508" in event.reason


def test_permissions_and_channels_per_allocation_are_capped_and_purged() -> None:
    server, _ = make_server(limits=Limits(permissions_per_allocation=2, channels_per_allocation=1))
    client = rest_client(ttl=3600)
    allocated(client, server)
    peers = ["203.0.113.51", "203.0.113.52", "203.0.113.53"]
    exchange(client, server, client.permit(peers, 1.0), 1.0)
    [full] = [e for e in client.pop_events() if isinstance(e, PermissionRefused)]
    assert full.peer_ip == peers[2] and full.reason.startswith("508")
    alloc = next(iter(server.allocations.values()))
    assert set(alloc.permissions) == set(peers[:2])
    exchange(client, server, client.bind_channel((peers[0], 5000), 2.0), 2.0)
    assert len(alloc.channels) == 1
    # Permissions last 300 s, channels 600 s: past both, they are purged when next written to.
    later = 700.0
    client.permissions.clear()
    exchange(client, server, client.permit([peers[2]], later), later)
    assert set(alloc.permissions) == {peers[2]} and alloc.channels == {}


def test_a_username_of_non_ascii_digits_is_a_bad_credential_not_an_exception() -> None:
    assert rest_expiry("²:x") is None and rest_expiry("12:x") == 12
    server, _ = make_server()
    nonce = server.auth.nonces.make(CLIENT, 0.0)
    key = long_term_key("²:x", "cp", "whatever")
    req = Message(
        Method.ALLOCATE,
        Class.REQUEST,
        attributes=(
            (Attr.REQUESTED_TRANSPORT, requested_transport()),
            (Attr.USERNAME, text("²:x")),
            (Attr.REALM, text("cp")),
            (Attr.NONCE, text(nonce)),
        ),
    )
    data = encode(req, integrity_key=key)
    [out] = server.handle_request(parse_message_untrusted(data), data, CLIENT, 0.0)
    assert parse_message_untrusted(out.data).error() == (401, "")
    assert server.stats["rest_malformed"] == 1


def test_an_empty_requested_transport_gets_400() -> None:
    server, _ = make_server()
    user = rest_username(int(time.time()) + 600, "alice")
    key = long_term_key(user, "cp", rest_password(SECRET, user))
    req = Message(
        Method.ALLOCATE,
        Class.REQUEST,
        attributes=(
            (Attr.REQUESTED_TRANSPORT, b""),
            (Attr.USERNAME, text(user)),
            (Attr.REALM, text("cp")),
            (Attr.NONCE, text(server.auth.nonces.make(CLIENT, 0.0))),
        ),
    )
    data = encode(req, integrity_key=key)
    [out] = server.handle_request(parse_message_untrusted(data), data, CLIENT, 0.0)
    assert parse_message_untrusted(out.data).error() == (400, "Bad Request")


def test_channel_binds_count_against_the_permission_cap() -> None:
    """A ChannelBind installs a permission: it used to be held to the channel cap instead."""
    server, _ = make_server(limits=Limits(permissions_per_allocation=2, channels_per_allocation=64))
    client = rest_client()
    allocated(client, server)
    for i in range(3):
        exchange(client, server, client.bind_channel((f"203.0.113.{60 + i}", 5000), 1.0), 1.0)
    alloc = next(iter(server.allocations.values()))
    assert len(alloc.permissions) == 2 and len(alloc.channels) == 2
    assert server.stats["error_508"] == 1


def test_rest_credentials_are_what_the_relay_checks_and_outlast_a_long_call() -> None:
    """The one maker of REST credentials (the rendezvous for its callers, `--turn-secret`). A
    client keeps its credentials all call and the relay checks each Refresh, permission and
    channel against them, so the default lifetime must outlast the call: 600 s did not."""
    now = time.time()
    user, password = rest_credentials(SECRET, "alice", now)
    assert user == f"{int(now) + REST_CREDENTIAL_TTL}:alice"
    assert password == rest_password(SECRET, user)

    def refused_at(ttl: int) -> float | None:
        server, _ = make_server()
        client = TurnClient(SERVER, *rest_credentials(SECRET, "alice", time.time(), ttl))
        allocated(client, server)
        exchange(client, server, client.permit([PEER[0]], 0.0), 0.0)
        for second in range(1, 30 * 60):  # a half-hour call, the relay kept throughout
            exchange(client, server, client.poll(float(second)), float(second))
            if client.failed is not None:
                assert "refused the credentials" in client.failed
                return second
        return None

    assert refused_at(REST_CREDENTIAL_TTL) is None
    short = refused_at(600)
    assert short is not None and 600 < short < 900


def test_the_relays_socket_asks_for_coturns_receive_buffer() -> None:
    """Synchronised bursts from a few hundred callers overflowed the default (about 208 KiB)
    while the relay's CPU idled; as root it gets 4 MiB past net.core.rmem_max, as anyone else
    at least what it had."""

    async def buffer() -> int:
        async with RendezvousServer.with_relay("127.0.0.1") as server:
            await server.start("127.0.0.1", 0)
            assert server.endpoint is not None and server.endpoint.sock is not None
            return int(server.endpoint.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    got = asyncio.run(buffer())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:
        default = plain.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if os.geteuid() == 0:
        assert got >= RECEIVE_BUFFER > default, (got, default)  # Linux reports twice the set
    else:
        assert got >= default, (got, default)


def test_the_own_address_answers_are_kept_bounded_and_forgotten_when_the_addresses_change() -> None:
    peers = PeerFilter()
    assert not peers.is_own("203.0.113.20")
    peers.add_own(["203.0.113.20"])  # a cached "no" must not outlive the change
    assert peers.is_own("203.0.113.20") and peers.is_own(mapped_v6("203.0.113.20"))
    for i in range(OWN_CACHE + 10):  # a stranger's stream of peer addresses
        peers.is_own(f"198.18.{i // 256 % 256}.{i % 256}")
    assert len(peers._own_cache) <= OWN_CACHE
    assert peers.is_own("203.0.113.20") and not peers.is_own("198.18.0.1")
