"""`Call`: a peer-to-peer audio call for embedding; the asyncio shell around the sans-IO parts.

    async with Call("alice", "bob", source=ToneSource(440), sink=WavSink("a.wav")) as call:
        await call.connected()
        await call.run(duration=5)
    print(call.report().to_dict())

One UDP socket carries everything (DESIGN.md): signalling to the rendezvous, TURN to the relay,
connectivity checks, RTP and RTCP. Datagrams are told apart by their first byte (RFC 7983).
Audio goes on the active path (direct, or through a relay); the other path is probed all call
long, so the report can put the two side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from voip import events as ev
from voip.call_recorder import CallRecorder
from voip.codecs.pcm import FRAME_MS, Pcm
from voip.media.audio_io import AudioSink, AudioSource
from voip.media.audio_session import AudioSession
from voip.media.rtcp_session import PeerBye, RttMeasured
from voip.nat import checks
from voip.nat.candidates import Candidate, CandidateType, format_address, is_usable_host_ip
from voip.nat.connector import Connector, Introduced, PeerTimeout, RelayReady, RelayUnavailable
from voip.nat.host_addresses import host_ipv4_addresses
from voip.nat.path_manager import Media, PathManager, Switched
from voip.nat.rendezvous_client import Asked, Refused, Registered, TurnOffer, Unreachable
from voip.report import CallReport
from voip.transport import Timer, UdpEndpoint
from voip.wire.rtp import is_rtcp, looks_like_rtp_or_rtcp
from voip.wire.signal import ERR_CAPACITY, ERR_NAME_TAKEN, ERR_QUOTA
from voip.wire.stun import Address

FRAME_S = FRAME_MS / 1000.0
# What a refusal means for the user; the server's reason phrases are fixed and short.
REFUSAL_HINTS = {
    ERR_NAME_TAKEN: " (another caller holds the name {name!r}; it is free once they hang up, or "
    "when their registration lapses after they stop refreshing it: 30 s by default)",
    ERR_QUOTA: " (too many names are registered from your public address)",
    ERR_CAPACITY: " (the rendezvous is full; try again later or use another)",
}
MEDIA_TIMEOUT = 10.0  # no RTP from the peer for this long and the call is over


class CallError(Exception):
    """The call could not be made or went down; the message says why in a user's words."""


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


class Call:
    """The asyncio shell: one socket, one timer, one media tick, around the sans-IO parts
    (`Connector` finds the paths, `PathManager` picks the one that carries audio,
    `AudioSession` turns frames into RTP and back, `CallRecorder` keeps the report)."""

    def __init__(
        self,
        name: str,
        peer: str,
        *,
        source: AudioSource,
        sink: AudioSink,
        server: Address = ("127.0.0.1", 3478),
        options: CallOptions | None = None,
        on_event: Callable[[ev.CallEvent], None] | None = None,
    ):
        self.name = name
        self.peer = peer
        self.source = source
        self.sink = sink
        self.server = server
        self.options = options or CallOptions()
        self.on_event = on_event
        self._queue: asyncio.Queue[ev.CallEvent] = asyncio.Queue()
        self._recorder = CallRecorder(name, peer)
        self._audio = AudioSession(
            fec=self.options.fec,
            dtx=self.options.dtx,
            wallclock_offset=time.time() - time.monotonic(),
        )
        self._endpoint: UdpEndpoint | None = None
        self._timer: Timer | None = None
        self._connector: Connector | None = None
        self._paths: PathManager | None = None
        self._connected = asyncio.Event()
        self._done = asyncio.Event()
        self._failure: CallError | None = None
        self._task: asyncio.Task[None] | None = None
        self._t_start = 0.0
        self._t_peer = 0.0
        self._t_connected = 0.0
        # With options.timeline: when (time.monotonic, shared by every process on the machine)
        # each source frame was read, and each frame went to the sink.
        self.captured_at: list[float] = []
        self.played_at: list[float] = []

    # -- public API -----------------------------------------------------------------------
    async def __aenter__(self) -> Call:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.hangup()

    async def start(self) -> None:
        """Open the socket and register with the rendezvous, asking for the peer."""
        loop = asyncio.get_running_loop()
        self._t_start = loop.time()
        self._endpoint = await UdpEndpoint.bind(
            self.options.bind_host, self.options.bind_port, self._on_datagram
        )
        port = self._endpoint.local_address[1]
        if self.options.bind_host in ("0.0.0.0", ""):  # noqa: S104
            ips = host_ipv4_addresses()
        else:  # bound to one address: that is the only host candidate, if it is routable
            ips = [self.options.bind_host] if is_usable_host_ip(self.options.bind_host) else []
        hosts = tuple(
            Candidate.make(CandidateType.HOST, (ip, port), 65535 - i) for i, ip in enumerate(ips)
        )
        self._connector = Connector(
            self.name,
            self.peer,
            self.server,
            hosts,
            wait_timeout=self.options.wait_timeout,
            punch_timeout=self.options.punch_timeout,
            relay_mode=self.options.relay,
            turn=self.options.turn,
            keepalive=self.options.keepalive,
        )
        self._recorder.base.keepalive_s = self.options.keepalive
        self._timer = Timer(loop, self._connector.next_deadline, self._on_timer)
        self._endpoint.send_all(self._connector.start(loop.time()))
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
        if self._failure is not None:
            raise self._failure
        if not self._connected.is_set():
            raise CallError(self._recorder.base.ended or "the call ended before it connected")

    async def run(self, duration: float | None = None) -> None:
        """Carry the call until `duration` seconds of audio, the peer hangs up, or the path dies."""
        await self.connected()
        try:
            await asyncio.wait_for(self._done.wait(), timeout=duration)
        except TimeoutError:
            await self.hangup("duration reached")

    async def hangup(self, reason: str = "hung up") -> None:
        """End the call: BYE to the peer, play out what is buffered, release the name."""
        if self._endpoint is None:
            return
        now = asyncio.get_running_loop().time()
        if self._active is not None and not self._done.is_set():
            self._send_media(self._audio.bye(now, reason))
        self._finish(reason, ok=self._failure is None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for pcm in self._audio.drain(now):  # play what already arrived rather than drop it
            self._play(pcm)
        if self._connector is not None:
            self._endpoint.send_all(self._connector.leave(now))
        if self._timer is not None:
            self._timer.cancel()
        self._endpoint.close()
        self._endpoint = None
        self.source.close()
        self.sink.close()

    def report(self) -> CallReport:
        """The call's figures so far (final once it has ended). Reading it changes nothing."""
        connector = self._connector
        return self._recorder.build(
            self._audio,
            connector.checks if connector is not None else None,
            punch_hopeless=connector is not None and connector.punch_hopeless,
            relay_unavailable=connector.relay_unavailable if connector is not None else None,
        )

    async def events(self) -> AsyncIterator[ev.CallEvent]:
        """Every event, in order, until the call has ended."""
        while True:
            event = await self._queue.get()
            yield event
            if isinstance(event, ev.Ended):
                return

    # -- plumbing -------------------------------------------------------------------------
    @property
    def _active(self) -> checks.Pair | None:
        return self._paths.active if self._paths is not None else None

    def _emit(self, event: ev.CallEvent) -> None:
        self._queue.put_nowait(event)
        if self.on_event is not None:
            self.on_event(event)

    def _on_timer(self, now: float) -> None:
        assert self._endpoint is not None and self._connector is not None
        self._endpoint.send_all(self._connector.poll(now))
        self._handle_connector_events(now)

    def _on_datagram(self, data: bytes, src: Address, now: float) -> None:
        assert self._endpoint is not None and self._connector is not None
        if looks_like_rtp_or_rtcp(data):
            self._on_media(data, (checks.HOST, src), now)
        else:
            out, inner = self._connector.handle(data, src, now)
            self._endpoint.send_all(out)
            if inner is not None:
                self._on_media(inner[0], (checks.RELAY, inner[1]), now)
            self._handle_connector_events(now)
        if self._timer is not None:
            self._timer.rearm()

    def _on_media(self, data: bytes, key: tuple[str, Address], now: float) -> None:
        if self._paths is None:
            return
        rtcp = is_rtcp(data)
        verdict, switched = self._paths.classify(key, rtcp, now)
        if switched is not None:
            self._switched(switched)
        if verdict is Media.DROP:
            return
        if rtcp:
            if verdict is Media.ACTIVE:
                self._on_rtcp(data, now)
            return
        active = verdict is Media.ACTIVE
        if self._audio.on_rtp(data, now, on_active=active) and active:
            self._paths.heard(now, self._audio.peer_in_dtx)

    def _on_rtcp(self, data: bytes, now: float) -> None:
        assert self._active is not None
        for event in self._audio.on_rtcp(data, now):
            if isinstance(event, RttMeasured):
                self._recorder.rtt(self._active.kind, now - self._t_connected, event.rtt, "rtcp")
            elif isinstance(event, PeerBye):
                self._finish(f"{self.peer} hung up", ok=True)

    def _send_media(self, data: bytes) -> None:
        assert self._endpoint is not None and self._connector is not None
        if self._active is not None:
            self._endpoint.send(*self._connector.route(data, self._active))

    def _handle_connector_events(self, now: float) -> None:
        assert self._connector is not None
        for event in self._connector.pop_events():
            if isinstance(event, Registered):
                self._recorder.base.local_public = format_address(event.mapped)
                self._emit(ev.Registered(self.name, event.mapped))
            elif isinstance(event, Asked):
                if event.status == "waiting":
                    self._emit(ev.Waiting(self.peer, now))
            elif isinstance(event, RelayReady):
                self._emit(ev.RelayAllocated(event.relayed, event.server))
            elif isinstance(event, RelayUnavailable):
                self._recorder.base.relay.reason = event.reason
            elif isinstance(event, Introduced):
                self._introduced(event, now)
            elif isinstance(event, checks.PathSelected) and self._active is None:
                self._on_path(event.pair, now)
            elif isinstance(event, checks.StandbyChanged):
                remote = self._connector.remote_shown(event.pair)
                self._recorder.path_found(event.pair.kind, remote)
                self._emit(ev.Standby(event.pair.kind, remote))
            elif isinstance(event, checks.RttSample) and self._active is not None:
                # Only samples from the call itself: during the checks both ends are busy
                # setting up, which a path's figures should not be charged with.
                self._recorder.rtt(event.kind, now - self._t_connected, event.rtt, "stun")
                if not event.active:
                    self._recorder.metrics(event.kind).probes_answered += 1
            elif isinstance(event, checks.ProbeLost):
                self._recorder.metrics(event.kind).probes_lost += 1
            elif isinstance(event, checks.ConsentLost):
                self._finish("the path stopped answering (consent lost, RFC 7675)", ok=False)
            else:
                self._failed(event)

    def _failed(self, event: object) -> None:
        """The events that end a call before it starts, in the user's words."""
        assert self._connector is not None
        server = format_address(self.server)
        if isinstance(event, Refused):
            hint = REFUSAL_HINTS.get(event.code, "").format(name=self.name)
            self._fail(f"the rendezvous at {server} refused us: {event.code} {event.reason}{hint}")
        elif isinstance(event, Unreachable) and self._connector.signal.mapped is None:
            self._fail(
                f"no answer from the rendezvous at {server} after {event.waited:.0f} s (is "
                "callpeer-rendezvous running there, and is UDP let through?)"
            )
        elif isinstance(event, PeerTimeout):
            self._fail(
                f"{self.peer} did not call back within {event.waited:.0f} s "
                f"(they must run: callpeer --as {self.peer} {self.name})"
            )
        elif isinstance(event, checks.ChecksFailed):
            self._recorder.base.direct.reason = event.reason
            self._fail(
                f"could not reach {self.peer}: {event.reason} (tried {', '.join(event.tried)}). "
                "Punching cannot work when one NAT maps per destination (symmetric) and the "
                "other filters by port, or both map per destination; that needs a relay "
                f"({self._relay_state()})"
            )

    def _introduced(self, event: Introduced, now: float) -> None:
        assert self._connector is not None
        ready, base = event.ready, self._recorder.base
        self._t_peer = now
        base.wait_ms = (now - self._t_start) * 1000
        base.candidates_tried = [str(c) for c in ready.candidates]
        base.nat_mapping = {"mine": self._connector.own_mapping, "peer": ready.peer_mapping}
        self._emit(ev.Punching(ready.peer, ready.candidates, ready.controlling))

    def _relay_state(self) -> str:
        assert self._connector is not None
        if self._connector.relay_unavailable:
            return f"none here: {self._connector.relay_unavailable}"
        return "and the relayed pairs did not answer either"

    def _on_path(self, pair: checks.Pair, now: float) -> None:
        assert self._connector is not None and self._connector.checks is not None
        self._paths = PathManager(
            self._connector.checks, return_to_direct=self.options.relay == "auto"
        )
        self._paths.select(pair, now)
        self._t_connected = now
        setup = (now - self._t_peer) * 1000
        remote = self._connector.remote_shown(pair)
        self._recorder.path_active(pair.kind, remote)
        self._recorder.base.setup_ms = setup
        self._connected.set()
        self._emit(ev.Connected(pair.kind, remote, pair.describe(), setup))
        self._task = asyncio.get_running_loop().create_task(self._media_loop())

    def _switched(self, switched: Switched) -> None:
        assert self._connector is not None
        remote = self._connector.remote_shown(switched.pair)
        self._recorder.path_active(switched.pair.kind, remote)
        self._emit(ev.PathSwitched(switched.pair.kind, remote, switched.why))

    # -- media ----------------------------------------------------------------------------
    async def _ticks(self, period: float) -> AsyncIterator[float]:
        """Absolute-time ticks (no drift); after a stall, skip ahead rather than burst."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        n = 0
        while True:
            n += 1
            target = t0 + n * period
            now = loop.time()
            if now - target > 10 * period:
                t0, n = now, 0
                target = now
            await asyncio.sleep(max(0.0, target - now))
            yield loop.time()

    async def _media_loop(self) -> None:
        """Every 20 ms: a frame out, a frame played, the path watched; RTCP and live figures
        once a second. One task, one wake-up a frame."""
        assert self._paths is not None
        next_rtcp = next_stats = 0.0
        async for now in self._ticks(FRAME_S):
            self._send_frame()
            pcm = self._audio.tick(now)
            if pcm is not None:
                self._play(pcm)
            if (switched := self._paths.tick(now)) is not None:
                self._switched(switched)
            if now - self._paths.last_audio > MEDIA_TIMEOUT:
                self._finish(f"no audio from {self.peer} for {MEDIA_TIMEOUT:.0f} s", ok=False)
            if now >= next_rtcp:
                next_rtcp = now + self.options.rtcp_interval
                self._send_media(self._audio.report(now))
            if now >= next_stats:
                if next_stats:
                    self._emit(self._live_stats(now))
                next_stats = now + self.options.stats_interval

    def _send_frame(self) -> None:
        pcm = self.source.read()
        if self.options.timeline:
            self.captured_at.append(time.monotonic())
        packet = self._audio.packetize(pcm)
        if packet is not None:
            self._send_media(packet)

    def _play(self, pcm: Pcm) -> None:
        self.sink.write(pcm)
        if self.options.timeline:
            self.played_at.append(time.monotonic())

    def _live_stats(self, now: float) -> ev.LiveStats:
        base = self._recorder.base
        rx = self._audio.rx
        return ev.LiveStats(
            path=base.path,
            elapsed=now - self._t_connected,
            rtt_ms=self._recorder.metrics(base.path).latest_rtt_ms(),
            jitter_ms=rx.jitter_ms,
            loss_pct=rx.loss_pct,
            frames_sent=self._audio.counts.frames_sent,
            frames_received=self._audio.counts.frames_received,
        )

    # -- ending ---------------------------------------------------------------------------
    def _fail(self, message: str) -> None:
        if self._failure is None and not self._done.is_set():
            self._failure = CallError(message)
            self._finish(message, ok=False)

    def _finish(self, reason: str, ok: bool) -> None:
        if self._done.is_set():
            return
        loop = asyncio.get_running_loop()
        self._recorder.base.ended = reason
        if self._connected.is_set():
            self._recorder.base.duration_s = loop.time() - self._t_connected
        self._done.set()
        self._emit(ev.Ended(reason, ok))
