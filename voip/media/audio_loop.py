"""The audio's 20 ms beat, sans-IO: read and send a frame, play one, RTCP once a second.

Two frame clocks (voip/media/frame_clocks.py), one for sending and one for playing, each on its
own phase. `send_due` and `play_due` do a tick's work when its clock is due; the call routes
what `send_due` returns and watches its path after each `play_due`.
"""

from __future__ import annotations

from typing import Protocol

from voip.codecs.pcm import Pcm
from voip.media.audio_io import AudioSink
from voip.media.audio_io import AudioSource
from voip.media.audio_session import AudioSession
from voip.media.frame_clocks import FrameClock
from voip.media.frame_clocks import PlayoutClock


class LoopOptions(Protocol):
    rtcp_interval: float  # s between RTCP reports
    timeline: bool  # record when each frame was read and played


class AudioLoop:
    def __init__(
        self,
        audio: AudioSession,
        source: AudioSource,
        sink: AudioSink,
        start: float,
        options: LoopOptions,
    ):
        self.audio, self.source, self.sink = audio, source, sink
        self.sending = FrameClock(start)  # when the next frame is read and sent
        self.playout = PlayoutClock(start)  # when the next frame is played
        self.rtcp_interval = options.rtcp_interval
        self.timeline = options.timeline
        # With `timeline`: when (the caller's clock) each frame was read, and each played.
        self.captured_at: list[float] = []
        self.played_at: list[float] = []
        self._next_rtcp = start

    def next_deadline(self) -> float:
        return min(self.sending.next, self.playout.next)

    def send_due(self, now: float) -> bytes | None:
        """The RTP or RTCP packet for the peer when the send clock is due, else None."""
        if now < self.sending.next:
            return None
        if now >= self._next_rtcp:
            # On its own, before the codec's work (the frame follows at once, in the next
            # poll): a report says when it was sent (its NTP timestamp, or for the peer its
            # DLSR), and every ms between `now` and the send would count as round trip.
            self._next_rtcp = now + self.rtcp_interval
            return self.audio.report(now)
        self.sending.tick(now)
        pcm = self.source.read()
        if self.timeline:
            self.captured_at.append(now)
        return self.audio.packetize(pcm)

    def play_due(self, now: float) -> bool:
        """A frame played when the playout clock is due; False when it was not."""
        if now < self.playout.next:
            return False
        self.playout.tick(now)
        if (pcm := self.audio.tick(now)) is not None:
            self.play(pcm, now)
        return True

    def play(self, pcm: Pcm, now: float) -> None:
        self.sink.write(pcm)
        if self.timeline:
            self.played_at.append(now)

    def drain(self, now: float) -> None:
        """Play what already arrived rather than drop it (the call is ending)."""
        for pcm in self.audio.drain(now):
            self.play(pcm, now)
