"""`Call`: a peer-to-peer audio call for embedding; the asyncio shell around the sans-IO parts.

    async with Call("alice", "bob", source=ToneSource(440), sink=WavSink("a.wav")) as call:
        await call.connected()
        await call.run(duration=5)
    print(call.report().to_dict())

One UDP socket carries everything (README, "How it works"): signalling, TURN to the relay,
connectivity checks, RTP and RTCP. Datagrams are told apart by their first byte (RFC 7983).
Audio goes on the active path (direct, or through a relay); the other path is probed all call
long, so the report can put the two side by side.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from collections.abc import Sequence

from voip import events as ev
from voip.call_core import CallCore
from voip.call_core import CallOptions
from voip.call_recorder import CallRecorder
from voip.call_upnp import CallUpnp
from voip.host_addresses import gateway_for_port_mapping
from voip.host_addresses import host_candidates
from voip.media.audio_io import AudioSink
from voip.media.audio_io import AudioSource
from voip.nat.hard_nat import HardNat
from voip.nat.rendezvous_servers import server_list
from voip.nat.server_transports import ServerTransports
from voip.nat.server_transports import Transport
from voip.report import CallReport
from voip.security.summary import SecurityReport
from voip.server_streams import ServerStreams
from voip.transport import DatagramHandler
from voip.transport import Timer
from voip.transport import UdpEndpoint
from voip.wire.rtp import looks_like_rtp_or_rtcp
from voip.wire.stun import Address

__all__ = ["Call", "CallError", "CallOptions"]


class CallError(Exception):
    """The call could not be made or went down; the message says why in a user's words."""


class Call:
    """The asyncio shell: one socket and one timer around a `CallCore`, which does the rest
    (the media tick included: it is one of the core's deadlines)."""

    def __init__(
        self,
        name: str,
        peer: str,
        *,
        source: AudioSource,
        sink: AudioSink,
        server: Address | Sequence[Address] = ("127.0.0.1", 3478),
        options: CallOptions | None = None,
        on_event: Callable[[ev.CallEvent], None] | None = None,
    ):
        """`server`: the rendezvous, or several: registered with in turn as each stops answering."""
        self.name = name
        self.peer = peer
        self.source = source
        self.sink = sink
        self.servers = server_list(server)
        self.server = self.servers[0]
        self.options = options or CallOptions()
        self.on_event = on_event
        self._queue: asyncio.Queue[ev.CallEvent] = asyncio.Queue()
        self._core: CallCore | None = None
        self._endpoint: UdpEndpoint | None = None
        self._net: ServerStreams | None = None  # sends: over UDP, or a server's TCP/TLS stream
        self._relay_watched: Address | None = None
        self._rendezvous_watched: Address | None = None
        self._side: dict[int, UdpEndpoint] = {}  # birthday punching's extra sockets, by index
        self._upnp: CallUpnp | None = None
        self._timer: Timer | None = None
        self._connected = asyncio.Event()
        self._done = asyncio.Event()

    @property
    def captured_at(self) -> list[float]:
        """With options.timeline: when (time.monotonic, shared by every process on the machine)
        each source frame was read."""
        return self._core.loop.captured_at if self._core and self._core.loop else []

    @property
    def played_at(self) -> list[float]:
        """With options.timeline: when each frame went to the sink."""
        return self._core.loop.played_at if self._core and self._core.loop else []

    @property
    def security(self) -> SecurityReport | None:
        """How the audio is protected and how the peer's key was checked: cipher, the peer's
        fingerprint, whether known_peers already held it, and the SAS to compare aloud. None
        until the key exchange is over (no audio flows before it)."""
        secure = self._core.secure if self._core is not None else None
        return secure.report() if secure is not None else None

    # -- public API -----------------------------------------------------------------------
    async def __aenter__(self) -> Call:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.hangup()

    async def start(self) -> None:
        """Open the socket and register with the rendezvous, asking for the peer."""
        loop = asyncio.get_running_loop()
        self._endpoint = open_call_socket(
            self.options.bind_host, self.options.bind_port, self._on_udp
        )
        self._net = ServerStreams(
            self._endpoint,
            self._on_datagram,
            ServerTransports(self.options.tls_port),
            self.options.tls_ca,
            self._reached,
        )
        port = self._endpoint.local_address[1]
        hosts = host_candidates(self.options.bind_host, port, self._endpoint.dual)
        if self.options.port_mapping and self.options.gateway is None and hosts:
            # Only for a socket that takes packets from the LAN: ours, bound to an address of
            # ours or to all of them (one bound to loopback has no router to ask).
            gateway = gateway_for_port_mapping()
            if gateway is not None and gateway[1] in {c.address[0] for c in hosts}:
                self.options = dataclasses.replace(self.options, gateway=gateway)
        self._core = CallCore(
            self.name,
            self.peer,
            self.servers,
            hosts,
            source=self.source,
            sink=self.sink,
            options=dataclasses.replace(self.options, relay_ipv6=self._endpoint.dual),
            wallclock_offset=time.time() - loop.time(),
        )
        self._timer = Timer(loop, self._core.next_deadline, self._on_timer)
        self._send(self._core.start(loop.time()))
        if (mapper := self._core.connector.port_mapper) is not None:  # UPnP beside PCP
            self._upnp = CallUpnp(mapper, self._nudge)
            self._upnp.start()
        self._timer.rearm()

    async def connected(self) -> None:
        """Wait until audio flows on a path; raises CallError saying why it could not."""
        waiter = asyncio.ensure_future(self._connected.wait())
        done_waiter = asyncio.ensure_future(self._done.wait())
        try:
            await asyncio.wait({waiter, done_waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            done_waiter.cancel()
        core = self._core
        if core is not None and core.failure is not None:
            raise CallError(core.failure)
        if not self._connected.is_set():
            ended = core.recorder.base.ended if core is not None else ""
            raise CallError(ended or "the call ended before it connected")

    async def run(self, duration: float | None = None) -> None:
        """Carry the call until `duration` seconds of audio, the peer hangs up, or the path dies."""
        await self.connected()
        try:
            await asyncio.wait_for(self._done.wait(), timeout=duration)
        except TimeoutError:
            await self.hangup("duration reached")

    async def hangup(self, reason: str = "hung up") -> None:
        """End the call: BYE to the peer, play out what is buffered, release the name."""
        if self._endpoint is None or self._core is None or self._net is None:
            return
        self._send(self._core.hangup(asyncio.get_running_loop().time(), reason))
        self._pass_events()
        if self._timer is not None:
            self._timer.cancel()
        for side in self._side.values():
            side.close()
        self._side.clear()
        self._net.close()  # what is queued on a stream (the name's release) still goes out
        self._endpoint.close()
        if self._upnp is not None:
            await self._upnp.close()
        self._endpoint = None
        self.source.close()
        self.sink.close()

    def report(self) -> CallReport:
        """The call's figures so far (final once it has ended). Reading it changes nothing."""
        if self._core is None:
            return CallRecorder(self.name, self.peer).build(None, None)
        return self._core.report()

    async def events(self) -> AsyncIterator[ev.CallEvent]:
        """Every event, in order, until the call has ended."""
        while True:
            event = await self._queue.get()
            yield event
            if isinstance(event, ev.Ended):
                return

    # -- plumbing -------------------------------------------------------------------------
    def _on_timer(self, now: float) -> None:
        assert self._net is not None and self._core is not None
        self._send(self._core.poll(now))
        self._sides()
        self._pass_events()

    def _on_udp(self, data: bytes, src: Address, now: float) -> None:
        if self._net is not None:
            self._net.heard(src)  # a server that answers over UDP is kept on UDP
        self._on_datagram(data, src, now)

    def _on_datagram(self, data: bytes, src: Address, now: float) -> None:
        """A datagram over UDP, or a frame off a server's stream (as if it came over UDP)."""
        assert self._net is not None and self._core is not None
        self._send(self._core.handle(data, src, now))
        self._sides()
        self._pass_events()
        # Audio never brings a deadline nearer (the media tick keeps its own time): only
        # signalling, checks and TURN can, and only they are worth the deadline's cost.
        if self._timer is not None and not looks_like_rtp_or_rtcp(data):
            self._timer.rearm()

    def _nudge(self) -> None:
        """The core learned something not from a datagram (UPnP's answer): run it now."""
        if self._net is None or self._core is None:
            return
        self._send(self._core.nudge(asyncio.get_running_loop().time()))
        self._pass_events()
        if self._timer is not None:
            self._timer.rearm()

    def _on_side(self, index: int, data: bytes, src: Address, now: float) -> None:
        if self._net is None or self._core is None:
            return
        self._send(self._core.handle(data, src, now, side=index))
        self._sides()
        self._pass_events()
        if self._timer is not None:
            self._timer.rearm()

    def _send(self, out: list[tuple[bytes, Address]]) -> None:
        """Out over UDP or a server's stream; a relay the core has just taken on is watched
        first, so its first request already goes the way it is asked to."""
        assert self._net is not None and self._core is not None
        if (rendezvous := self._core.connector.signal.server) != self._rendezvous_watched:
            self._watch_rendezvous(rendezvous)
        turn = self._core.connector.turn
        if turn is not None and turn.server != self._relay_watched:
            self._relay_watched = turn.server
            offer = self._core.connector.relay.offer
            self._net.watch(turn.server, *((offer.transport, offer.name) if offer else ()))
        self._net.send_all(out)

    def _watch_rendezvous(self, server: Address) -> None:
        """The rendezvous registered with now: watched, for a stream if UDP gets no answer."""
        assert self._net is not None and self._core is not None
        self._rendezvous_watched = server
        name = self.options.server_names.get(server, self.options.server_name)
        self._net.watch(server, self.options.server_transport, name)
        if (transport := self._net.policy.transport(server)) != Transport.UDP:
            self._core.reached_over(server, str(transport))  # back to one on a stream already

    def _reached(self, server: Address, transport: Transport, why: str) -> None:
        """A server is reached over a stream now (or UDP again): the report, and a line."""
        assert self._core is not None and self._net is not None  # streams open after start
        self._core.reached_over(server, str(transport), self._net.policy.udp_blocked)
        relay = self._core.connector.turn
        roles = [server in self.servers, relay is not None and server == relay.server]
        role = " and ".join(r for r, yes in zip(("rendezvous", "relay"), roles, strict=True) if yes)
        self._emit(ev.ServerTransport(server, role or "server", str(transport), why))

    def _sides(self) -> None:
        """Birthday punching's extra sockets: opened, closed and sent from as the core says."""
        assert self._core is not None
        hard, host = self._core.connector.hard, self.options.bind_host
        sync_side_sockets(hard, self._side, host, self._on_side)

    def _pass_events(self) -> None:
        assert self._core is not None
        for event in self._core.pop_events():
            self._emit(event)

    def _emit(self, event: ev.CallEvent) -> None:
        if isinstance(event, ev.Connected):
            self._connected.set()
        elif isinstance(event, ev.Ended):
            self._done.set()
        self._queue.put_nowait(event)
        if self.on_event is not None:
            self.on_event(event)


def sync_side_sockets(
    hard: HardNat,
    sides: dict[int, UdpEndpoint],
    host: str,
    on_side: Callable[[int, bytes, Address, float], None],
) -> None:
    """Birthday punching's extra sockets in `sides` (by index): opened and closed as `hard`
    wants them, and its datagrams sent from them."""
    if hard.opener is None and not sides:
        return
    wanted = set(hard.open)
    for index in [i for i in sides if i not in wanted]:
        sides.pop(index).close()
    for index in sorted(wanted - sides.keys()):
        try:
            sides[index] = UdpEndpoint.open(host, 0, functools.partial(on_side, index))
        except OSError:  # out of file descriptors: guess with the sockets we have
            break
    for send in hard.pop_side():
        if (side := sides.get(send.index)) is not None:
            side.send(send.data, send.dest)


def open_call_socket(host: str, port: int, on_datagram: DatagramHandler) -> UdpEndpoint:
    """The call's one socket. On all addresses it is both families at once where the host has
    IPv6 (one port for IPv4 and IPv6 candidates alike), else IPv4 alone."""
    if host in ("0.0.0.0", "", "::"):  # noqa: S104
        try:
            return UdpEndpoint.open("::", port, on_datagram)
        except OSError:  # no IPv6 on this host (disabled, or the port is taken there)
            pass
    return UdpEndpoint.open(host or "0.0.0.0", port, on_datagram)  # noqa: S104
