"""Frame clocks: when to send the next 20 ms frame, and when to play one, each on its own phase.

Ticks keep to absolute time (no drift), and after a stall skip whole frames ahead rather than
burst, so the phase stays where it was learned (and where the peer learned ours).
Sending keeps its own schedule; playing need not share it. The peer's packets arrive at a
phase of our frame clock fixed by the two clocks and the path's delay, and if that phase falls
right at our playout tick, a millisecond of jitter decides whether a packet is played now or a
whole frame later: the jitter buffer then grows and shrinks by a frame, and the listener hears
a stretched or dropped frame each time. So the clock watches how long before its tick packets
arrive, and once (after SAMPLES packets, and again after a path switch) moves its phase so they
arrive MARGIN before it: never on the edge, and no more than a few ms of extra waiting.
"""

from __future__ import annotations

import math
import statistics

from voip.codecs.pcm import FRAME_MS

FRAME_S = FRAME_MS / 1000.0
SAMPLES = 25  # packets (half a second) to learn the arrival phase from
MARGIN = 0.006  # s before the tick a packet should arrive: jitter of a few ms stays inside it
KEEP = (0.003, 0.012)  # s: margins already this safe (and this short) are left alone
STALL = 10 * FRAME_S  # s behind: skip ahead rather than catch up in a burst


class FrameClock:
    def __init__(self, start: float):
        self.next = start  # when the next frame is due

    def tick(self, now: float) -> None:
        """A frame's work was done at `now`: the next is due a frame later."""
        self.next += FRAME_S
        if now - self.next > STALL:  # by whole frames: the phase is kept
            self.next += FRAME_S * (math.floor((now - self.next) / FRAME_S) + 1)


class PlayoutClock(FrameClock):
    def __init__(self, start: float):
        super().__init__(start)
        self.shifted = 0.0  # s the phase was moved by, in all (for the report and tests)
        self._margins: list[float] = []

    def arrived(self, now: float) -> None:
        """A packet of the peer's arrived on the active path at `now` (the kernel's stamp)."""
        if len(self._margins) >= SAMPLES:
            return
        self._margins.append((self.next - now) % FRAME_S)
        if len(self._margins) == SAMPLES:
            margin = statistics.median(self._margins)
            if not KEEP[0] <= margin <= KEEP[1]:
                shift = MARGIN - margin  # later when packets come too close, earlier when early
                self.next += shift
                self.shifted += shift

    def relearn(self) -> None:
        """The path changed, and with it where packets land: learn the phase again."""
        self._margins.clear()
