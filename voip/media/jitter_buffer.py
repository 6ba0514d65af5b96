"""An adaptive jitter buffer, sans-IO, after WebRTC NetEq's delay manager.

Each packet's lateness is how much later it arrived than the fastest packet of the last few
seconds would have (arrival time minus its place in the stream, against the running minimum of
that). Latenesses go into a histogram that forgets old packets exponentially; the target delay
is the histogram's 95th percentile, rounded up to whole frames, never below one frame.

Playout pops one frame a tick. The buffer grows by itself: when the next frame has not arrived
and nothing after it has either, the decoder conceals *without* advancing (NetEq's "expand"),
so a late packet still plays and the delay has grown by a frame. It shrinks gently: while it
holds more than the target plus a margin, it drops one frame, at most one in `SHRINK_EVERY`
ticks (NetEq "accelerates" by time-compression instead; dropping is the simple version).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

BIN_MS = 5.0
BINS = 200  # up to 1 s of lateness
FORGET = 0.995  # per packet: a half-life of ~140 packets, ~2.8 s at 50 packets a second
PERCENTILE = 0.95
BASELINE_WINDOW = 3.0  # s over which the fastest packet sets the baseline
SHRINK_MARGIN = 2  # frames above target before dropping one
SHRINK_EVERY = 10  # ticks between two drops


@dataclass(frozen=True)
class Frame:
    seq: int
    payload: bytes


@dataclass(frozen=True)
class Gap:
    """A frame that was lost; `next_payload` is the following packet if here (for FEC)."""

    seq: int
    next_payload: bytes | None


@dataclass(frozen=True)
class Expand:
    """Nothing to play and nothing after it yet: conceal, and wait for the frame."""

    seq: int


class AdaptiveJitterBuffer:
    def __init__(self, frame_s: float = 0.02, capacity: int = 100):
        self.frame_s = frame_s
        self.capacity = capacity
        self._packets: dict[int, bytes] = {}
        self._next_seq: int | None = None
        self._highest: int | None = None
        self._hist = [0.0] * BINS
        self._baseline: deque[tuple[float, float]] = deque()  # (arrival, relative delay)
        self._started = False
        self._since_shrink = SHRINK_EVERY
        self.target_frames = 1
        self.late = 0
        self.duplicates = 0
        self.expands = 0
        self.dropped_to_shrink = 0
        self.skipped = 0  # frames jumped over after an outage
        self.target_history: list[int] = []

    # -- arrival ------------------------------------------------------------------------
    def push(self, ext_seq: int, payload: bytes, now: float) -> bool:
        """Add a packet by extended sequence number; False if too late or a duplicate."""
        if self._next_seq is None:
            self._next_seq = ext_seq
        if ext_seq < self._next_seq:
            self.late += 1
            self._observe(ext_seq, now)  # a late packet is exactly what the target must learn
            return False
        if ext_seq in self._packets:
            self.duplicates += 1
            return False
        if ext_seq >= self._next_seq + self.capacity:  # the sender jumped: follow it
            self._packets.clear()
            self._next_seq = ext_seq
        self._packets[ext_seq] = payload
        self._highest = ext_seq if self._highest is None else max(self._highest, ext_seq)
        self._observe(ext_seq, now)
        return True

    def _observe(self, ext_seq: int, now: float) -> None:
        relative = now - ext_seq * self.frame_s  # constant on a perfect network
        while self._baseline and now - self._baseline[0][0] > BASELINE_WINDOW:
            self._baseline.popleft()
        while self._baseline and self._baseline[-1][1] >= relative:
            self._baseline.pop()  # a monotonic deque: the front is the window's minimum
        self._baseline.append((now, relative))
        lateness_ms = 1000.0 * (relative - self._baseline[0][1])
        for i in range(BINS):
            self._hist[i] *= FORGET
        self._hist[min(BINS - 1, int(lateness_ms / BIN_MS))] += 1.0 - FORGET
        self.target_frames = max(1, math.ceil(self._percentile_ms() / (1000 * self.frame_s)))

    def _percentile_ms(self) -> float:
        total = sum(self._hist)
        if total <= 0:
            return 0.0
        running = 0.0
        for i, weight in enumerate(self._hist):
            running += weight
            if running >= PERCENTILE * total:
                return (i + 1) * BIN_MS  # the bin's upper edge: err towards enough delay
        return BINS * BIN_MS

    # -- playout ------------------------------------------------------------------------
    @property
    def level(self) -> int:
        """Frames buffered from the next one to play up to the newest received."""
        if self._next_seq is None or self._highest is None or self._highest < self._next_seq:
            return 0
        return self._highest - self._next_seq + 1

    @property
    def depth(self) -> int:
        return len(self._packets)

    @property
    def delay_ms(self) -> float:
        """The delay the buffer adds now: its level in frames."""
        return 1000.0 * self.level * self.frame_s

    def pop(self, now: float) -> Frame | Gap | Expand | None:
        """The frame due this tick; None before playout has started."""
        if self._next_seq is None:
            return None
        if not self._started:
            if self.level < self.target_frames:
                return None
            self._started = True
        self.target_history.append(self.target_frames)
        self._since_shrink += 1
        if self.level > self.target_frames + SHRINK_MARGIN and self._since_shrink >= SHRINK_EVERY:
            self._since_shrink = 0
            self.dropped_to_shrink += 1
            self._packets.pop(self._next_seq, None)
            self._next_seq += 1
        seq = self._next_seq
        payload = self._packets.pop(seq, None)
        if payload is not None:
            self._next_seq += 1
            return Frame(seq, payload)
        if self._highest is not None and self._highest > seq:
            if self.level > self.target_frames + SHRINK_MARGIN:
                # A hole after an outage, with plenty buffered behind it: concealing the hole
                # frame by frame would make the listener hear the outage twice. Skip it.
                following = min(s for s in self._packets if s > seq)
                self.skipped += following - seq
                self._next_seq = following + 1
                return Frame(following, self._packets.pop(following))
            self._next_seq += 1  # later frames are here: this one is lost
            return Gap(seq, self._packets.get(seq + 1))
        self.expands += 1  # nothing newer either: stretch and wait for it
        return Expand(seq)

    def drain(self) -> list[Frame | Gap]:
        """Everything still buffered, in order, for the end of the call (no shrinking)."""
        out: list[Frame | Gap] = []
        if self._next_seq is None or self._highest is None:
            return out
        for seq in range(self._next_seq, self._highest + 1):
            payload = self._packets.pop(seq, None)
            out.append(
                Frame(seq, payload) if payload is not None else Gap(seq, self._packets.get(seq + 1))
            )
        self._next_seq = self._highest + 1
        return out
