"""One caller for netsim tests: a `CallCore` as a netsim endpoint that keeps what it saw."""

from __future__ import annotations

from tests.netsim import Address
from tests.netsim import Transmit
from voip import events as ev
from voip.call_core import CallCore
from voip.call_core import CallOptions
from voip.codecs.pcm import Pcm
from voip.media.audio_io import ToneSource
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.rtp import is_rtcp
from voip.wire.rtp import looks_like_rtp_or_rtcp
from voip.wire.stun import Attr
from voip.wire.stun import Method
from voip.wire.stun import looks_like_stun
from voip.wire.stun import parse_message_untrusted
from voip.wire.turn import looks_like_channel_data

SERVER: Address = ("203.0.113.10", 3478)


class Speaker:
    """The sink: counts what was played."""

    description = "a counter"

    def __init__(self) -> None:
        self.frames = 0

    def write(self, pcm: Pcm) -> None:
        self.frames += 1

    def close(self) -> None: ...


def is_media(data: bytes) -> bool:
    """SRTP or SRTCP, sent directly, or through our relay as ChannelData or a Send indication."""
    if looks_like_channel_data(data):
        data = data[4:]
    elif looks_like_stun(data) and (msg := parse_message_untrusted(data)).method == Method.SEND:
        data = msg.get(Attr.DATA) or b""
    return looks_like_rtp_or_rtcp(data)


class Caller:
    """`name` calling `peer` from host address `addr` through the rendezvous at SERVER, sending
    a tone (alice 440 Hz, anyone else 660). Keeps its events, when it connected and ended
    (events carry no time), and the RTP it sent straight to the peer; from `mute_from` on it
    sends no media (its checks still go), as a peer whose audio stops would."""

    def __init__(self, name: str, peer: str, addr: Address, options: CallOptions):
        self.sink = Speaker()
        self.core = CallCore(
            name,
            peer,
            SERVER,
            (Candidate.make(CandidateType.HOST, addr),),
            source=ToneSource(440 if name == "alice" else 660),
            sink=self.sink,
            options=options,
        )
        self.events: list[ev.CallEvent] = []
        self.sent_rtp: list[bytes] = []
        self.connected_at: float | None = None
        self.ended_at: float | None = None
        self.mute_from: float | None = None

    def _note(self, out: list[Transmit], now: float) -> list[Transmit]:
        self.events += self.core.pop_events()
        if self.connected_at is None and self.core.connected:
            self.connected_at = now
        if self.ended_at is None and self.core.done:
            self.ended_at = now
        if self.mute_from is not None and now >= self.mute_from:
            out = [(d, a) for d, a in out if not is_media(d)]
        self.sent_rtp += [d for d, _ in out if looks_like_rtp_or_rtcp(d) and not is_rtcp(d)]
        return out

    def handle(self, data: bytes, src: Address, now: float) -> list[Transmit]:
        return self._note(self.core.handle(data, src, now), now)

    def poll(self, now: float) -> list[Transmit]:
        return self._note(self.core.poll(now), now)

    def next_deadline(self) -> float | None:
        return self.core.next_deadline()

    @property
    def received(self) -> int:
        return self.core.audio.counts.frames_received

    def ended(self) -> ev.Ended:
        ended = [e for e in self.events if isinstance(e, ev.Ended)]
        assert ended, self.events
        return ended[0]

    def switches(self) -> list[ev.PathSwitched]:
        return [e for e in self.events if isinstance(e, ev.PathSwitched)]

    def secured(self) -> ev.Secured | None:
        return next((e for e in self.events if isinstance(e, ev.Secured)), None)
