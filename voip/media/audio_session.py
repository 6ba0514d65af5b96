"""One call's audio, sans-IO: Opus frames to RTP and back, RTCP, the jitter buffer, the counts.

Frames and datagrams in, datagrams and frames out, with the time passed in: the asyncio shell
(`voip/call.py`) reads the source, sends what `packetize` returns, feeds every RTP and RTCP
datagram from the active path to `on_rtp`/`on_rtcp`, and plays what `tick` returns every 20 ms.
RTP is RFC 3550 with the Opus payload format of RFC 7587; RTCP gives RTT (A - LSR - DLSR),
the peer's loss (which sizes our in-band FEC) and BYE.
"""

from __future__ import annotations

from dataclasses import dataclass

from voip.codecs.opus import OpusDecoder
from voip.codecs.opus import OpusEncoder
from voip.codecs.pcm import FRAME_MS
from voip.codecs.pcm import FRAME_SAMPLES
from voip.codecs.pcm import Pcm
from voip.media.audio_counts import AudioCounts
from voip.media.jitter_buffer import COMFORT_NOISE_BYTES
from voip.media.jitter_buffer import AdaptiveJitterBuffer
from voip.media.jitter_buffer import Comfort
from voip.media.jitter_buffer import Expand
from voip.media.jitter_buffer import Frame
from voip.media.jitter_buffer import Gap
from voip.media.rtcp_session import PeerBye
from voip.media.rtcp_session import PeerReceptionReport
from voip.media.rtcp_session import RtcpSession
from voip.media.rtcp_session import RttMeasured
from voip.media.rtp_stream import RtpReceiverStats
from voip.media.rtp_stream import RtpSender
from voip.wire.rtp import RtpError
from voip.wire.rtp import parse_rtp_untrusted

FRAME_S = FRAME_MS / 1000.0
DTX_SKIP_BYTES = 2  # libopus: "2 bytes or less ... does not need to be transmitted" (DTX)

AudioEvent = RttMeasured | PeerBye


@dataclass
class AudioSession:
    fec: bool = True  # Opus in-band FEC: send it, and rebuild lost frames from it
    dtx: bool = False  # Opus DTX: in silence, a comfort-noise update every 400 ms and nothing else
    wallclock_offset: float = 0.0  # unix time = now + offset, for RTCP's NTP timestamps

    def __post_init__(self) -> None:
        self.counts = AudioCounts()
        self.encoder = OpusEncoder(fec=self.fec, dtx=self.dtx)
        self.decoder = OpusDecoder()
        self.sender = RtpSender()
        self.rx = RtpReceiverStats()
        self.rtcp = RtcpSession(self.sender, self.rx, self.wallclock_offset)
        self.jitter_buffer = AdaptiveJitterBuffer(FRAME_S, fec=self.fec)
        self.peer_in_dtx = False  # the last packet was a comfort-noise update
        self._in_dtx = False
        self._gap_run = 0  # consecutive frames concealed so far
        self._started: float | None = None  # the first tick: the call's time zero

    # -- sending ----------------------------------------------------------------------------
    def packetize(self, pcm: Pcm) -> bytes | None:
        """The RTP packet for one 20 ms frame, or None when DTX says silence needs none."""
        payload = self.encoder.encode(pcm)
        if len(payload) <= DTX_SKIP_BYTES:
            self.sender.skip(FRAME_SAMPLES)
            self._in_dtx = True
            self.counts.frames_not_sent += 1
            return None
        # The marker bit opens a talkspurt after silence (RFC 3551 §4.1)
        pkt = self.sender.packetize(payload, FRAME_SAMPLES, marker=self._in_dtx)
        self._in_dtx = False
        self.counts.frames_sent += 1
        return bytes(pkt)

    def report(self, now: float) -> bytes:
        """An RTCP sender report, with a block about what we receive."""
        return self.rtcp.build_report(now, self.sender.timestamp)

    def bye(self, now: float, reason: str) -> bytes:
        return self.rtcp.build_bye(now, reason)

    # -- receiving --------------------------------------------------------------------------
    def on_rtp(self, data: bytes, now: float, *, on_active: bool = True) -> bool:
        """An RTP datagram from a proved pair; `on_active` when it came on the active path.
        True when the stream took it (not malformed, not a stranger's SSRC or a duplicate)."""
        try:
            pkt = parse_rtp_untrusted(data)
        except RtpError:
            self.counts.packets_malformed += 1
            return False
        ext = self.rx.update(pkt, now)
        if ext is None:
            return False
        if on_active:
            self.peer_in_dtx = len(pkt.payload) <= COMFORT_NOISE_BYTES
        self.jitter_buffer.push(ext, pkt.payload, now, pkt.timestamp)
        return True

    def on_rtcp(self, data: bytes, now: float) -> list[AudioEvent]:
        events: list[AudioEvent] = []
        for event in self.rtcp.handle(data, now):
            if isinstance(event, PeerReceptionReport):
                # The peer's loss sizes our in-band FEC: Opus spends bits on LBRR only as much
                # as the expected loss says is worth it.
                self.encoder.set_expected_loss(round(100 * event.fraction_lost))
                self.counts.peer_loss_pct = round(100 * event.fraction_lost, 1)
            else:
                events.append(event)
        return events

    @property
    def receiving(self) -> bool:
        """Whether any of the peer's audio has arrived yet."""
        return self.rx.received > 0

    # -- playout ----------------------------------------------------------------------------
    def tick(self, now: float) -> Pcm | None:
        """The frame to play now, if the buffer has one (decoded, rebuilt or concealed)."""
        if self._started is None:
            self._started = now
        item = self.jitter_buffer.pop(now)
        return None if item is None else self._decode(item, now)

    def drain(self, now: float) -> list[Pcm]:
        """At the end, what already arrived, rather than drop it."""
        return [self._decode(item, now) for item in self.jitter_buffer.drain()]

    def _decode(self, item: Frame | Gap | Expand | Comfort, now: float) -> Pcm:
        counts = self.counts
        if isinstance(item, Comfort):  # silence the talker chose: not a gap, not a loss
            self._gap_run = 0
            counts.frames_comfort += 1
            return self.decoder.conceal()  # Opus continues its comfort noise
        self._gap_run = 0 if isinstance(item, Frame) else self._gap_run + 1
        counts.longest_gap_ms = max(counts.longest_gap_ms, 1000 * FRAME_S * self._gap_run)
        if isinstance(item, Frame):
            try:
                pcm = self.decoder.decode(item.payload)
                counts.frames_received += 1
                return pcm
            except ValueError:
                counts.packets_malformed += 1
        elif isinstance(item, Gap) and item.next_payload is not None and self.fec:
            counts.frames_recovered += 1
            return self.decoder.recover(item.next_payload)
        # A Gap with nothing after it, an Expand waiting for a late frame, or a bad payload.
        counts.frames_concealed += 1
        counts.concealed_at.append(now - (self._started or now))
        if isinstance(item, Expand):
            counts.frames_expanded += 1
        return self.decoder.conceal()

    def jitter_buffer_ms(self) -> float | None:
        """The mean delay the buffer added over the call, which the E-model charges."""
        history = self.jitter_buffer.target_history
        if not history:
            return None
        return round(1000 * FRAME_S * sum(history) / len(history), 1)
