"""The relay's fast path: plain Binding answers byte for byte as the full rules give them,
channel routes learned and dropped as the rules say, and a loopback relay that sends a call's
ChannelData both ways without the full rules, counted, until the allocation ends."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rendezvous.batched_routes import CLIENTS
from rendezvous.batched_routes import PEERS
from rendezvous.behaviour import Addresses
from rendezvous.behaviour import answer_binding
from rendezvous.behaviour import plain_binding_answer
from rendezvous.channel_routes import ChannelRoutes
from rendezvous.channel_routes import Route
from rendezvous.server import RendezvousServer
from rendezvous.turn_server import Out
from rendezvous.turn_server import TurnPolicy
from rendezvous.turn_server import TurnServer
from tests.test_turn import CLIENT
from tests.test_turn import PEER
from tests.test_turn import SECRET
from tests.test_turn import SERVER
from tests.test_turn import FakePorts
from tests.test_turn import allocated
from tests.test_turn import exchange
from tests.test_turn import make_server
from tests.test_turn import rest_client
from tests.turn_shell import peer_on_channel
from tests.turn_shell import rest_shell
from tests.turn_shell import until
from voip.wire.stun import Address
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import encode
from voip.wire.stun import parse_message_untrusted
from voip.wire.stun import text
from voip.wire.turn import looks_like_channel_data

LOCAL = ("203.0.113.20", 3478)

ipv4 = st.builds(socket.inet_ntoa, st.binary(min_size=4, max_size=4))
ipv6 = st.builds(
    lambda b: socket.inet_ntop(socket.AF_INET6, b), st.binary(min_size=16, max_size=16)
)


@given(
    tid=st.binary(min_size=12, max_size=12),
    host=st.one_of(ipv4, ipv6),
    port=st.integers(0, 65535),
    fingerprint=st.booleans(),
)
def test_a_plain_binding_gets_the_full_rules_answer_byte_for_byte(
    tid: bytes, host: str, port: int, fingerprint: bool
) -> None:
    data = encode(Message(Method.BINDING, Class.REQUEST, tid), fingerprint=fingerprint)
    src = (host, port)
    [full] = answer_binding(parse_message_untrusted(data), src, LOCAL, Addresses(LOCAL), "x")
    assert plain_binding_answer(data, src) == full.data


def test_any_other_datagram_is_left_to_the_full_rules() -> None:
    tid = bytes(range(12))
    plain = encode(Message(Method.BINDING, Class.REQUEST, tid))
    with_software = Message(Method.BINDING, Class.REQUEST, tid, ((Attr.SOFTWARE, text("x")),))
    classic = struct.pack("!HHI", 0x0001, 0, 0) + tid  # RFC 3489: no magic cookie
    for other in [
        encode(with_software),
        encode(with_software, fingerprint=True),
        encode(Message(Method.BINDING, Class.SUCCESS, tid)),
        encode(Message(Method.ALLOCATE, Class.REQUEST, tid)),
        classic,
        plain[:19],
        plain + b"\x00" * 4,  # a length field that disagrees with the datagram
        b"",
    ]:
        assert plain_binding_answer(other, ("203.0.113.1", 1)) is None, other
    assert plain_binding_answer(plain, ("not an address", 1)) is None


def test_routes_are_learned_from_relayed_channel_data_and_live_no_longer_than_the_rules() -> None:
    server, _ = make_server()
    client = rest_client()
    relayed = allocated(client, server).relayed
    exchange(client, server, client.bind_channel(PEER, 1.0), 1.0)
    routes = server.table.routes
    assert len(routes) == 0  # nothing relayed yet
    data, _ = client.wrap(b"by channel", PEER)
    assert server.handle_channel_data(data, CLIENT, 2.0) == [Out(b"by channel", PEER, relayed)]
    [route] = routes.to_peer.values()
    channel = client.channels[PEER]
    # The permission (300 s from its binding at 1.0) ends first: the route ends with it.
    assert route == Route(CLIENT, channel, relayed, PEER, 301.0)
    assert routes.to_client[(relayed, PEER)] is route
    assert server.next_deadline() == 301.0
    server.poll(301.0)
    assert len(routes) == 0 and not routes.to_client
    assert server.handle_channel_data(data, CLIENT, 301.5) == []  # the rules say no, too
    exchange(client, server, client.permit([PEER[0]], 302.0), 302.0)  # a refresh
    assert server.handle_channel_data(data, CLIENT, 303.0) == [Out(b"by channel", PEER, relayed)]
    assert len(routes) == 1
    server.client_gone(CLIENT)  # its allocation ended: the route with it
    assert len(routes) == 0 and not routes.to_client


def test_a_route_inside_the_relay_goes_to_the_other_clients_channel_and_ends_with_either() -> None:
    """Two allocations on one relay, each with a channel to the other's relayed address (both
    callers behind symmetric NATs): the route goes straight to the other client on its channel,
    as the full rules do, and is dropped when either allocation ends."""
    ports = FakePorts("127.0.0.1")
    server = TurnServer(
        ports, TurnPolicy(secret=SECRET, allow_loopback_peers=True), wallclock=time.time()
    )
    server.add_own_addresses(["127.0.0.1"])
    alice, bob = rest_client(name="alice"), rest_client(name="bob")
    alice_relayed = allocated(alice, server).relayed
    bob_src = ("127.0.0.1", 40000)
    exchange(bob, server, bob.start(0.0), 0.0, src=bob_src)
    bob_relayed = bob.relayed
    assert bob_relayed is not None
    exchange(alice, server, alice.bind_channel(bob_relayed, 1.0), 1.0)
    exchange(bob, server, bob.permit(["127.0.0.1"], 1.0), 1.0, src=bob_src)
    data, _ = alice.wrap(b"to bob", bob_relayed)
    assert server.handle_channel_data(data, CLIENT, 1.1) != []  # a Data indication: no route
    assert len(server.table.routes) == 0
    exchange(bob, server, bob.bind_channel(alice_relayed, 2.0), 2.0, src=bob_src)
    [out] = server.handle_channel_data(data, CLIENT, 2.1)
    assert bob.unwrap_channel(out.data, SERVER) == (b"to bob", alice_relayed)
    [route] = server.table.routes.to_peer.values()
    assert route.inside == (bob_src, bob.channels[alice_relayed]) and route.peer == bob_relayed
    assert route.expires == 301.0  # alice's permission, from her binding at 1.0, ends first
    assert not server.table.routes.to_client  # nothing of it arrives on a relayed socket
    assert server.table.relayed_ips == {"127.0.0.1": 2}  # what permissions to ourselves need
    exchange(bob, server, bob.close(3.0), 3.0, src=bob_src)  # bob's allocation ends
    assert len(server.table.routes) == 0 and server.table.relayed_ips == {"127.0.0.1": 1}


class Watcher:
    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def route_added(self, route: Route) -> None:
        self.seen.append(("added", route.channel))

    def route_removed(self, route: Route) -> None:
        self.seen.append(("removed", route.channel))


def test_a_route_learned_again_replaces_the_old_and_watchers_see_each_change() -> None:
    routes = ChannelRoutes()
    watcher = Watcher()
    routes.watchers.append(watcher)
    first = Route(CLIENT, 0x4000, LOCAL, PEER, 10.0)
    routes.learn(first)
    routes.learn(first._replace(expires=20.0))
    routes.learn(Route(CLIENT, 0x4001, LOCAL, ("203.0.113.3", 1), 30.0))
    assert routes.live(CLIENT, 0x4000, 15.0) and not routes.live(CLIENT, 0x4000, 20.0)
    routes.expire(20.0)
    assert not routes.live(CLIENT, 0x4000, 0.0) and routes.live(CLIENT, 0x4001, 0.0)
    routes.drop_client(CLIENT)
    assert len(routes) == 0 and not routes.to_client and routes.next_expiry() is None
    assert watcher.seen == [
        ("added", 0x4000),
        ("removed", 0x4000),
        ("added", 0x4000),
        ("added", 0x4001),
        ("removed", 0x4000),
        ("removed", 0x4001),
    ]


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "python"])
def test_a_loopback_relay_moves_channel_data_both_ways_on_its_fast_path(batched: bool) -> None:
    """Once the full rules have relayed on a channel, the rest of a call goes by its route:
    every frame arrives, each way, and the relay's counters count them all; after the client
    releases its allocation nothing more goes through. The same in C batches and in Python."""
    frames = 200

    async def scenario() -> None:
        secret = "fast"
        policy = TurnPolicy(secret=secret, allow_loopback_peers=True)
        server = RendezvousServer.with_relay("127.0.0.1", policy=policy)
        server.batched = batched
        await server.start("127.0.0.1", 0)
        assert server.fast is not None and (server.fast.batched is not None) == batched
        shell = rest_shell(server.address, secret)
        loop = asyncio.get_running_loop()
        try:
            await shell.start()
            await asyncio.wait_for(shell.allocated.wait(), 5)
            relayed = shell.client.relayed
            assert relayed is not None and server.turn is not None and server.fast is not None
            slow: list[bytes] = []  # what the full rules see of the call's data, either way
            full_rules, full_rules_peer = server.fast.slow, server.fast.slow_peer

            def counted(data: bytes, src: Address, local: Address, now: float) -> None:
                slow.extend([data] if looks_like_channel_data(data) else [])
                full_rules(data, src, local, now)

            def counted_peer(data: bytes, relayed: Address, peer: Address) -> None:
                slow.append(data)
                full_rules_peer(data, relayed, peer)

            server.fast.slow, server.fast.slow_peer = counted, counted_peer
            async with peer_on_channel(shell) as (peer, peer_addr):
                for i in range(frames):
                    shell.endpoint.send(*shell.client.wrap(b"to peer %d" % i, peer_addr))
                got = [await asyncio.wait_for(loop.sock_recv(peer, 100), 3) for _ in range(frames)]
                assert got == [b"to peer %d" % i for i in range(frames)]
                assert len(server.turn.table.routes) == 1
                [route] = server.turn.table.routes.to_peer.values()
                # The server's timer is due by the route's end, though its data moves no other
                # deadline: --offload's kernel entry goes only when the timer sweeps it.
                assert server._timer is not None and server._timer._when <= route.expires
                for i in range(frames):
                    peer.sendto(b"to client %d" % i, relayed)
                await until(lambda: len(shell.received) == frames)
                assert [d for d, _ in shell.received] == [
                    b"to client %d" % i for i in range(frames)
                ]
                assert server.stats["relayed_to_peer"] == frames
                assert server.stats["relayed_to_client"] == frames
                assert len(slow) == 1  # the first frame, which taught the route
                held = server.fast.batched
                if held is not None:  # both ways in the C tables
                    assert (held.routes(CLIENTS), held.routes(PEERS)) == (1, 1)
                shell.close()  # a Refresh of lifetime 0
                await until(lambda: server.stats["released"] == 1)
                assert len(server.turn.table.routes) == 0
                if held is not None:
                    assert (held.routes(CLIENTS), held.routes(PEERS)) == (0, 0)
                peer.sendto(b"too late", relayed)
                await asyncio.sleep(0.1)
                assert server.stats["relayed_to_client"] == frames
        finally:
            server.close()

    asyncio.run(scenario())


def test_garbage_on_the_fast_path_is_dropped_and_the_server_still_answers() -> None:
    """Short, odd and oversized datagrams on the main port cost nothing but a count."""

    async def scenario() -> None:
        server = RendezvousServer.with_relay("127.0.0.1")
        await server.start("127.0.0.1", 0)
        loop = asyncio.get_running_loop()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                for junk in [
                    b"\x40",
                    b"\x40\x00",
                    b"\x40\x00\xff\xff",
                    b"\x00\x01",
                    os.urandom(9000),
                ]:
                    sock.sendto(junk, server.address)
                ping = encode(Message(Method.BINDING, Class.REQUEST, bytes(12)))
                sock.sendto(ping, server.address)
                answer = await asyncio.wait_for(loop.sock_recv(sock, 200), 3)
                assert parse_message_untrusted(answer).cls == Class.SUCCESS
                assert server.stats["binding"] == 1
        finally:
            server.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "python"])
def test_data_behind_a_refresh_of_lifetime_zero_waits_for_it(batched: bool) -> None:
    """A client's Refresh of lifetime 0 and the frames it sent after it, read in one wake-up:
    the allocation ends first, so none of those frames reaches the peer (the C forwarder stops
    at a Refresh and hands the rest to the full rules, in order)."""

    async def scenario() -> None:
        policy = TurnPolicy(secret="s", allow_loopback_peers=True)
        server = RendezvousServer.with_relay("127.0.0.1", policy=policy)
        server.batched = batched
        await server.start("127.0.0.1", 0)
        shell = rest_shell(server.address, "s")
        loop = asyncio.get_running_loop()
        try:
            await shell.start()
            await asyncio.wait_for(shell.allocated.wait(), 5)
            async with peer_on_channel(shell) as (peer, peer_addr):
                shell.endpoint.send(*shell.client.wrap(b"taught", peer_addr))
                assert await asyncio.wait_for(loop.sock_recv(peer, 100), 3) == b"taught"
                frames = [shell.client.wrap(b"after %d" % i, peer_addr) for i in range(5)]
                shell.endpoint.send_all(shell.client.close(loop.time()))  # lifetime 0
                for frame in frames:  # sent in the same turn: read in one wake-up
                    shell.endpoint.send(*frame)
                await until(lambda: server.stats["released"] == 1)
                await asyncio.sleep(0.1)
                with pytest.raises(BlockingIOError):
                    peer.recv(100)
                assert server.stats["relayed_to_peer"] == 1
                assert server.stats["channel_unknown"] == 5
        finally:
            shell.close()
            server.close()

    asyncio.run(scenario())
