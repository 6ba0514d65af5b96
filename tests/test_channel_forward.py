"""The relay's C forwarder (rendezvous/channel_forward.c) on real loopback sockets: ChannelData
to its peer without the header, a peer's answer under it, a channel between two allocations
re-headed, and everything it holds no live route for handed back exactly as socket.recvfrom
gives it; its table checked against a dict under random routes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from rendezvous import batched_routes
from rendezvous._channel_forward import BATCH
from rendezvous._channel_forward import Forwarder
from rendezvous.batched_routes import CLIENTS
from rendezvous.batched_routes import PEERS
from rendezvous.batched_routes import STRIP
from rendezvous.batched_routes import forwarder_missing
from rendezvous.running import forwarding
from rendezvous.server import RendezvousServer

FAR = 1e12  # an expiry no test reaches


def test_the_forwarder_was_built_at_install() -> None:
    """`make test` installs with a C compiler: the forwarder must be there, or the relay runs
    at half its rate without anyone noticing."""
    assert forwarder_missing() is None


def udp(family: int = socket.AF_INET, host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


@contextlib.contextmanager
def sockets(count: int) -> Iterator[list[socket.socket]]:
    made = [udp() for _ in range(count)]
    try:
        yield made
    finally:
        for sock in made:
            sock.close()


def name(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return host, port


def channel_data(channel: int, data: bytes, pad: bytes = b"") -> bytes:
    return struct.pack("!HH", channel, len(data)) + data + pad


def arrived(sock: socket.socket, wait: float = 1.0) -> list[tuple[bytes, tuple[str, int]]]:
    """Every datagram waiting on sock, once the first has come (loopback: at once)."""
    got: list[tuple[bytes, tuple[str, int]]] = []
    end = time.monotonic() + wait
    while time.monotonic() < end:
        try:
            got.append(sock.recvfrom(70000))
        except BlockingIOError:
            if got:
                break
            time.sleep(0.01)
    return got


Drained = tuple[int, int, int, bool, list[tuple[bytes, tuple[Any, ...]]]]


def drained(forwarder: Forwarder, side: int, sock: socket.socket, now: float = 0.0) -> Drained:
    """Everything waiting on sock, through the forwarder (the datagrams are on loopback:
    they are queued by the time sendto returns)."""
    return forwarder.drain(side, sock.fileno(), now, 4096, 4096)


def new() -> Forwarder:
    return Forwarder(secrets.randbits(64))


def test_channel_data_goes_to_its_peer_bare_and_the_rest_comes_back_as_recvfrom_gives_it() -> None:
    with sockets(4) as (main, client, relay, peer):
        forwarder = new()
        forwarder.route(
            CLIENTS, main.fileno(), name(client), 0x4000, relay.fileno(), name(peer), STRIP, FAR
        )
        sent = [
            channel_data(0x4000, b"voice 1"),
            channel_data(0x4001, b"no such channel"),
            b"\x00\x01\x00\x00" + bytes(16),  # a Binding: the full rules' (or Python's)
            channel_data(0x4000, b"cut short")[:-1],  # its length says more than it has
            channel_data(0x4000, b"padded", b"\x00\x00"),  # UDP needs none; dropped
            b"",
            b"\x40",
        ]
        for data in sent:
            client.sendto(data, name(main))
        alone, headed, errors, dry, rest = drained(forwarder, CLIENTS, main)
        assert (alone, headed, errors, dry) == (2, 0, 0, True)
        assert rest == [(data, name(client)) for i, data in enumerate(sent) if i in (1, 2, 3, 5, 6)]
        assert arrived(peer) == [(b"voice 1", name(relay)), (b"padded", name(relay))]


def test_a_peers_datagram_goes_to_its_client_under_the_channel_header() -> None:
    with sockets(5) as (main, client, relay, peer, stranger):
        forwarder = new()
        forwarder.route(
            PEERS, relay.fileno(), name(peer), 0, main.fileno(), name(client), 0x4ABC, FAR
        )
        peer.sendto(b"hello", name(relay))
        stranger.sendto(b"let me in", name(relay))
        big = os.urandom(65000)
        peer.sendto(big, name(relay))
        alone, headed, errors, dry, rest = drained(forwarder, PEERS, relay)
        assert (alone, headed, errors, dry) == (0, 2, 0, True)
        assert rest == [(b"let me in", name(stranger))]
        assert arrived(client) == [
            (b"\x4a\xbc\x00\x05hello", name(main)),
            (struct.pack("!HH", 0x4ABC, len(big)) + big, name(main)),
        ]
        # The route is the relayed socket's: the same peer on another relayed socket is not it.
        with sockets(1) as (other_relay,):
            peer.sendto(b"elsewhere", name(other_relay))
            assert drained(forwarder, PEERS, other_relay)[4] == [(b"elsewhere", name(peer))]


def test_a_channel_between_two_allocations_takes_the_other_clients_channel() -> None:
    with sockets(3) as (main, one, other):
        forwarder = new()
        forwarder.route(
            CLIENTS, main.fileno(), name(one), 0x4000, main.fileno(), name(other), 0x4005, FAR
        )
        one.sendto(channel_data(0x4000, b"abc", b"\x00"), name(main))
        assert drained(forwarder, CLIENTS, main)[:2] == (0, 1)
        assert arrived(other) == [(channel_data(0x4005, b"abc"), name(main))]


def test_an_expired_or_forgotten_route_forwards_nothing() -> None:
    with sockets(4) as (main, client, relay, peer):
        forwarder = new()
        fd = main.fileno()
        forwarder.route(CLIENTS, fd, name(client), 0x4000, relay.fileno(), name(peer), STRIP, 100.0)
        frame = channel_data(0x4000, b"x")
        client.sendto(frame, name(main))
        assert drained(forwarder, CLIENTS, main, now=99.9)[0] == 1
        client.sendto(frame, name(main))
        assert drained(forwarder, CLIENTS, main, now=100.0)[4] == [(frame, name(client))]
        assert forwarder.routes(CLIENTS) == 1  # still held: expiry is checked per datagram
        assert forwarder.unroute(CLIENTS, fd, name(client), 0x4000) is True
        assert forwarder.unroute(CLIENTS, fd, name(client), 0x4000) is False
        assert forwarder.routes(CLIENTS) == 0
        client.sendto(frame, name(main))
        assert drained(forwarder, CLIENTS, main)[4] == [(frame, name(client))]
        assert arrived(peer, wait=0.1) == [(b"x", name(relay))]  # the first alone


def test_ipv4_clients_of_a_dual_stack_socket_are_routed_by_their_plain_address() -> None:
    """An IPv6 socket sees IPv4 clients as ::ffff:a.b.c.d; routes name them plainly, as the
    rest of the server does, and what comes back is what recvfrom would give."""
    main = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    main.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    main.bind(("::", 0))
    main.setblocking(False)
    with main, sockets(3) as (client, relay, peer):
        port = main.getsockname()[1]
        forwarder = new()
        forwarder.route(
            CLIENTS, main.fileno(), name(client), 0x4000, relay.fileno(), name(peer), STRIP, FAR
        )
        client.sendto(channel_data(0x4000, b"over six"), ("127.0.0.1", port))
        client.sendto(channel_data(0x4001, b"unrouted"), ("127.0.0.1", port))
        alone, _, _, _, rest = drained(forwarder, CLIENTS, main)
        assert alone == 1
        assert rest == [
            (channel_data(0x4001, b"unrouted"), ("::ffff:127.0.0.1", name(client)[1], 0, 0))
        ]
        assert arrived(peer) == [(b"over six", name(relay))]
        # and the answer to an IPv4 client leaves the IPv6 socket
        forwarder.route(
            PEERS, relay.fileno(), name(peer), 0, main.fileno(), name(client), 0x4000, FAR
        )
        peer.sendto(b"back", name(relay))
        assert drained(forwarder, PEERS, relay)[1] == 1
        assert arrived(client) == [(channel_data(0x4000, b"back"), ("127.0.0.1", port))]


def test_a_drain_stops_at_its_limit_and_at_the_full_rules_share() -> None:
    with sockets(2) as (main, client):
        main.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        forwarder = new()
        for i in range(300):
            client.sendto(b"%d" % i, name(main))
        fd = main.fileno()
        *_, dry, rest = forwarder.drain(CLIENTS, fd, 0.0, 10, 4096)
        assert (dry, len(rest)) == (False, 10)
        *_, dry, more = forwarder.drain(CLIENTS, fd, 0.0, 4096, 100)
        assert (dry, len(more)) == (False, 2 * BATCH)  # the batch that passed 100 ends it
        *_, dry, last = forwarder.drain(CLIENTS, fd, 0.0, 4096, 4096)
        assert dry is True
        assert [d for d, _ in rest + more + last] == [b"%d" % i for i in range(300)]


def test_garbage_is_handed_back_whole_and_nothing_is_forwarded() -> None:
    with sockets(4) as (main, client, relay, peer):
        main.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        forwarder = new()
        forwarder.route(
            CLIENTS, main.fileno(), ("127.0.0.1", 9), 0x4000, relay.fileno(), name(peer), STRIP, FAR
        )
        junk = [os.urandom(n) for n in (0, 1, 3, 4, 5, 172, 1500, 9000, 65507)]
        junk += [b"\x40\x00" + os.urandom(n) for n in range(0, 8)]
        for data in junk:
            client.sendto(data, name(main))
        alone, headed, errors, dry, rest = drained(forwarder, CLIENTS, main)
        assert (alone, headed, errors, dry) == (0, 0, 0, True)
        assert rest == [(data, name(client)) for data in junk]
        assert arrived(peer, wait=0.1) == []


def test_bad_arguments_are_refused_with_errors_not_crashes() -> None:
    with sockets(2) as (main, peer):
        forwarder = new()
        fd = main.fileno()
        with pytest.raises(ValueError, match="side is 0"):
            forwarder.route(2, fd, name(peer), 0x4000, fd, name(peer), STRIP, FAR)
        with pytest.raises(ValueError, match="is not an address"):
            forwarder.route(CLIENTS, fd, ("not an address", 1), 0x4000, fd, name(peer), -1, FAR)
        with pytest.raises(ValueError, match="is not an address"):
            forwarder.route(CLIENTS, fd, ("::1", 1), 0x4000, fd, name(peer), -1, FAR)  # on IPv4
        with pytest.raises(ValueError, match="port out of range"):
            forwarder.route(CLIENTS, fd, ("127.0.0.1", 70000), 0x4000, fd, name(peer), -1, FAR)
        with pytest.raises(ValueError, match="bad out_channel"):
            forwarder.route(PEERS, fd, name(peer), 0, fd, name(peer), STRIP, FAR)  # no header
        with pytest.raises(TypeError, match="an address is a"):
            forwarder.route(CLIENTS, fd, "127.0.0.1", 0x4000, fd, name(peer), -1, FAR)  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="initialised once"):
            forwarder.__init__(1)  # type: ignore[misc]
        assert forwarder.routes(CLIENTS) == forwarder.routes(PEERS) == 0
    closed = udp()
    fd = closed.fileno()
    closed.close()
    with pytest.raises(OSError, match="Bad file descriptor"):
        new().drain(CLIENTS, fd, 0.0, 10, 10)
    with pytest.raises(OSError, match="Bad file descriptor"):
        new().route(CLIENTS, fd, ("127.0.0.1", 1), 0x4000, fd, ("127.0.0.1", 2), -1, FAR)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(1, 300), st.integers(0x4000, 0x4003)),
        max_size=600,
    )
)
def test_the_table_holds_exactly_what_was_routed_and_not_unrouted(
    ops: list[tuple[bool, int, int]],
) -> None:
    """Random routes and unroutes on few keys (so probe chains collide, grow and shift back
    on deletion): the table agrees with a set at every step."""
    with sockets(1) as (sock,):
        fd = sock.fileno()
        forwarder = new()
        model: set[tuple[int, int]] = set()
        for add, port, channel in ops:
            src = ("127.0.0.1", port)
            if add:
                forwarder.route(CLIENTS, fd, src, channel, fd, src, STRIP, FAR)
                model.add((port, channel))
            else:
                assert forwarder.unroute(CLIENTS, fd, src, channel) is ((port, channel) in model)
                model.discard((port, channel))
            assert forwarder.routes(CLIENTS) == len(model)
        for port, channel in sorted(model):
            assert forwarder.unroute(CLIENTS, fd, ("127.0.0.1", port), channel)
        assert forwarder.routes(CLIENTS) == 0


def test_a_refresh_stops_the_batch_and_what_follows_it_comes_back_in_order() -> None:
    """A Refresh may end the allocation (lifetime 0): the frames behind it are the full rules'
    to judge once it has been applied, not the forwarder's."""
    with sockets(4) as (main, client, relay, peer):
        forwarder = new()
        forwarder.route(
            CLIENTS, main.fileno(), name(client), 0x4000, relay.fileno(), name(peer), STRIP, FAR
        )
        refresh = b"\x00\x04\x00\x00" + bytes(16)
        sent = [channel_data(0x4000, b"before"), refresh, channel_data(0x4000, b"after")]
        for data in sent * 2:  # a Refresh ends a drain (here its first batch, of 3)
            client.sendto(data, name(main))
        alone, _, _, dry, rest = forwarder.drain(CLIENTS, main.fileno(), 0.0, 3, 4096)
        assert (alone, dry) == (1, False)
        assert rest == [(refresh, name(client)), (sent[2], name(client))]
        assert drained(forwarder, CLIENTS, main)[0] == 1  # the second "before"
        assert arrived(peer) == [(b"before", name(relay))] * 2


def test_forgetting_a_socket_drops_every_route_that_names_it() -> None:
    """Before a relayed socket closes (its descriptor number goes to the next socket), every
    route reading or sending by it goes, both sides; the others stay."""
    with sockets(5) as (main, client, relay, other_relay, peer):
        forwarder = new()
        fd, gone = main.fileno(), relay.fileno()
        for port, out in ((1000, gone), (1001, other_relay.fileno())):
            forwarder.route(CLIENTS, fd, ("127.0.0.1", port), 0x4000, out, name(peer), STRIP, FAR)
        forwarder.route(PEERS, gone, name(peer), 0, fd, name(client), 0x4000, FAR)
        forwarder.route(PEERS, other_relay.fileno(), name(peer), 0, fd, name(client), 0x4000, FAR)
        assert forwarder.forget(gone) == 2
        assert (forwarder.routes(CLIENTS), forwarder.routes(PEERS)) == (1, 1)
        assert forwarder.unroute(CLIENTS, fd, ("127.0.0.1", 1001), 0x4000)
        assert forwarder.unroute(PEERS, other_relay.fileno(), name(peer), 0)


def test_a_route_whose_expiry_is_not_a_number_forwards_nothing() -> None:
    with sockets(4) as (main, client, relay, peer):
        forwarder = new()
        forwarder.route(
            CLIENTS,
            main.fileno(),
            name(client),
            0x4000,
            relay.fileno(),
            name(peer),
            STRIP,
            float("nan"),
        )
        client.sendto(channel_data(0x4000, b"x"), name(main))
        assert drained(forwarder, CLIENTS, main)[0] == 0


def test_a_channel_outside_channel_numbers_and_an_unready_forwarder_are_refused() -> None:
    with sockets(1) as (sock,):
        fd = sock.fileno()
        for channel in (0x3FFF, 0x8000, -1):
            with pytest.raises(ValueError, match="a channel is"):
                new().route(CLIENTS, fd, name(sock), channel, fd, name(sock), STRIP, FAR)
        with pytest.raises(ValueError, match="port out of range"):
            new().route(CLIENTS, fd, ("127.0.0.1", 2**32 + 80), 0x4000, fd, name(sock), -1, FAR)
        unready = Forwarder.__new__(Forwarder)
        with pytest.raises(RuntimeError, match="not initialised"):
            unready.drain(CLIENTS, fd, 0.0, 10, 10)
        with pytest.raises(RuntimeError, match="not initialised"):
            unready.route(CLIENTS, fd, name(sock), 0x4000, fd, name(sock), STRIP, FAR)


def test_the_forwarding_cost_bench_runs_each_way() -> None:
    """bench/forward_cost.py, tiny: every way of forwarding delivers what it read."""
    bench = Path(__file__).resolve().parents[1] / "bench" / "forward_cost.py"
    done = subprocess.run(
        [sys.executable, str(bench), "--datagrams", "200", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 5, done.stdout  # the header and four ways
    for row in rows[1:]:
        figures = [float(cell) for cell in row.strip("| ").split(" | ")[1:]]
        assert len(figures) == 2 and all(f > 0 for f in figures), row


def test_without_the_forwarder_the_relay_forwards_in_python_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An install without a C compiler: no forwarder, the Python fast path, and the reason in
    the server's start line."""
    monkeypatch.setattr(batched_routes, "Forwarder", None)

    async def scenario() -> None:
        server = RendezvousServer.with_relay("127.0.0.1")
        await server.start("127.0.0.1", 0)
        try:
            assert server.fast is not None and server.fast.batched is None
            assert forwarding(server) == f"in Python ({batched_routes.forwarder_missing()})"
            assert "was not built" in forwarding(server)
        finally:
            server.close()

    asyncio.run(scenario())
