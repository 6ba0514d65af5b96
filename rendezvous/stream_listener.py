"""The rendezvous's TCP and TLS listeners (TURN over a stream, RFC 8656 §3.1, §12.5): asyncio shell.

Each connection's bytes are cut into frames (voip/wire/stream_framing.py) and handed to the
server as datagrams from the connection's remote address; what the server sends to that address
goes back on the connection, framed. Every connection is a stranger's: connections are capped in
all and per source, one must bring a whole frame within FIRST_FRAME seconds and another at least
every IDLE seconds after, what waits to be written to it is bounded (beyond, more is dropped, as
UDP would), a TLS handshake has a deadline, garbage closes that connection and no other, and no
exception leaves a handler.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Protocol
from typing import cast

from rendezvous.limits import address_block
from voip.rate_log import RateLimitedLog
from voip.wire.stream_framing import FramingError
from voip.wire.stream_framing import StreamDeframer
from voip.wire.stream_framing import frame_channel_data
from voip.wire.stun import Address
from voip.wire.turn import looks_like_channel_data

log = logging.getLogger(__name__)

BACKLOG = 1024  # connections the kernel queues before we accept them


@dataclass(frozen=True)
class StreamLimits:
    streams: int = 4096  # connections open in all, TLS handshakes included
    per_ip: int = 16  # from one IPv4 address or IPv6 /64
    first_frame: float = 10.0  # s from connecting to the first whole frame
    # s without a whole frame: longer than a client waits between refreshes of an allocation
    # (600 s lifetime), so only a connection that holds nothing goes quiet this long
    idle: float = 660.0
    write_buffer: int = 256 * 1024  # bytes waiting to be sent; past it, more is dropped
    tls_handshake: float = 5.0  # s


class StreamHost(Protocol):
    """What a listener asks of the server it feeds."""

    def stream_opens(self, src: Address) -> bool:
        """Whether a stream from `src` may open: no client is known there over UDP."""

    def stream_frame(self, data: bytes, src: Address) -> None:
        """One whole frame from the connection at `src`, as a datagram from there."""

    def stream_closed(self, src: Address) -> None:
        """The connection at `src` is gone: so is what its client held."""


class StreamListener:
    """The TCP and TLS listening sockets and their connections, each found by remote address."""

    def __init__(self, host: StreamHost, limits: StreamLimits | None = None):
        self.host = host
        self.limits = limits or StreamLimits()
        self.by_addr: dict[Address, StreamConnection] = {}  # connections admitted
        self.stats: Counter[str] = Counter()
        self.servers: list[asyncio.Server] = []
        self._per_ip: Counter[str] = Counter()
        # One line a LOG_EVERY seconds about garbage and broken handlers alike, on the loop's
        # clock (read when a line is due: a listener may be made before the loop runs).
        self._log = RateLimitedLog(log, clock=_loop_time)

    async def listen(
        self, host: str, port: int, tls: ssl.SSLContext | None = None, dual: bool = True
    ) -> Address:
        """Listen on host:port (TLS when `tls` is given); the address bound. On "::" both
        families, as the UDP socket there (asyncio alone would make it IPv6 only), unless not
        `dual` (another listener has IPv4)."""
        loop = asyncio.get_running_loop()

        def factory() -> StreamConnection:
            return StreamConnection(self, tls)

        if host != "::":
            server = await loop.create_server(factory, host, port, backlog=BACKLOG)
        else:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual else 1)
                sock.bind((host, port))
                sock.listen(BACKLOG)
                sock.setblocking(False)
                server = await loop.create_server(factory, sock=sock)
            except OSError:
                sock.close()
                raise
        self.servers.append(server)
        name = server.sockets[0].getsockname()
        return str(name[0]), int(name[1])

    def refusal(self, src: Address) -> str | None:
        """Why a new connection from `src` is refused, or None when it may open."""
        if len(self.by_addr) >= self.limits.streams:
            return "stream_refused_full"
        if self._per_ip[address_block(src[0])] >= self.limits.per_ip:
            return "stream_refused_per_ip"
        if src in self.by_addr:  # one address, one client: a TCP one and a TLS one would clash
            return "stream_refused_address_in_use"
        if not self.host.stream_opens(src):
            return "stream_refused_udp_client"
        return None

    def admit(self, conn: StreamConnection) -> None:
        self.by_addr[conn.src] = conn
        self._per_ip[address_block(conn.src[0])] += 1
        self.stats["stream_opened"] += 1

    def forget(self, conn: StreamConnection) -> None:
        if self.by_addr.get(conn.src) is not conn:
            return
        del self.by_addr[conn.src]
        block = address_block(conn.src[0])
        self._per_ip[block] -= 1
        if self._per_ip[block] <= 0:
            del self._per_ip[block]
        try:
            self.host.stream_closed(conn.src)
        except Exception:
            self.failed(conn.src)

    def garbage(self, src: Address, why: str) -> None:
        self._note("stream_garbage", src, f"garbage ({why}); its connection closed", False)

    def failed(self, src: Address) -> None:
        """Inside an `except` block: a handler raised; counted, logged now and then."""
        self._note("stream_handler_failed", src, "a frame could not be handled", True)

    def _note(self, stat: str, src: Address, what: str, traceback: bool) -> None:
        """Count `stat`; say `what` at most once a LOG_EVERY seconds (with the traceback of the
        exception being handled, if `traceback`)."""
        self.stats[stat] += 1
        count = self.stats[stat]  # the count of this kind, not of both
        self._log.warning("%s:%s: %s", *src, what, exc_info=traceback, count=count)

    def close(self) -> None:
        for server in self.servers:
            server.close()
        self.servers.clear()
        for conn in list(self.by_addr.values()):
            conn.close()


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


class StreamConnection(asyncio.Protocol):
    """One accepted connection: frames in, framed answers out."""

    def __init__(self, listener: StreamListener, tls: ssl.SSLContext | None):
        self.listener = listener
        self.limits = listener.limits
        self.tls = tls
        self.src: Address = ("", 0)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        # The relay accepts RFC 5766's wider channel range on its own port: so here too.
        self.deframer = StreamDeframer(legacy_channels=True)
        self._last_frame: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._handshake: asyncio.Task[None] | None = None
        # Frames that came with the end of the TLS handshake, before start_tls has handed us
        # the TLS transport: answered once it has (else answers would go out in the clear).
        self._held: list[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream server makes no other than a Transport; uvloop's are not subclasses of
        # asyncio's, so the type is the protocol's word for it, not an isinstance check.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        try:
            peer = transport.get_extra_info("peername")
            # On a dual-stack listener an IPv4 client shows as ::ffff:a.b.c.d: named plainly,
            # as UDP names it, so one address is one client whichever protocol it uses.
            self.src = (str(peer[0]).removeprefix("::ffff:"), int(peer[1]))
            refused = self.listener.refusal(self.src)
        except Exception:  # no peer name (the connection already gone) or a failing host
            self.listener.failed(self.src)
            refused = "stream_refused_error"
        if refused is not None:
            self.listener.stats[refused] += 1
            self.closed = True
            transport.abort()
            return
        self.listener.admit(self)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.limits.first_frame, self._check_idle)
        if self.tls is not None:
            # Paused until start_tls takes the transport over: no TLS bytes must reach us.
            transport.pause_reading()
            self._held = []
            self._handshake = loop.create_task(self._start_tls(transport, self.tls))

    async def _start_tls(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self.limits.tls_handshake,
            )
        except Exception:  # a timeout, a client that speaks no TLS, a reset: this one only
            if not self.closed:
                self.listener.stats["tls_handshake_failed"] += 1
                self.close()
            return
        if self.closed or tls is None:
            if tls is not None:
                tls.abort()
            return
        self.transport = tls
        held, self._held = self._held or [], None
        self._frames(held)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            frames = self.deframer.feed(data)
        except FramingError as exc:
            self.listener.garbage(self.src, str(exc))
            self.close()
            return
        except Exception:  # a bug in framing: still this connection's end, not the loop's
            self.listener.failed(self.src)
            self.close()
            return
        if frames:
            self._last_frame = asyncio.get_running_loop().time()
        if self._held is not None:
            self._held += frames
        else:
            self._frames(frames)

    def _frames(self, frames: list[bytes]) -> None:
        for frame in frames:
            try:
                self.listener.host.stream_frame(frame, self.src)
            except Exception:
                self.listener.failed(self.src)
            if self.gone():  # a handler closed it
                return

    def send(self, data: bytes) -> None:
        """Write one message, framed; dropped, as over UDP, while too much waits to be sent."""
        transport = self.transport
        if self.closed or transport is None:
            return
        if transport.get_write_buffer_size() > self.limits.write_buffer:
            self.listener.stats["stream_write_dropped"] += 1
            return
        if looks_like_channel_data(data, legacy=True):  # made for UDP: padded for a stream
            channel, length = struct.unpack_from("!HH", data)
            data = frame_channel_data(channel, data[4 : 4 + length])
        try:
            transport.write(data)
        except Exception:  # a transport closing under us: the connection is going anyway
            self.listener.stats["stream_write_failed"] += 1

    def _check_idle(self) -> None:
        self._timer = None
        if self.closed:
            return
        if self._last_frame is None:
            self.listener.stats["stream_no_first_frame"] += 1
            self.close()
            return
        due = self._last_frame + self.limits.idle
        if asyncio.get_running_loop().time() >= due:
            self.listener.stats["stream_idle"] += 1
            self.close()
            return
        self._timer = asyncio.get_running_loop().call_at(due, self._check_idle)

    def gone(self) -> bool:
        return self.closed

    def close(self) -> None:
        """Close at once (what waits to be written is dropped) and forget this connection."""
        if not self.closed and self.transport is not None:
            self.transport.abort()
        self._forget()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()

    def _forget(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.listener.forget(self)
