"""One caller for netsim tests: a `CallCore` as a netsim endpoint that keeps what it saw."""

from __future__ import annotations

from tests.netsim import Address
from tests.netsim import Network
from tests.netsim import Responder
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
SIDE_PORTS = 50000  # extra sockets' local ports: this plus their index


class SideSocket(Responder):
    """One of a caller's extra sockets on the network (birthday punching's hard side)."""

    def __init__(self, caller: Caller, index: int):
        self.caller, self.index = caller, index

    def handle(self, data: bytes, src: Address, now: float) -> list[Transmit]:
        self.caller.handle_side(self.index, data, src, now)
        return []


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

    def __init__(
        self,
        name: str,
        peer: str,
        addr: Address,
        options: CallOptions,
        net: Network | None = None,
    ):
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
        self.addr, self.net = addr, net  # with a network: birthday punching's extra sockets
        self.side: dict[int, Address] = {}  # extra sockets open, by index: their addresses
        self.side_opened = 0

    def _note(self, out: list[Transmit], now: float) -> list[Transmit]:
        self.events += self.core.pop_events()
        if self.connected_at is None and self.core.connected:
            self.connected_at = now
        if self.ended_at is None and self.core.done:
            self.ended_at = now
        if self.mute_from is not None and now >= self.mute_from:
            out = [(d, a) for d, a in out if not is_media(d)]
        self.sent_rtp += [d for d, _ in out if looks_like_rtp_or_rtcp(d) and not is_rtcp(d)]
        self._sides()
        return out

    def _sides(self) -> None:
        """Open, close and send from the extra sockets, as voip/call.py does."""
        hard = self.core.connector.hard
        if self.net is None or (hard.opener is None and not self.side):
            return
        wanted = set(hard.open)
        for index in [i for i in self.side if i not in wanted]:
            self.net.hosts.pop(self.side.pop(index), None)
        for index in sorted(wanted - self.side.keys()):
            self.side[index] = addr = (self.addr[0], SIDE_PORTS + index)
            self.net.attach(addr, SideSocket(self, index), self.net.nat_of.get(self.addr[0]))
            self.side_opened += 1
        for send in hard.pop_side():
            if send.index in self.side:
                self.net.send(self.side[send.index], [(send.data, send.dest)])

    def handle(self, data: bytes, src: Address, now: float) -> list[Transmit]:
        return self._note(self.core.handle(data, src, now), now)

    def handle_side(self, index: int, data: bytes, src: Address, now: float) -> None:
        out = self._note(self.core.handle(data, src, now, side=index), now)
        if self.net is not None:
            self.net.send(self.addr, out)

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
