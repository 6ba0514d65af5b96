"""The rendezvous over TCP and TLS (RFC 8656 §3.1, §12.5): real sockets on loopback, and the
sans-IO node's end of a stream."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from typing import TypeVar

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from rendezvous.cli import main as rendezvous_main
from rendezvous.logic import RendezvousLogic
from rendezvous.node import RendezvousNode
from rendezvous.running import loop_factory
from rendezvous.server import RendezvousServer
from rendezvous.stream_listener import StreamConnection
from rendezvous.stream_listener import StreamLimits
from rendezvous.stream_listener import StreamListener
from rendezvous.tls import self_signed
from rendezvous.tls import server_context
from rendezvous.turn_server import TurnPolicy
from rendezvous.turn_server import TurnServer
from voip.nat.rendezvous_client import RendezvousClient
from voip.nat.signal_events import Registered
from voip.nat.turn_client import Allocated
from voip.nat.turn_client import TurnClient
from voip.wire.stream_framing import StreamDeframer
from voip.wire.stream_framing import frame_channel_data
from voip.wire.stun import Address
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import encode
from voip.wire.stun import parse_message_untrusted
from voip.wire.turn import looks_like_channel_data
from voip.wire.turn import rest_credentials

T = TypeVar("T")
SECRET = "s3cret"
WAIT = 3.0  # s: anything on loopback comes long before


def run(coro: Coroutine[Any, Any, T], loop: str = "asyncio") -> T:
    """On asyncio's loop, or on the one `callpeer-rendezvous --loop` names (uvloop's transports
    are no subclasses of asyncio's, which the listener once refused)."""
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(asyncio.wait_for(coro, 30))


EVERY_LOOP = pytest.mark.parametrize("loop", ["asyncio", "uvloop"])


async def relay(limits: StreamLimits | None = None, tls: ssl.SSLContext | None = None) -> Any:
    """A rendezvous and relay on loopback, relaying to loopback peers, every listener on a
    port of the kernel's choosing."""
    policy = TurnPolicy(secret=SECRET, allow_loopback_peers=True)
    server = RendezvousServer.with_relay("127.0.0.1", policy=policy)
    return await server.start("127.0.0.1", 0, tls=tls, tls_port=0, stream_limits=limits)


class Conn:
    """A client's end of one connection: messages out, frames in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.deframer = StreamDeframer()
        self.frames: list[bytes] = []
        name = writer.get_extra_info("sockname")
        self.local: Address = (str(name[0]), int(name[1]))

    @classmethod
    async def open(
        cls,
        where: Address,
        tls: ssl.SSLContext | None = None,
        local: Address | None = None,
    ) -> Conn:
        reader, writer = await asyncio.open_connection(
            *where, ssl=tls, server_hostname="127.0.0.1" if tls else None, local_addr=local
        )
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def frame(self, timeout: float = WAIT) -> bytes:
        while not self.frames:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionResetError("closed")
            self.frames += self.deframer.feed(data)
        return self.frames.pop(0)

    async def closed_by_server(self, timeout: float = WAIT) -> bool:
        """Whether the server closes (or resets) this connection within `timeout`."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), timeout):
                pass
        except (ConnectionResetError, ssl.SSLError):
            return True
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def relay_and_tcp() -> AsyncIterator[tuple[Any, Conn]]:
    """A fresh relay and one client connected to it over TCP (closed after, even on failure)."""
    async with await relay() as server:
        conn = await Conn.open(server.tcp_address)
        try:
            yield server, conn
        finally:
            conn.close()


def binding() -> tuple[Message, bytes]:
    req = Message(Method.BINDING, Class.REQUEST)
    return req, encode(req, fingerprint=True)


async def bind_over(conn: Conn) -> Address | None:
    """Our address as the server saw it, from a Binding over `conn`."""
    req, data = binding()
    await conn.send(data)
    answer = parse_message_untrusted(await conn.frame())
    assert answer.transaction_id == req.transaction_id and answer.cls == Class.SUCCESS
    return answer.xor_address()


async def until(check: Callable[[], bool], timeout: float = WAIT) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "never happened"
        await asyncio.sleep(0.01)


async def turn_exchange(conn: Conn, client: TurnClient, sent: list[tuple[bytes, Address]]) -> None:
    """Requests out over the stream, answers in, retries (the 401) out again, until quiet."""
    while sent:
        for data, _ in sent:
            await conn.send(data)
        answer = parse_message_untrusted(await conn.frame())
        sent = client.handle(answer, client.server, time.monotonic()) or []


async def register_over(conn: Conn, server: Address, name: str) -> Registered:
    client = RendezvousClient(name, "nobody", server, (), ask_now=False)
    sent = client.start(time.monotonic())
    while sent:
        for data, _ in sent:
            await conn.send(data)
        answer = parse_message_untrusted(await conn.frame())
        sent = client.handle(answer, server, time.monotonic()) or []
    [event] = client.pop_events()
    assert isinstance(event, Registered), event
    return event


async def allocate_over(conn: Conn, server: Address) -> TurnClient:
    client = TurnClient(server, *rest_credentials(SECRET, "alice", time.time()))
    await turn_exchange(conn, client, client.start(time.monotonic()))
    [event] = client.pop_events()
    assert isinstance(event, Allocated), event
    return client


class UdpPeer:
    """A peer on the far side of the relay: a UDP socket on loopback."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.address: Address = self.sock.getsockname()

    async def recv(self, timeout: float = WAIT) -> tuple[bytes, Address]:
        loop = asyncio.get_running_loop()
        data, src = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 65535), timeout)
        return data, (str(src[0]), int(src[1]))

    async def send(self, data: bytes, dest: Address) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sock, data, dest)


async def relay_round_trip(conn: Conn, server: Address) -> None:
    """Allocate, bind a channel to a UDP peer, ChannelData to it and back, padded on the way
    both ways (5 bytes of payload: 3 of padding)."""
    client = await allocate_over(conn, server)
    peer = UdpPeer()
    try:
        await turn_exchange(conn, client, client.bind_channel(peer.address, time.monotonic()))
        data, _ = client.wrap(b"hello", peer.address)
        assert looks_like_channel_data(data)
        channel = struct.unpack_from("!H", data)[0]
        await conn.send(frame_channel_data(channel, b"hello"))
        got, relayed = await peer.recv()
        assert (got, relayed) == (b"hello", client.relayed)
        await peer.send(b"world", relayed)
        raw = await asyncio.wait_for(conn.reader.readexactly(12), WAIT)
        assert raw == struct.pack("!HH", channel, 5) + b"world" + bytes(3)
        assert client.unwrap_channel(raw, server) == (b"world", peer.address)
    finally:
        peer.sock.close()


# -- over TCP ----------------------------------------------------------------------------


@EVERY_LOOP
def test_binding_and_register_over_tcp_on_the_udp_port(loop: str) -> None:
    async def go() -> None:
        async with relay_and_tcp() as (server, conn):
            assert server.tcp_address == server.address  # RFC 8656: TCP on the same port
            assert await bind_over(conn) == conn.local
            registered = await register_over(conn, server.address, "alice")
            assert registered.mapped == conn.local
            assert server.logic.registry.names_at(conn.local, time.monotonic()) == ["alice"]
            assert server.stats["register"] == 1 and server.stats["stream_opened"] == 1

    run(go(), loop)


def test_allocate_channel_bind_and_channel_data_over_tcp_to_a_udp_peer() -> None:
    async def go() -> None:
        async with relay_and_tcp() as (server, conn):
            await relay_round_trip(conn, server.address)

    run(go())


def test_the_same_over_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    self_signed(cert, key, ["localhost", "127.0.0.1"])
    assert os.stat(key).st_mode & 0o777 == 0o600
    client_tls = ssl.create_default_context(cafile=str(cert))

    async def go() -> None:
        async with await relay(tls=server_context(cert, key)) as server:
            assert server.tls_address is not None
            conn = await Conn.open(server.tls_address, client_tls)
            assert await bind_over(conn) == conn.local
            await relay_round_trip(conn, server.address)
            # A client that does not trust the certificate gets no connection.
            with pytest.raises(ssl.SSLCertVerificationError):
                await Conn.open(server.tls_address, ssl.create_default_context())
            conn.close()

    run(go())


def test_a_message_cut_into_bytes_and_messages_run_together_are_all_answered() -> None:
    async def go() -> None:
        async with relay_and_tcp() as (_, conn):
            req, data = binding()
            for i in range(len(data)):
                await conn.send(data[i : i + 1])
                await asyncio.sleep(0)
            assert parse_message_untrusted(await conn.frame()).transaction_id == (
                req.transaction_id
            )
            reqs = [binding() for _ in range(3)]
            await conn.send(b"".join(d for _, d in reqs))
            for sent, _ in reqs:
                answer = parse_message_untrusted(await conn.frame())
                assert answer.transaction_id == sent.transaction_id

    run(go())


def test_garbage_closes_that_connection_and_no_other() -> None:
    async def go() -> None:
        async with await relay() as server:
            good = await Conn.open(server.tcp_address)
            await bind_over(good)
            bad = await Conn.open(server.tcp_address)
            await bad.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello
            assert await bad.closed_by_server()
            assert await bind_over(good) == good.local
            assert server.stats["stream_garbage"] == 1
            await until(lambda: len(server.streams.by_addr) == 1)
            good.close()

    run(go())


def test_connections_are_capped_in_all_and_per_source_ip() -> None:
    async def go() -> None:
        async with await relay(StreamLimits(streams=3, per_ip=2)) as server:
            where = server.tcp_address
            first = [await Conn.open(where) for _ in range(2)]
            for conn in first:
                await bind_over(conn)
            third = await Conn.open(where)  # a third from 127.0.0.1
            assert await third.closed_by_server()
            other = await Conn.open(where, local=("127.0.0.2", 0))
            await bind_over(other)
            over = await Conn.open(where, local=("127.0.0.3", 0))  # a fourth in all
            assert await over.closed_by_server()
            assert server.stats["stream_refused_per_ip"] == 1
            assert server.stats["stream_refused_full"] == 1
            first[0].close()  # room again, for 127.0.0.1 too
            await until(lambda: len(server.streams.by_addr) == 2)
            again = await Conn.open(where)
            await bind_over(again)
            for conn in [*first, other, again]:
                conn.close()

    run(go())


def test_a_connection_that_brings_no_whole_frame_in_time_is_closed() -> None:
    async def go() -> None:
        limits = StreamLimits(first_frame=0.3, idle=0.8)
        async with await relay(limits) as server:
            silent = await Conn.open(server.tcp_address)
            half = await Conn.open(server.tcp_address)
            await half.send(binding()[1][:10])  # half a frame is no frame
            talker = await Conn.open(server.tcp_address)
            await bind_over(talker)
            assert await silent.closed_by_server() and await half.closed_by_server()
            assert server.stats["stream_no_first_frame"] == 2
            assert await bind_over(talker) == talker.local  # at 0.3 s: still open
            assert await talker.closed_by_server(2.0)  # then quiet past `idle`
            assert server.stats["stream_idle"] == 1

    run(go())


def test_a_tls_handshake_that_never_comes_is_cut_off(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    self_signed(cert, key, ["127.0.0.1"])

    async def go() -> None:
        limits = StreamLimits(tls_handshake=0.3)
        async with await relay(limits, server_context(cert, key)) as server:
            plain = await Conn.open(server.tls_address)  # TCP, and no ClientHello
            assert await plain.closed_by_server(2.0)
            await until(lambda: server.stats["tls_handshake_failed"] == 1)
            assert not server.streams.by_addr

    run(go())


def test_closing_the_stream_ends_its_allocation_and_registration() -> None:
    async def go() -> None:
        async with await relay() as server:
            conn = await Conn.open(server.tcp_address)
            await register_over(conn, server.address, "alice")
            await allocate_over(conn, server.address)
            assert len(server.turn.allocations) == 1 and len(server.relay_ports.sockets) == 1
            conn.close()
            await until(lambda: not server.turn.allocations)
            assert not server.relay_ports.sockets and len(server.logic.registry) == 0
            assert server.stats["released_with_stream"] == 1
            assert server.stats["left_with_stream"] == 1

    run(go())


def test_one_address_is_one_client_whichever_protocol_came_first() -> None:
    async def go() -> None:
        async with await relay() as server:
            loop = asyncio.get_running_loop()
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            udp.setblocking(False)
            here: Address = udp.getsockname()

            async def udp_binding() -> bool:
                await loop.sock_sendto(udp, binding()[1], server.address)
                try:
                    await asyncio.wait_for(loop.sock_recvfrom(udp, 2048), 0.3)
                except TimeoutError:
                    return False
                return True

            # A stream from ip:port first: UDP from there is dropped while it is open.
            conn = await Conn.open(server.tcp_address, local=here)
            await bind_over(conn)
            assert not await udp_binding()
            assert server.stats["udp_from_stream_address"] == 1
            conn.close()
            await until(lambda: not server.streams.by_addr)
            assert await udp_binding()
            # UDP state first (an allocation at ip:port): a stream from there is refused. (At
            # another port: the first one's TCP side waits out TIME_WAIT.)
            udp.close()
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            udp.setblocking(False)
            here = udp.getsockname()
            client = TurnClient(server.address, *rest_credentials(SECRET, "bob", time.time()))
            sent = client.start(time.monotonic())
            while sent:
                for data, _ in sent:
                    await loop.sock_sendto(udp, data, server.address)
                answer, _ = await asyncio.wait_for(loop.sock_recvfrom(udp, 2048), WAIT)
                sent = client.handle(parse_message_untrusted(answer), server.address, 0.0) or []
            assert here in server.turn.allocations
            late = await Conn.open(server.tcp_address, local=here)
            assert await late.closed_by_server()
            assert server.stats["stream_refused_udp_client"] == 1
            assert here in server.turn.allocations  # the UDP client's allocation is untouched
            udp.close()

    run(go())


# -- pieces on their own -----------------------------------------------------------------


class FakeTransport(asyncio.Transport):
    def __init__(self, buffered: int) -> None:
        super().__init__()
        self.buffered = buffered
        self.written: list[bytes] = []
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))


class FakeHost:
    def stream_opens(self, src: Address) -> bool:
        return True

    def stream_frame(self, data: bytes, src: Address) -> None:
        pass

    def stream_closed(self, src: Address) -> None:
        pass


def test_a_connection_too_far_behind_drops_what_is_relayed_to_it_rather_than_growing() -> None:
    listener = StreamListener(FakeHost(), StreamLimits(write_buffer=1000))
    conn = StreamConnection(listener, None)
    conn.transport = transport = FakeTransport(buffered=500)
    conn.send(struct.pack("!HH", 0x4000, 1) + b"x")  # ChannelData as made for UDP
    assert transport.written == [struct.pack("!HH", 0x4000, 1) + b"x" + bytes(3)]
    transport.buffered = 1001
    conn.send(struct.pack("!HH", 0x4000, 1) + b"y")
    assert len(transport.written) == 1 and listener.stats["stream_write_dropped"] == 1


class NodeHost:
    """A listener's host that hands frames to a real sans-IO node, as the server does."""

    def __init__(self) -> None:
        self.node = RendezvousNode(RendezvousLogic(), None, ("203.0.113.20", 3478))
        self.answers = 0

    def stream_opens(self, src: Address) -> bool:
        return not self.node.holds(src, 0.0)

    def stream_frame(self, data: bytes, src: Address) -> None:
        self.answers += len(self.node.handle(data, src, self.node.primary, 0.0))

    def stream_closed(self, src: Address) -> None:
        self.node.stream_closed(src, 0.0)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=64),
            st.sampled_from([binding()[1], frame_channel_data(0x4000, b"abc"), b"\x00\x01"]),
        ),
        max_size=12,
    )
)
def test_no_bytes_on_a_stream_raise_out_of_the_connection(chunks: list[bytes]) -> None:
    async def go() -> None:
        host = NodeHost()
        listener = StreamListener(host)
        conn = StreamConnection(listener, None)
        conn.src = ("203.0.113.1", 40000)
        listener.admit(conn)
        conn.transport = FakeTransport(buffered=0)
        for chunk in chunks:
            conn.data_received(chunk)  # must not raise, whatever it is
        assert conn.closed == (conn.deframer.broken is not None)
        assert conn.closed == (conn.src not in listener.by_addr)

    asyncio.run(go())


def test_the_node_forgets_what_a_closed_stream_held() -> None:
    """Sans-IO: a registration and an allocation made from an address end with its stream."""

    class Ports:
        def __init__(self) -> None:
            self.open_ports: set[Address] = set()

        def open(self) -> Address | None:
            addr = ("203.0.113.20", 49152 + len(self.open_ports))
            self.open_ports.add(addr)
            return addr

        def close(self, relayed: Address) -> None:
            self.open_ports.discard(relayed)

    primary, client_at, other = ("203.0.113.20", 3478), ("203.0.113.1", 40000), ("203.0.113.2", 1)
    ports = Ports()
    turn = TurnServer(ports, TurnPolicy(secret=SECRET), wallclock=time.time())
    node = RendezvousNode(RendezvousLogic(), turn, primary)

    def deliver(sent: list[tuple[bytes, Address]], handle: Callable[..., Any]) -> None:
        while sent:
            data, _ = sent.pop(0)
            for out in node.handle(data, client_at, primary, 0.0):
                sent += handle(parse_message_untrusted(out.data), primary, 0.0) or []

    alice = RendezvousClient("alice", "nobody", primary, (), ask_now=False)
    deliver(alice.start(0.0), alice.handle)
    relay_client = TurnClient(primary, *rest_credentials(SECRET, "alice", time.time()))
    deliver(relay_client.start(0.0), relay_client.handle)
    assert node.holds(client_at, 0.0) and not node.holds(other, 0.0)
    assert ports.open_ports and len(node.logic.registry) == 1
    node.stream_closed(other, 0.1)  # someone else's stream: nothing of alice's goes
    assert node.holds(client_at, 0.1)
    node.stream_closed(client_at, 0.2)
    assert not node.holds(client_at, 0.2)
    assert not ports.open_ports and not turn.allocations and len(node.logic.registry) == 0
    assert node.stats["released_with_stream"] == 1 and node.stats["left_with_stream"] == 1


def test_the_command_takes_tls_options_only_together(tmp_path: Path) -> None:
    store = ["--store", ":memory:"]
    assert rendezvous_main(["--tls-cert", str(tmp_path / "c.pem"), *store]) == 2
    assert rendezvous_main(["--tls-listen", "127.0.0.1:5349", *store]) == 2
    missing = ["--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "k.pem")]
    assert rendezvous_main([*missing, *store]) == 1


def test_tls_is_served_on_asyncios_loop_and_uvloop_named_for_it_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """uvloop's start_tls hands a client's first TLS bytes to the protocol, not the handshake:
    auto takes asyncio's loop with --tls-cert, and --loop uvloop says so."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    self_signed(cert, key, ["127.0.0.1"])
    tls = ["--tls-cert", str(cert), "--tls-key", str(key), "--store", ":memory:"]
    assert rendezvous_main(["--loop", "uvloop", *tls]) == 2
    assert "--loop uvloop cannot serve TLS" in capsys.readouterr().err
    assert loop_factory("auto", tls=True) is None and loop_factory("auto") is not None
