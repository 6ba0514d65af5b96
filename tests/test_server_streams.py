"""The asyncio shell for servers on TCP or TLS (voip/server_streams.py): what it never does."""

from __future__ import annotations

import asyncio
import socket

from voip.nat.server_transports import Route
from voip.nat.server_transports import ServerTransports
from voip.nat.server_transports import Transport
from voip.server_streams import ServerStreams
from voip.server_streams import StreamLink
from voip.server_streams import tls_context
from voip.transport import UdpEndpoint
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import encode
from voip.wire.turn import pack_channel_data


def listening() -> socket.socket:
    """A TCP socket that accepts connections (the kernel does) and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_while_connecting_requests_wait_and_media_is_dropped_unframed() -> None:
    """A TLS handshake that never completes keeps the link connecting. Media then is dropped
    (stale by the time the stream is up), and dropped before the framer sees it; a request
    waits, and one the pending list had no room for still goes when retransmitted."""

    async def scenario() -> tuple[int, bool]:
        with listening() as server:
            route = Route(server.getsockname(), Transport.TLS, server.getsockname())
            link = StreamLink(route, lambda *a: None, lambda r: None, lambda *a: None, tls_context)
            await asyncio.sleep(0.05)
            for _ in range(40):
                link.send(pack_channel_data(0x4001, bytes(160)))
            requests = [encode(Message(Method.BINDING, Class.REQUEST)) for _ in range(20)]
            for data in requests:
                link.send(data)
            queued = len(link._pending)
            link._pending.clear()  # as if written: now the 17th request is retransmitted
            link.send(requests[16])
            again = len(link._pending) == 1
            link.close()
            return queued, again

    queued, again = asyncio.run(scenario())
    assert queued == 16  # PENDING requests, no media among them
    assert again  # not taken for a duplicate: it had never been framed


def test_a_callback_that_raises_closes_the_link_and_says_so() -> None:
    closed: list[tuple[str, bool]] = []

    def boom(route: Route) -> None:
        raise RuntimeError("a bug in the caller")

    async def scenario() -> None:
        with listening() as server:
            route = Route(server.getsockname(), Transport.TCP, server.getsockname())
            StreamLink(
                route,
                lambda *a: None,
                boom,
                lambda r, why, connected: closed.append((why, connected)),
                tls_context,
            )
            for _ in range(100):
                if closed:
                    return
                await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert closed == [("internal error (RuntimeError)", True)]  # not a silent dead link


def test_a_transport_asked_for_that_fails_sends_nothing_over_udp_meanwhile() -> None:
    """`--server-transport tls` to a server whose TLS is refused: the registration must not
    go out in the clear over UDP; it waits for the stream to be tried again."""

    async def scenario() -> tuple[int, int]:
        got: list[bytes] = []
        server = UdpEndpoint.open("127.0.0.1", 0, lambda data, src, now: got.append(data))
        endpoint = UdpEndpoint.open("127.0.0.1", 0, lambda *a: None)
        streams = ServerStreams(endpoint, lambda *a: None, ServerTransports())
        # Nothing listens on TCP at the server's port: refused at once.
        target = ("127.0.0.1", free_port())
        streams.watch(target, Transport.TLS)
        await asyncio.sleep(0.2)
        streams.send_all([(encode(Message(Method.BINDING, Class.REQUEST)), target)])
        streams.send_all([(b"\x00" * 20, server.local_address)])  # others still go over UDP
        await asyncio.sleep(0.1)
        sent = endpoint.sent
        streams.close()
        endpoint.close()
        server.close()
        return sent, len(got)

    sent, got = asyncio.run(scenario())
    assert (sent, got) == (1, 1)  # the one datagram for the other address, not the request
