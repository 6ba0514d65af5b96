"""A whole call, sans-IO: datagrams and the time in; datagrams, audio and events out.

`CallCore` puts the parts together: the `Connector` finds the paths (signalling, relay, checks),
the `PathManager` picks the one that carries audio, the `AudioSession` turns 20 ms frames into
RTP and back, and the `CallRecorder` keeps the report. The media tick is one more deadline: every
20 ms `poll` reads a frame from the source, sends it, plays one into the sink and watches the
path. The asyncio `Call` (voip/call.py) only moves datagrams and fires `poll` at
`next_deadline()`; tests drive the same object through a simulated network.
"""

from __future__ import annotations

from dataclasses import dataclass

from voip import events as ev
from voip.call_messages import failure_message
from voip.call_recorder import CallRecorder
from voip.codecs.pcm import Pcm
from voip.media.audio_io import AudioSink, AudioSource
from voip.media.audio_session import AudioSession
from voip.media.frame_clocks import FrameClock, PlayoutClock
from voip.media.rtcp_session import PeerBye, RttMeasured
from voip.nat import checks
from voip.nat.connector import Connector, ConnectorEvent, Introduced, RelayReady, RelayUnavailable
from voip.nat.path_manager import Media, PathManager, Switched
from voip.nat.rendezvous_client import Asked, Registered, TurnOffer
from voip.report import CallReport
from voip.wire.candidates import Candidate, format_address
from voip.wire.rtp import is_rtcp, looks_like_rtp_or_rtcp
from voip.wire.stun import Address

MEDIA_TIMEOUT = 10.0  # no RTP from the peer for this long and the call is over
Transmit = tuple[bytes, Address]


@dataclass
class CallOptions:
    wait_timeout: float = 120.0  # how long to wait for the peer to call back
    punch_timeout: float = 10.0
    rtcp_interval: float = 1.0
    stats_interval: float = 1.0
    bind_host: str = "0.0.0.0"  # noqa: S104 - a caller must receive from its peer on any interface
    bind_port: int = 0
    relay: str = "auto"  # auto: relay only if direct fails; force: audio over it; off: none
    timeline: bool = False  # record when each frame was read from the source and played
    fec: bool = True  # Opus in-band FEC: send it, and rebuild lost frames from it
    dtx: bool = False  # Opus DTX: in silence, a comfort-noise update every 400 ms and nothing else
    turn: TurnOffer | None = None  # a TURN server of our own choosing (e.g. coturn)
    # Seconds between packets on a quiet mapping (to the rendezvous and the relay, while
    # waiting): for a NAT that forgets mappings sooner than the defaults allow for. The CLI
    # takes it from `callpeer natcheck --lifetime`.
    keepalive: float | None = None


def connector_for(
    name: str, peer: str, server: Address, hosts: tuple[Candidate, ...], options: CallOptions
) -> Connector:
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
    )


class CallCore:
    def __init__(
        self,
        name: str,
        peer: str,
        server: Address,
        hosts: tuple[Candidate, ...],
        *,
        source: AudioSource,
        sink: AudioSink,
        options: CallOptions,
        wallclock_offset: float = 0.0,
    ):
        self.name, self.peer, self.server = name, peer, server
        self.source, self.sink, self.options = source, sink, options
        self.connector = connector_for(name, peer, server, hosts, options)
        self.audio = AudioSession(options.fec, options.dtx, wallclock_offset)
        self.recorder = CallRecorder(name, peer)
        self.recorder.base.keepalive_s = options.keepalive
        self.paths: PathManager | None = None
        self.connected = False
        self.done = False
        self.failure: str | None = None  # why the call could not be made, in a user's words
        # With options.timeline: when (the caller's clock) each frame was read and played.
        self.captured_at: list[float] = []
        self.played_at: list[float] = []
        self._events: list[ev.CallEvent] = []
        self._t_start = self._t_peer = self._t_connected = 0.0
        self.sending: FrameClock | None = None  # when the next frame is read and sent
        self.playout: PlayoutClock | None = None  # when the next frame is played
        # The connector's next deadline, asked once each time it may have moved (it changes
        # only when the connector is called, or the checks switch paths) rather than on every
        # media tick and timer re-arm: computing it walks every part of the connector.
        self._connector_due: float | None = None
        self._next_rtcp = self._next_stats = 0.0

    def pop_events(self) -> list[ev.CallEvent]:
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        clocks = [] if self.done else [c.next for c in (self.sending, self.playout) if c]
        times = [self._connector_due, *clocks]
        return min((t for t in times if t is not None), default=None)

    def _connector_moved(self) -> None:
        self._connector_due = self.connector.next_deadline()

    def report(self) -> CallReport:
        """The call's figures so far (final once it has ended). Reading it changes nothing."""
        c = self.connector
        return self.recorder.build(self.audio, c.checks, c.punch_hopeless, c.relay_unavailable)

    @property
    def active(self) -> checks.Pair | None:
        return self.paths.active if self.paths is not None else None

    def start(self, now: float) -> list[Transmit]:
        self._t_start = now
        out = self.connector.start(now)
        self._connector_moved()
        return out

    def handle(self, data: bytes, src: Address, now: float) -> list[Transmit]:
        if looks_like_rtp_or_rtcp(data):
            return self._on_media(data, (checks.HOST, src), now)
        out, inner = self.connector.handle(data, src, now)
        if inner is not None:
            out += self._on_media(inner[0], (checks.RELAY, inner[1]), now)
        self._connector_events(now)
        self._connector_moved()
        return out

    def poll(self, now: float) -> list[Transmit]:
        out: list[Transmit] = []
        # The media tick comes 50 times a second; the connector's deadlines far less often.
        if self._connector_due is not None and now >= self._connector_due:
            out += self.connector.poll(now)
            self._connector_events(now)
            self._connector_moved()
        if self.sending is not None and now >= self.sending.next and not self.done:
            out += self._send_tick(now)
        if self.playout is not None and now >= self.playout.next and not self.done:
            self._play_tick(now)
        return out

    def hangup(self, now: float, reason: str = "hung up") -> list[Transmit]:
        """End the call: BYE to the peer, play out what is buffered, release the name."""
        out = [] if self.done else self._media(self.audio.bye(now, reason))
        self.finish(now, reason, ok=self.failure is None)
        for pcm in self.audio.drain(now):  # play what already arrived rather than drop it
            self._play(pcm, now)
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
        return [] if self.active is None else [self.connector.route(data, self.active)]

    def _on_media(
        self, data: bytes, key: tuple[checks.Base, Address], now: float
    ) -> list[Transmit]:
        if self.paths is None:
            return []
        rtcp = is_rtcp(data)
        verdict, switched = self.paths.classify(key, rtcp, now)
        if switched is not None:
            self._switched(switched)
        if verdict is Media.DROP:
            return []
        if rtcp:
            if verdict is Media.ACTIVE:
                self._on_rtcp(data, now)
            return []
        active = verdict is Media.ACTIVE
        if self.audio.on_rtp(data, now, on_active=active) and active:
            self.paths.heard(now, self.audio.peer_in_dtx)
            if self.playout is not None:
                self.playout.arrived(now)
        return []

    def _on_rtcp(self, data: bytes, now: float) -> None:
        assert self.active is not None
        for event in self.audio.on_rtcp(data, now):
            if isinstance(event, RttMeasured):
                self.recorder.rtt(self.active.kind, now - self._t_connected, event.rtt, "rtcp")
            elif isinstance(event, PeerBye):
                self.finish(now, f"{self.peer} hung up", ok=True)

    def _send_tick(self, now: float) -> list[Transmit]:
        """A frame read and sent; RTCP once a second."""
        assert self.sending is not None
        if now >= self._next_rtcp:
            # On its own, before the codec's work (the frame follows at once, in the next
            # poll): a report says when it was sent (its NTP timestamp, or for the peer its
            # DLSR), and every ms between `now` and the send would count as round trip.
            self._next_rtcp = now + self.options.rtcp_interval
            return self._media(self.audio.report(now))
        self.sending.tick(now)
        pcm_in = self.source.read()
        if self.options.timeline:
            self.captured_at.append(now)
        packet = self.audio.packetize(pcm_in)
        return self._media(packet) if packet is not None else []

    def _play_tick(self, now: float) -> None:
        """A frame played, the path watched; live figures once a second."""
        assert self.playout is not None and self.paths is not None
        self.playout.tick(now)
        if (pcm := self.audio.tick(now)) is not None:
            self._play(pcm, now)
        if (switched := self.paths.tick(now)) is not None:
            self._switched(switched)
        if now - self.paths.last_heard > MEDIA_TIMEOUT:
            self.finish(now, f"no audio from {self.peer} for {MEDIA_TIMEOUT:.0f} s", ok=False)
        if now >= self._next_stats:
            self._next_stats = now + self.options.stats_interval
            self._events.append(self.recorder.live_stats(now - self._t_connected, self.audio))

    def _play(self, pcm: Pcm, now: float) -> None:
        self.sink.write(pcm)
        if self.options.timeline:
            self.played_at.append(now)

    def _connector_events(self, now: float) -> None:
        for event in self.connector.pop_events():
            self._connector_event(event, now, self.recorder.base)

    def _connector_event(self, event: ConnectorEvent, now: float, base: CallReport) -> None:
        if isinstance(event, Registered):
            base.local_public = format_address(event.mapped)
            self._events.append(ev.Registered(self.name, event.mapped))
        elif isinstance(event, Asked):
            if event.status == "waiting":
                self._events.append(ev.Waiting(self.peer, now))
        elif isinstance(event, RelayReady):
            self._events.append(ev.RelayAllocated(event.relayed, event.server))
        elif isinstance(event, RelayUnavailable):
            base.relay.reason = event.reason
        elif isinstance(event, Introduced):
            self._t_peer = now
            self.recorder.introduced(event.ready, now - self._t_start, self.connector.own_mapping)
            self._events.append(
                ev.Punching(event.ready.peer, event.ready.candidates, event.ready.controlling)
            )
        elif isinstance(event, checks.PathSelected):
            if self.paths is None:
                self._on_path(event.pair, now)
        elif isinstance(event, checks.StandbyChanged):
            remote = self.connector.remote_shown(event.pair)
            self.recorder.path_found(event.pair.kind, remote)
            self._events.append(ev.Standby(event.pair.kind, remote))
        elif isinstance(event, checks.RttSample):
            # Only samples from the call itself: during the checks both ends are busy setting
            # up, which a path's figures should not be charged with.
            if self.connected:
                self.recorder.rtt(event.kind, now - self._t_connected, event.rtt, "stun")
                if not event.active:
                    self.recorder.metrics(event.kind).probes_answered += 1
        elif isinstance(event, checks.ProbeLost):
            self.recorder.metrics(event.kind).probes_lost += 1
        elif isinstance(event, checks.ConsentLost):
            self.finish(now, "the path stopped answering (consent lost, RFC 7675)", ok=False)
        elif (message := failure_message(self, event)) is not None and self.failure is None:
            if isinstance(event, checks.ChecksFailed):
                base.direct.reason = event.reason
            self.failure = message
            self.finish(now, message, ok=False)

    def _on_path(self, pair: checks.Pair, now: float) -> None:
        assert self.connector.checks is not None
        self.paths = PathManager(
            self.connector.checks, return_to_direct=self.options.relay == "auto"
        )
        self.paths.select(pair, now)
        self.connected = True
        self._t_connected = now
        setup = (now - self._t_peer) * 1000
        remote = self.connector.remote_shown(pair)
        self.recorder.path_active(pair.kind, remote)
        self.recorder.base.setup_ms = setup
        self._next_rtcp = now
        self.sending, self.playout = FrameClock(now), PlayoutClock(now)
        self._next_stats = now + self.options.stats_interval
        self._events.append(ev.Connected(pair.kind, remote, pair.describe(), setup))

    def _switched(self, switched: Switched) -> None:
        self._connector_moved()  # the checks probe and keep consent on the new pairs now
        if self.playout is not None:
            self.playout.relearn()
        remote = self.connector.remote_shown(switched.pair)
        self.recorder.path_active(switched.pair.kind, remote)
        self._events.append(ev.PathSwitched(switched.pair.kind, remote, switched.why))
