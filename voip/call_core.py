"""A whole call, sans-IO: datagrams and the time in; datagrams, audio and events out.

`CallCore` puts the parts together: the `Connector` finds the paths (signalling, relay, checks),
the `PathManager` picks the one that carries audio, the `AudioSession` turns 20 ms frames into
RTP and back, and the `CallRecorder` keeps the report. The media tick is one more deadline: every
20 ms `poll` reads a frame from the source, sends it, plays one into the sink and watches the
path. The asyncio `Call` (voip/call.py) only moves datagrams and fires `poll` at
`next_deadline()`; tests drive the same object through a simulated network.
"""

from __future__ import annotations

from collections.abc import Sequence

from voip import events as ev
from voip.call_messages import failure_message
from voip.call_options import CallOptions
from voip.call_recorder import MEASURED
from voip.call_recorder import UDP_BLOCKED
from voip.call_recorder import CallRecorder
from voip.media.audio_io import AudioSink
from voip.media.audio_io import AudioSource
from voip.media.audio_loop import AudioLoop
from voip.media.audio_session import AudioSession
from voip.media.rtcp_session import PeerBye
from voip.media.rtcp_session import RttMeasured
from voip.nat import checks
from voip.nat.connector import Connector
from voip.nat.connector import ConnectorEvent
from voip.nat.connector import Introduced
from voip.nat.connector import Restarted
from voip.nat.path_manager import Checking
from voip.nat.path_manager import Media
from voip.nat.path_manager import PathManager
from voip.nat.path_manager import Restart
from voip.nat.path_manager import Switched
from voip.nat.port_mapper import PortMapper
from voip.nat.signal_events import Asked
from voip.nat.signal_events import ServerMoved
from voip.report import CallReport
from voip.security.handshake import is_handshake
from voip.security.identity import Identity
from voip.security.known_peers import KnownPeers
from voip.security.secure_media import SecureMedia
from voip.wire.candidates import Candidate
from voip.wire.rtp import is_rtcp
from voip.wire.rtp import looks_like_rtp_or_rtcp
from voip.wire.sans_io import EventQueue
from voip.wire.sans_io import earliest
from voip.wire.signal import PeerReady
from voip.wire.stun import Address

__all__ = ["MEDIA_TIMEOUT", "CallCore", "CallOptions", "connector_for"]

MEDIA_TIMEOUT = 10.0  # no RTP from the peer for this long and the call is over
Transmit = tuple[bytes, Address]


def connector_for(
    name: str,
    peer: str,
    server: Address | Sequence[Address],
    hosts: tuple[Candidate, ...],
    options: CallOptions,
    *,
    identity: Identity | None = None,
) -> Connector:
    """`identity`: who owns `name` (options.identity when None, else one for this run)."""
    return Connector(
        name,
        peer,
        server,
        hosts,
        wait_timeout=options.wait_timeout,
        punch_timeout=options.punch_timeout,
        relay_mode=options.relay,
        turn=options.turn,
        keepalive=options.keepalive,
        identity=identity or options.identity,
        port_mapper=port_mapper_for(options, hosts),
        relay_ipv6=options.relay_ipv6,
    )


def port_mapper_for(options: CallOptions, hosts: tuple[Candidate, ...]) -> PortMapper | None:
    """Who asks the router for a port, if asked: for the socket the host candidates are on."""
    if not options.port_mapping or options.gateway is None or not hosts:
        return None
    gateway_ip, own_ip = options.gateway
    return PortMapper(gateway_ip, own_ip, hosts[0].address[1])


def secure_media(call: CallCore, ready: PeerReady) -> SecureMedia:
    """The call's keys, from the introduction on (voip/security/secure_media.py)."""
    return SecureMedia.for_call(
        call.identity,
        call.name,
        ready,
        call.known_peers,
        call.options.accept_new_key,
        ephemeral=call.connector.signal.ephemeral,
    )


class CallCore(EventQueue[ev.CallEvent]):
    def __init__(
        self,
        name: str,
        peer: str,
        server: Address | Sequence[Address],  # several: moved between as each stops answering
        hosts: tuple[Candidate, ...],
        *,
        source: AudioSource,
        sink: AudioSink,
        options: CallOptions,
        wallclock_offset: float = 0.0,
    ):
        super().__init__()
        self.name, self.peer = name, peer
        self.source, self.sink, self.options = source, sink, options
        self.identity = options.identity or Identity.generate()
        self.known_peers = options.known_peers or KnownPeers()
        self.connector = connector_for(name, peer, server, hosts, options, identity=self.identity)
        self.audio = AudioSession(options.fec, options.dtx, wallclock_offset)
        self.recorder = CallRecorder(
            name, peer, options.stats_interval, options.keepalive, self.connector
        )
        self.paths: PathManager | None = None
        self.secure: SecureMedia | None = None  # from the introduction on
        self.connected = self.done = False
        self.failure: str | None = None  # why the call could not be made, in a user's words
        self._t_start = self._t_peer = self._t_connected = 0.0
        self.loop: AudioLoop | None = None  # the 20 ms beat, from the connection on
        # The connector's next deadline, asked only when it may have moved (the connector was
        # called, or the path manager moved the checks): computing it walks every part of it.
        self._connector_due: float | None = None

    def next_deadline(self) -> float | None:
        clocks = [self.loop.next_deadline()] if self.loop and not self.done else []
        handshake = self.secure.next_deadline() if self.secure and not self.done else None
        return earliest(self._connector_due, handshake, *clocks)

    def _connector_moved(self) -> None:
        self._connector_due = self.connector.next_deadline()

    def report(self) -> CallReport:
        """The call's figures so far (final once it has ended). Reading it changes nothing."""
        c = self.connector
        hopeless = UDP_BLOCKED if c.udp_blocked else c.punch_hopeless
        report = self.recorder.build(self.audio, c.checks, hopeless, c.relay.unavailable)
        report.security = self.secure.report() if self.secure is not None else None
        return report

    @property
    def active(self) -> checks.Pair | None:
        return self.paths.active if self.paths is not None else None

    def start(self, now: float) -> list[Transmit]:
        self._t_start = now
        out = self.connector.start(now)
        self._connector_moved()
        return out

    def handle(
        self, data: bytes, src: Address, now: float, side: int | None = None
    ) -> list[Transmit]:
        """A datagram on the call's socket, or (`side`) on birthday punching's extra socket."""
        if looks_like_rtp_or_rtcp(data):
            self._on_media(data, (checks.HOST if side is None else checks.BIRTHDAY, src), now)
            return []
        if is_handshake(data):
            return self._on_handshake(data, now)
        if side is not None:
            out, inner = self.connector.handle_side(side, data, src, now), None
        else:
            out, inner = self.connector.handle(data, src, now)
        if inner is not None and is_handshake(inner[0]):
            out += self._on_handshake(inner[0], now)
        elif inner is not None:
            self._on_media(inner[0], (checks.RELAY, inner[1]), now)
        self._connector_events(now)
        self._connector_moved()
        if self.secure is not None and self.secure.outbox:  # a path was chosen just now
            out += self._handshake_sends(now)
        return out

    def poll(self, now: float) -> list[Transmit]:
        out: list[Transmit] = []
        # The media tick comes 50 times a second; the connector's deadlines far less often.
        if self._connector_due is not None and now >= self._connector_due:
            out += self.connector.poll(now)
            self._connector_events(now)
            self._connector_moved()
        if self.secure is not None and not self.connected and not self.done:
            self.secure.poll(now)
            out += self._handshake_sends(now)
        if self.loop is not None and not self.done:
            if (packet := self.loop.send_due(now)) is not None:
                out += self._media(packet)
            if self.loop.play_due(now):
                out += self._watch(now)
        return out

    def reached_over(self, server: Address, transport: str, udp_blocked: bool = False) -> None:
        """The shell reaches `server` over `transport` ("udp", "tcp", "tls") now; with
        `udp_blocked`, because UDP got no answer where a stream did."""
        self.recorder.reached_over(server, transport)
        if server == self.connector.signal.server:  # its answers tell nothing of our mapping
            self.connector.signal.over_stream = transport != "udp"
        self.connector.udp_blocked = self.connector.udp_blocked or udp_blocked

    def nudge(self, now: float) -> list[Transmit]:
        """The connector changed outside `handle` (UPnP's answer, told its port mapper)."""
        self._connector_due = now
        return self.poll(now)

    def hangup(self, now: float, reason: str = "hung up") -> list[Transmit]:
        """End the call: BYE to the peer, play out what is buffered, release the name."""
        out = [] if self.done else self._media(self.audio.bye(now, reason))
        self.finish(now, reason, ok=self.failure is None)
        if self.loop is not None:
            self.loop.drain(now)
        out += self.connector.leave(now)
        self._connector_moved()
        return out

    def finish(self, now: float, reason: str, ok: bool) -> None:
        if self.done:
            return
        self.done = True
        self.recorder.base.ended = reason
        if self.connected:
            self.recorder.base.duration_s = now - self._t_connected
        self._events.append(ev.Ended(reason, ok))

    def _media(self, data: bytes) -> list[Transmit]:
        """RTP or RTCP to the peer, as SRTP or SRTCP: never in the clear, so not before keys."""
        sealed = self.secure.protect(data) if self.secure is not None else None
        return [] if sealed is None else self._route(sealed)

    def _route(self, data: bytes) -> list[Transmit]:
        if self.active is not None and self.active.base == checks.BIRTHDAY:
            return self.connector.hard.send_side(data, self.active.remote.address)
        return [] if self.active is None else [self.connector.relay.route(data, self.active)]

    def _on_handshake(self, data: bytes, now: float) -> list[Transmit]:
        if self.secure is None or self.done:
            return []
        self.secure.on_handshake(data, now)
        return self._handshake_sends(now)

    def _handshake_sends(self, now: float) -> list[Transmit]:
        """What the handshake has for the peer (held until there is a path to send it on), and
        the call connected, or refused, once it is over."""
        assert self.secure is not None
        sends = self.secure.take_outbox() if self.active is not None else []
        out = [t for data in sends for t in self._route(data)]
        if (reason := self.secure.failure) is not None and self.failure is None:
            self.failure = reason
            self.finish(now, reason, ok=False)
        elif self.secure.cipher is not None and not self.connected and self.paths is not None:
            self._secured(now)
        return out

    def _on_media(self, sealed: bytes, key: tuple[checks.Base, Address], now: float) -> None:
        if self.paths is None or self.secure is None:
            return
        if (data := self.secure.unprotect_untrusted(sealed)) is None:
            return  # forged, replayed, or before the keys: counted, never played
        rtcp = is_rtcp(data)
        verdict, switched = self.paths.classify(key, rtcp, now)
        if switched is not None:
            self._switched(switched, now)
        if verdict is Media.DROP:
            return
        if rtcp:
            if verdict is Media.ACTIVE:
                self._on_rtcp(data, now)
            return
        active = verdict is Media.ACTIVE
        if self.audio.on_rtp(data, now, on_active=active) and active:
            self.paths.heard(now, self.audio.peer_in_dtx)
            if self.loop is not None:
                self.loop.playout.arrived(now)

    def _on_rtcp(self, data: bytes, now: float) -> None:
        assert self.active is not None
        for event in self.audio.on_rtcp(data, now):
            if isinstance(event, RttMeasured):
                self.recorder.rtt(self.active.kind, now - self._t_connected, event.rtt, "rtcp")
            elif isinstance(event, PeerBye):
                self.finish(now, f"{self.peer} hung up", ok=True)

    def _watch(self, now: float) -> list[Transmit]:
        """After each frame played: the path watched; live figures once a second."""
        assert self.paths is not None
        out = self._switched(moved, now) if (moved := self.paths.tick(now)) else []
        if (reason := self.paths.gone(now, self.peer, MEDIA_TIMEOUT)) is not None:
            self.finish(now, reason, ok=False)
        if (stats := self.recorder.live_stats(now - self._t_connected, self.audio)) is not None:
            self._events.append(stats)
        return out

    def _connector_events(self, now: float) -> None:
        for event in self.connector.pop_events():
            connector_event(self, event, now, self.recorder.base)

    def _on_path(self, pair: checks.Pair, now: float) -> None:
        assert self.connector.checks is not None
        self.paths = PathManager(
            self.connector.checks, return_to_direct=self.options.relay == "auto"
        )
        self.paths.select(pair, now)
        assert self.secure is not None
        self.secure.start(now)

    def _secured(self, now: float) -> None:
        """Keys agreed and the peer's key accepted: audio starts."""
        assert self.paths is not None and self.paths.active is not None and self.secure
        pair = self.paths.active
        self.connected = True
        self._t_connected = now
        setup = (now - self._t_peer) * 1000
        remote = self.connector.relay.shown(pair)
        self.recorder.path_active(pair, remote, now - self._t_peer)
        self.recorder.base.setup_ms = setup
        self.loop = AudioLoop(self.audio, self.source, self.sink, now, self.options)
        self._events.append(self.secure.secured(self.peer))
        self._events.append(ev.Connected(pair.kind, remote, pair.describe(), setup))

    def _switched(self, switched: Switched | Checking | Restart, now: float) -> list[Transmit]:
        """The audio moved; where it stopped, the rendezvous hears where we are now."""
        stopped = not isinstance(switched, Switched) or switched.stopped
        out = self.connector.quiet(now, isinstance(switched, Restart)) if stopped else []
        self._connector_moved()  # the checks probe and keep consent on the new pairs now
        if not isinstance(switched, Switched):
            return out
        if self.loop is not None:
            self.loop.playout.relearn()
        remote = self.connector.relay.shown(switched.pair)
        self.recorder.path_active(switched.pair, remote, now - self._t_peer)
        self._events.append(ev.PathSwitched(switched.pair.kind, remote, switched.why))
        return out


def connector_event(call: CallCore, event: ConnectorEvent, now: float, base: CallReport) -> None:
    """What a connector event means for the call: the report, the path, the end."""
    since = now - call._t_connected if call.connected else None
    if isinstance(event, MEASURED):
        if made := call.recorder.measured(event, since, call.connector.relay.shown):
            call._events.append(made)
    elif isinstance(event, ServerMoved):
        call._events.append(ev.ServerMoved(event.old, event.new, event.answered))
    elif isinstance(event, Asked):
        if event.status == "waiting":
            call._events.append(ev.Waiting(call.peer, now))
    elif isinstance(event, Introduced):
        call._t_peer = now
        waited, mapping = now - call._t_start, call.connector.own_mapping
        call._events.append(call.recorder.introduced(event.ready, waited, mapping))
        call.secure = secure_media(call, event.ready)
    elif isinstance(event, Restarted) and call.paths and call.connector.checks:
        call.paths.rejoined(call.connector.checks)
    elif isinstance(event, checks.PathSelected):
        if call.paths is None:
            call._on_path(event.pair, now)
        else:
            call._switched(call.paths.restarted(event.pair, now), now)
    elif isinstance(event, checks.ConsentLost):
        call.finish(now, "the path stopped answering (consent lost, RFC 7675)", ok=False)
    elif (message := failure_message(call, event)) is not None and call.failure is None:
        if isinstance(event, checks.ChecksFailed):
            base.direct.reason = event.reason
        call.failure = message
        call.finish(now, message, ok=False)
