"""The asyncio shell for servers reached over TCP or TLS: a framed connection each (RFC 8656 §12.5).

`ServerStreams` sits between a call's sans-IO core and its UDP socket: a datagram for a server
that `ServerTransports` moved to a stream goes on that stream, framed; every whole frame that
comes off a stream goes to the core as if it had come over UDP from that server. The policy
(when to move, to what) is ServerTransports'; this only connects, reads and writes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from voip.nat.server_transports import OpenStream
from voip.nat.server_transports import Route
from voip.nat.server_transports import ServerTransports
from voip.nat.server_transports import Transport
from voip.transport import DatagramHandler
from voip.transport import Timer
from voip.transport import UdpEndpoint
from voip.wire.stream_framing import FramingError
from voip.wire.stream_framing import StreamDeframer
from voip.wire.stream_framing import StreamFramer
from voip.wire.stun import Address
from voip.wire.turn import looks_like_channel_data

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 4.0  # s for TCP and the TLS handshake: a firewall that drops SYNs says nothing
PENDING = 16  # frames held while connecting (the core retransmits what matters anyway)
WRITE_HIGH = 256 * 1024  # bytes queued on a slow stream before media is dropped, as UDP would
READ_SIZE = 65536


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client context that checks the server's certificate: against `ca_file` (a private
    CA, or a self-signed server's own certificate), else the system's CAs."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class StreamLink:
    """One TCP or TLS connection to a server; frames in and out."""

    def __init__(
        self,
        route: Route,
        on_frame: DatagramHandler,
        on_connected: Callable[[Route], None],
        on_closed: Callable[[Route, str, bool], None],
        tls: Callable[[], ssl.SSLContext],
    ):
        self.route = route
        self.on_frame = on_frame
        self.on_connected = on_connected
        self.on_closed = on_closed  # (route, why, had it connected)
        self.framer = StreamFramer()
        self.deframer = StreamDeframer()
        self.dropped = 0  # frames not written: the stream was backed up
        self._pending: list[bytes] = []
        self._writer: asyncio.StreamWriter | None = None
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._run(tls))

    def send(self, data: bytes) -> None:
        # Room first, then the framer: it remembers the requests it frames, so one dropped
        # here after framing would have every retransmission taken for a duplicate.
        writer = self._writer
        if writer is None:
            # Connecting: STUN waits (the core's requests); media is dropped, as UDP would,
            # rather than played seconds late once the stream is up.
            if len(self._pending) >= PENDING or looks_like_channel_data(data):
                return
        elif writer.transport.get_write_buffer_size() > WRITE_HIGH:
            self.dropped += 1
            return
        framed = self.framer.frame(data)
        if framed is None:
            return
        if writer is None:
            self._pending.append(framed)
        else:
            writer.write(framed)

    def close(self) -> None:
        self._closing = True
        if self._writer is not None:
            self._writer.close()
        self._task.cancel()

    async def _run(self, tls: Callable[[], ssl.SSLContext]) -> None:
        route = self.route
        host, port = route.connect_to
        connected = False
        why = "closed by the server"
        try:
            context = tls() if route.transport == Transport.TLS else None
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host,
                    port,
                    ssl=context,
                    server_hostname=(route.name or host) if context else None,
                ),
                CONNECT_TIMEOUT,
            )
            connected = True
            self._writer = writer
            for framed in self._pending:
                writer.write(framed)
            self._pending.clear()
            self.on_connected(route)
            loop = asyncio.get_running_loop()
            while data := await reader.read(READ_SIZE):
                now = loop.time()
                for frame in self.deframer.feed(data):
                    self.on_frame(frame, route.server, now)
        except asyncio.CancelledError:
            return
        except TimeoutError:
            why = f"no connection in {CONNECT_TIMEOUT:g} s"
        except ssl.SSLError as exc:
            why = f"TLS failed ({exc.reason or exc})"
        except FramingError as exc:
            why = f"garbage on the stream ({exc})"
        except OSError as exc:
            why = exc.strerror or str(exc)
        except Exception as exc:  # a callback of ours raised: close, say so, never go silent
            log.exception("the stream to %s:%s failed", *route.connect_to)
            why = f"internal error ({type(exc).__name__})"
        finally:
            if self._writer is not None:
                self._writer.close()
        if not self._closing:
            try:
                self.on_closed(route, why, connected)
            except Exception:
                log.exception("handling the closed stream to %s:%s failed", *route.connect_to)


class ServerStreams:
    """Datagrams out over UDP or a server's stream; frames in, as datagrams."""

    def __init__(
        self,
        endpoint: UdpEndpoint,
        on_datagram: DatagramHandler,
        policy: ServerTransports | None = None,
        tls_ca: str | None = None,
        on_reached: Callable[[Address, Transport, str], None] | None = None,
    ):
        self.endpoint = endpoint
        self.on_datagram = on_datagram
        self.policy = policy or ServerTransports()
        self.tls_ca = tls_ca
        self.on_reached = on_reached  # (server, transport now, what failed before)
        self.links: dict[Address, StreamLink] = {}
        self._down: set[Address] = set()  # asked-for streams that failed, until tried again
        self._tls: ssl.SSLContext | None = None
        self._timer = Timer(endpoint.loop, self.policy.next_deadline, self._on_timer)

    def send_all(self, datagrams: list[tuple[bytes, Address]]) -> None:
        links, endpoint, policy = self.links, self.endpoint, self.policy
        watching = policy.undecided  # a server may still move: note what goes to it by UDP
        for data, dest in datagrams:
            link = links.get(dest) if links else None
            if link is not None:
                link.send(data)
                continue
            if self._down and dest in self._down:
                continue  # a transport asked for is down: nothing in its place, least of all UDP
            endpoint.send(data, dest)
            if watching:
                policy.sent(data, dest, endpoint.loop.time())
        if watching:
            self._timer.rearm()

    def heard(self, src: Address) -> None:
        """A datagram came over UDP from `src`."""
        self.policy.heard(src)

    def watch(
        self, server: Address, forced: Transport | None = None, name: str | None = None
    ) -> None:
        self._open(self.policy.watch(server, forced, name))
        self._timer.rearm()

    def close(self) -> None:
        self._timer.cancel()
        for link in self.links.values():
            link.close()
        self.links.clear()

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = tls_context(self.tls_ca)
        return self._tls

    def _on_timer(self, now: float) -> None:
        self._open(self.policy.poll(now))

    def _open(self, streams: list[OpenStream]) -> None:
        for stream in streams:
            route = stream.route
            log.info("reaching %s:%s over %s", *route.server, route.transport.upper())
            if (old := self.links.pop(route.server, None)) is not None:
                old.close()
            self._down.discard(route.server)
            link = StreamLink(route, self._on_frame, self._connected, self._closed, self._context)
            self.links[route.server] = link
            for data in stream.resend:
                link.send(data)

    def _connected(self, route: Route) -> None:
        log.info("connected to %s:%s over %s", *route.connect_to, route.transport.upper())
        self.policy.connected(route.server)
        if self.on_reached is not None:
            tried = "; ".join(self.policy.tried(route.server))
            self.on_reached(route.server, route.transport, tried)

    def _on_frame(self, data: bytes, src: Address, now: float) -> None:
        try:  # as UdpEndpoint does: counted, logged at a limited rate, never raised
            self.on_datagram(data, src, now)
        except Exception:
            self.endpoint.handler_failed(src)

    def _closed(self, route: Route, why: str, connected: bool) -> None:
        if self.links.get(route.server) is not None and self.links[route.server].route is route:
            del self.links[route.server]
        log.info("%s to %s:%s: %s", route.transport.upper(), *route.connect_to, why)
        following = self.policy.failed(route.server, why, self.endpoint.loop.time())
        self._open(following)
        if not following and self.policy.route(route.server) is not None:
            self._down.add(route.server)  # asked for: tried again later, never UDP meanwhile
            self._timer.rearm()
        elif not following and self.on_reached is not None:  # UDP again, the last resort
            self.on_reached(route.server, Transport.UDP, "; ".join(self.policy.tried(route.server)))
