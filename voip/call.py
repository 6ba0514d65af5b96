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
from voip.codecs.opus import OpusDecoder, OpusEncoder
from voip.codecs.pcm import FRAME_MS, FRAME_SAMPLES
from voip.media.audio_io import AudioSink, AudioSource
from voip.media.jitter_buffer import (
    COMFORT_NOISE_BYTES,
    AdaptiveJitterBuffer,
    Comfort,
    Expand,
    Frame,
    Gap,
)
from voip.media.rtcp_session import PeerBye, PeerReceptionReport, RtcpSession, RttMeasured
from voip.media.rtp_stream import RtpReceiverStats, RtpSender
from voip.nat import checks
from voip.nat.candidates import Candidate, CandidateType, format_address, is_usable_host_ip
from voip.nat.connector import Connector, Introduced, PeerTimeout, RelayReady, RelayUnavailable
from voip.nat.host_addresses import host_ipv4_addresses
from voip.nat.rendezvous_client import Asked, Refused, Registered, TurnOffer, Unreachable
from voip.report import CallReport, PathMetrics
from voip.transport import Timer, UdpEndpoint
from voip.wire.rtp import RtpError, is_rtcp, looks_like_rtp_or_rtcp, parse_rtp_untrusted
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
# At 50 packets a second, 200 ms without one on the active path is not jitter: move to the
# standby path. The goal is an audible gap under 300 ms, detection included.
FAILOVER_AFTER = 0.2
FAILOVER_AFTER_DTX = 1.0  # in DTX silence a packet comes only every 400 ms: allow two missing
DTX_SKIP_BYTES = 2
FOLLOW_AFTER = 0.06  # audio on the standby while the active is this quiet: the peer moved
RETURN_AFTER_PROBES = 2  # consecutive answered probes before going back to direct
SWITCH_HOLDOFF = 1.0  # no second switch within this long of the last


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
        self._report = CallReport(me=name, peer=peer)
        self._endpoint: UdpEndpoint | None = None
        self._timer: Timer | None = None
        self._connector: Connector | None = None
        self._active: checks.Pair | None = None
        self._connected = asyncio.Event()
        self._done = asyncio.Event()
        self._failure: CallError | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._t_start = 0.0
        self._t_peer = 0.0
        self._t_connected = 0.0
        self._last_rtp = 0.0
        self._last_switch = 0.0
        self._failed_over = False  # on the relay because direct died: come back when it lives
        self._gap_run = 0  # consecutive frames concealed so far
        # With options.timeline: when (time.monotonic, shared by every process on the machine)
        # each source frame was read, and each frame went to the sink.
        self.captured_at: list[float] = []
        self.played_at: list[float] = []
        self._encoder = OpusEncoder(fec=self.options.fec, dtx=self.options.dtx)
        self._in_dtx = False
        self._peer_in_dtx = False  # the last packet was a comfort-noise update
        self._decoder = OpusDecoder()
        self._sender = RtpSender()
        self._rx = RtpReceiverStats()
        self._rtcp = RtcpSession(self._sender, self._rx, time.time() - time.monotonic())
        self._jb = AdaptiveJitterBuffer(FRAME_S, fec=self.options.fec)

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
        self._report.keepalive_s = self.options.keepalive
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
            raise CallError(self._report.ended or "the call ended before it connected")

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
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._active is not None and not self._done.is_set():
            self._send_media(self._rtcp.build_bye(now, reason))
        self._finish(reason, ok=self._failure is None)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._drain_playout()
        if self._connector is not None:
            self._endpoint.send_all(self._connector.leave(now))
        if self._timer is not None:
            self._timer.cancel()
        self._endpoint.close()
        self._endpoint = None
        self.source.close()
        self.sink.close()

    def report(self) -> CallReport:
        """The call's figures so far (final once it has ended)."""
        r = self._report
        if self._active is not None:
            active = self._metrics(self._active.kind)
            active.jitter_ms = self._rx.jitter_ms
            active.loss_pct = self._rx.loss_pct
        for kind in (checks.DIRECT, checks.RELAYED):
            metrics = self._metrics(kind)
            if metrics.available and (self._active is None or kind != self._active.kind):
                metrics.jitter_ms, metrics.loss_pct = (
                    metrics.probe_jitter_ms(),
                    metrics.probe_loss_pct(),
                )
        connector = self._connector
        if connector is not None and connector.checks is not None:
            for kind in (checks.DIRECT, checks.RELAYED):
                metrics = self._metrics(kind)
                if not metrics.available and metrics.reason is None:
                    metrics.reason = connector.checks.unreached(kind)
                    if kind == checks.DIRECT and connector.punch_hopeless:
                        metrics.reason = (
                            "both NATs map per destination (symmetric), so the relay was "
                            f"used at once; {metrics.reason}"
                        )
        if connector is not None and not r.relay.available and connector.relay_unavailable:
            r.relay.reason = connector.relay_unavailable
        r.audio.frames_late = self._jb.late
        history = self._jb.target_history
        if history:  # the delay the buffer actually added, which the E-model charges
            r.jitter_buffer_ms = round(1000 * FRAME_S * sum(history) / len(history), 1)
        return r

    def _metrics(self, kind: str) -> PathMetrics:
        return self._report.direct if kind == checks.DIRECT else self._report.relay

    async def events(self) -> AsyncIterator[ev.CallEvent]:
        """Every event, in order, until the call has ended."""
        while True:
            event = await self._queue.get()
            yield event
            if isinstance(event, ev.Ended):
                return

    # -- plumbing -------------------------------------------------------------------------
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
            self._on_media(data, src, checks.HOST, now)
        else:
            out, inner = self._connector.handle(data, src, now)
            self._endpoint.send_all(out)
            if inner is not None:
                self._on_media(inner[0], inner[1], checks.RELAY, now)
            self._handle_connector_events(now)
        if self._timer is not None:
            self._timer.rearm()

    def _on_media(self, data: bytes, src: Address, base: str, now: float) -> None:
        if self._active is None:
            return
        if (base, src) != self._active.key:
            checks_ = self._connector.checks if self._connector is not None else None
            pair = checks_.pairs.get((base, src)) if checks_ is not None else None
            if pair is None or not pair.valid:
                return  # media only from pairs the checks proved both ways; else a stranger
            assert checks_ is not None
            if is_rtcp(data) or checks_.controlling or now - self._last_rtp < FOLLOW_AFTER:
                # A straggler from before a switch; or we control, and the peer will follow us
                # (if both followed, two sides that picked different relayed pairs would chase
                # each other forever). Played all the same: it came on a proved pair.
                if not is_rtcp(data):
                    self._on_rtp(data, now, on_active=False)
                return
            self._switch(now, f"{self.peer} moved to it", to=pair)  # the peer switched: follow
        if is_rtcp(data):
            self._on_rtcp(data, now)
        else:
            self._on_rtp(data, now, on_active=True)

    def _send_media(self, data: bytes) -> None:
        assert self._endpoint is not None and self._connector is not None
        if self._active is not None:
            self._endpoint.send(*self._connector.route(data, self._active))

    def _handle_connector_events(self, now: float) -> None:
        assert self._connector is not None
        server = format_address(self.server)
        for event in self._connector.pop_events():
            if isinstance(event, Registered):
                self._report.local_public = format_address(event.mapped)
                self._emit(ev.Registered(self.name, event.mapped))
            elif isinstance(event, Asked):
                if event.status == "waiting":
                    self._emit(ev.Waiting(self.peer, now))
            elif isinstance(event, RelayReady):
                self._emit(ev.RelayAllocated(event.relayed, event.server))
            elif isinstance(event, RelayUnavailable):
                self._report.relay.reason = event.reason
            elif isinstance(event, Refused):
                hint = REFUSAL_HINTS.get(event.code, "").format(name=self.name)
                self._fail(
                    f"the rendezvous at {server} refused us: {event.code} {event.reason}{hint}"
                )
            elif isinstance(event, Unreachable):
                if self._connector.signal.mapped is None:
                    self._fail(
                        f"no answer from the rendezvous at {server} after "
                        f"{event.waited:.0f} s (is callpeer-rendezvous running there, and "
                        "is UDP let through?)"
                    )
            elif isinstance(event, PeerTimeout):
                self._fail(
                    f"{self.peer} did not call back within {event.waited:.0f} s "
                    f"(they must run: callpeer --as {self.peer} {self.name})"
                )
            elif isinstance(event, Introduced):
                ready = event.ready
                self._t_peer = now
                self._report.wait_ms = (now - self._t_start) * 1000
                self._report.candidates_tried = [str(c) for c in ready.candidates]
                self._report.nat_mapping = {
                    "mine": self._connector.own_mapping,
                    "peer": ready.peer_mapping,
                }
                self._emit(ev.Punching(ready.peer, ready.candidates, ready.controlling))
            elif isinstance(event, checks.PathSelected) and self._active is None:
                self._on_path(event.pair, now)
            elif isinstance(event, checks.StandbyChanged):
                metrics = self._metrics(event.pair.kind)
                metrics.available = True
                metrics.remote = self._connector.remote_shown(event.pair)
                self._emit(ev.Standby(event.pair.kind, metrics.remote))
            elif isinstance(event, checks.RttSample) and self._active is not None:
                # Only samples from the call itself: during the checks both ends are busy
                # setting up, which a path's figures should not be charged with.
                metrics = self._metrics(event.kind)
                metrics.add_rtt(now - self._t_connected, event.rtt, "stun")
                if not event.active:
                    metrics.probes_answered += 1
            elif isinstance(event, checks.ProbeLost):
                self._metrics(event.kind).probes_lost += 1
            elif isinstance(event, checks.ChecksFailed):
                self._report.direct.reason = event.reason
                self._fail(
                    f"could not reach {self.peer}: {event.reason} (tried "
                    f"{', '.join(event.tried)}). Punching cannot work when one NAT maps per "
                    "destination (symmetric) and the other filters by port, or both map per "
                    f"destination; that needs a relay ({self._relay_state()})"
                )
            elif isinstance(event, checks.ConsentLost):
                self._finish("the path stopped answering (consent lost, RFC 7675)", ok=False)

    def _relay_state(self) -> str:
        assert self._connector is not None
        if self._connector.relay_unavailable:
            return f"none here: {self._connector.relay_unavailable}"
        return "and the relayed pairs did not answer either"

    def _on_path(self, pair: checks.Pair, now: float) -> None:
        assert self._connector is not None
        self._active = pair
        self._t_connected = now
        self._last_rtp = now
        setup = (now - self._t_peer) * 1000
        metrics = self._metrics(pair.kind)
        self._report.path = pair.kind
        self._report.setup_ms = setup
        metrics.available = True
        metrics.remote = self._connector.remote_shown(pair)
        self._connected.set()
        self._emit(ev.Connected(pair.kind, metrics.remote, pair.describe(), setup))
        loop = asyncio.get_running_loop()
        for coro in (
            self._send_loop(),
            self._playout_loop(),
            self._rtcp_loop(),
            self._stats_loop(),
        ):
            self._tasks.append(loop.create_task(coro))

    # -- media ----------------------------------------------------------------------------
    def _on_rtp(self, data: bytes, now: float, on_active: bool) -> None:
        try:
            pkt = parse_rtp_untrusted(data)
        except RtpError:
            self._report.audio.packets_malformed += 1
            return
        ext = self._rx.update(pkt, now)
        if ext is None:
            return
        if on_active:  # the failover watch asks whether the *active* path still carries audio
            self._last_rtp = now
            self._peer_in_dtx = len(pkt.payload) <= COMFORT_NOISE_BYTES
        self._jb.push(ext, pkt.payload, now, pkt.timestamp)

    def _on_rtcp(self, data: bytes, now: float) -> None:
        assert self._active is not None
        for event in self._rtcp.handle(data, now):
            if isinstance(event, RttMeasured):
                self._metrics(self._active.kind).add_rtt(now - self._t_connected, event.rtt, "rtcp")
            elif isinstance(event, PeerReceptionReport):
                # The peer's loss sizes our in-band FEC: Opus spends bits on LBRR only as
                # much as the expected loss says is worth it.
                self._encoder.set_expected_loss(round(100 * event.fraction_lost))
                self._report.audio.peer_loss_pct = round(100 * event.fraction_lost, 1)
            elif isinstance(event, PeerBye):
                self._finish(f"{self.peer} hung up", ok=True)

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

    async def _send_loop(self) -> None:
        async for _ in self._ticks(FRAME_S):
            pcm = self.source.read()
            if self.options.timeline:
                self.captured_at.append(time.monotonic())
            payload = self._encoder.encode(pcm)
            if len(payload) <= DTX_SKIP_BYTES:
                # libopus: "2 bytes or less ... does not need to be transmitted" (DTX)
                self._sender.skip(FRAME_SAMPLES)
                self._in_dtx = True
                self._report.audio.frames_not_sent += 1
                continue
            # The marker bit opens a talkspurt after silence (RFC 3551 §4.1)
            pkt = self._sender.packetize(payload, FRAME_SAMPLES, marker=self._in_dtx)
            self._in_dtx = False
            self._send_media(bytes(pkt))
            self._report.audio.frames_sent += 1

    async def _playout_loop(self) -> None:
        async for now in self._ticks(FRAME_S):
            self._play_one(now)
            self._watch_path(now)
            if now - self._last_rtp > MEDIA_TIMEOUT:
                self._finish(f"no audio from {self.peer} for {MEDIA_TIMEOUT:.0f} s", ok=False)

    def _play_one(self, now: float) -> None:
        item = self._jb.pop(now)
        if item is not None:
            self._play_item(item)

    def _watch_path(self, now: float) -> None:
        """Fail over when the active path goes quiet; come back when direct lives again."""
        checks_ = self._connector.checks if self._connector is not None else None
        if checks_ is None or checks_.standby is None or now - self._last_switch < SWITCH_HOLDOFF:
            return
        if self._rx.received == 0:
            return  # the peer has not started sending yet: that is not a dead path
        quiet_for = FAILOVER_AFTER_DTX if self._peer_in_dtx else FAILOVER_AFTER
        if now - self._last_rtp > quiet_for:
            self._switch(now, f"no audio on it for {1000 * (now - self._last_rtp):.0f} ms")
        elif (
            self._failed_over
            and checks_.controlling
            and checks_.standby.kind == checks.DIRECT
            and checks_.standby_streak >= RETURN_AFTER_PROBES
        ):
            self._switch(now, "the direct path answers again")

    def _switch(self, now: float, why: str, to: checks.Pair | None = None) -> None:
        assert self._connector is not None and self._connector.checks is not None
        old = self._active
        new = self._connector.checks.switch(now, to)
        if new is None or old is None:
            return
        self._active = new
        self._last_switch = self._last_rtp = now
        self._failed_over = self.options.relay == "auto" and new.kind == checks.RELAYED
        self._report.path = new.kind
        self._report.path_switches += 1
        metrics = self._metrics(new.kind)
        metrics.available = True
        metrics.remote = self._connector.remote_shown(new)
        self._emit(ev.PathSwitched(new.kind, metrics.remote, why))

    def _play_item(self, item: Frame | Gap | Expand | Comfort) -> None:
        audio = self._report.audio
        if isinstance(item, Comfort):  # silence the talker chose: not a gap, not a loss
            self._gap_run = 0
            audio.frames_comfort += 1
            self.sink.write(self._decoder.conceal())  # Opus continues its comfort noise
            if self.options.timeline:
                self.played_at.append(time.monotonic())
            return
        self._gap_run = 0 if isinstance(item, Frame) else self._gap_run + 1
        audio.longest_gap_ms = max(audio.longest_gap_ms, 1000 * FRAME_S * self._gap_run)
        if isinstance(item, Frame):
            try:
                pcm = self._decoder.decode(item.payload)
                audio.frames_received += 1
            except ValueError:
                audio.packets_malformed += 1
                pcm = self._decoder.conceal()
                audio.frames_concealed += 1
        elif isinstance(item, Gap) and item.next_payload is not None and self.options.fec:
            pcm = self._decoder.recover(item.next_payload)
            audio.frames_recovered += 1
        else:  # a Gap with nothing after it, or an Expand waiting for a late frame
            pcm = self._decoder.conceal()
            audio.frames_concealed += 1
            audio.concealed_at.append(asyncio.get_running_loop().time() - self._t_connected)
            if isinstance(item, Expand):
                audio.frames_expanded += 1
        self.sink.write(pcm)
        if self.options.timeline:
            self.played_at.append(time.monotonic())

    def _drain_playout(self) -> None:
        """At the end, play what already arrived rather than drop it."""
        for item in self._jb.drain():
            self._play_item(item)

    async def _rtcp_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            self._send_media(self._rtcp.build_report(now, self._sender.timestamp))
            await asyncio.sleep(self.options.rtcp_interval)

    async def _stats_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.options.stats_interval)
            self._emit(
                ev.LiveStats(
                    path=self._report.path,
                    elapsed=loop.time() - self._t_connected,
                    rtt_ms=self._metrics(self._report.path).latest_rtt_ms(),
                    jitter_ms=self._rx.jitter_ms,
                    loss_pct=self._rx.loss_pct,
                    frames_sent=self._report.audio.frames_sent,
                    frames_received=self._report.audio.frames_received,
                )
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
        self._report.ended = reason
        if self._connected.is_set():
            self._report.duration_s = loop.time() - self._t_connected
        self._done.set()
        self._emit(ev.Ended(reason, ok))
