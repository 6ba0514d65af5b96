"""An adaptive jitter buffer, sans-IO, after WebRTC NetEq's delay manager.

Each packet's lateness is how much later it arrived than the fastest packet of the last few
seconds would have (arrival time minus its place in the stream, against the running minimum of
that). Latenesses go into a histogram that forgets old packets exponentially; the target delay
is the histogram's 95th percentile plus a little headroom, rounded up to whole frames, never
below one frame.

Playout pops one frame a tick. The buffer grows by itself: when the next frame has not arrived
and nothing after it has either, the decoder conceals *without* advancing (NetEq's "expand"),
so a late packet still plays and the delay has grown by a frame. It shrinks gently: while it
never fell to its target over the last half second, one frame is surplus and is dropped (NetEq
"accelerates" by time-compression instead; dropping a frame is the simple version).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

BIN_MS = 5.0
BINS = 200  # up to 1 s of lateness
FORGET = 0.995  # per packet: a half-life of ~140 packets, ~2.8 s at 50 packets a second
RESCALE_ABOVE = 1e100  # a new packet's weight (1/FORGET per packet) past this: every ~46k
PERCENTILE = 0.95
# The playout tick and the receiving event loop add a few ms of their own. Without headroom,
# jitter that just fills whole frames (uniform 0-20 ms against 20 ms frames) sits on the edge
# of one frame, and every scheduling hiccup past it is a concealed frame.
HEADROOM_MS = 5.0
BASELINE_WINDOW = 3.0  # s over which the fastest packet sets the baseline
SHRINK_WINDOW = 25  # ticks (0.5 s): a buffer that never fell to its target over this is too deep
SKIP_MARGIN = 2  # frames above target with a hole at the front: skip the hole (an outage)
# After a loss, keep two frames for this long: in-band FEC rebuilds a lost frame from the packet
# after it, which must already be here when the lost one is due.
FEC_FLOOR_FRAMES = 2
FEC_FLOOR_HOLD = 10.0  # s
COMFORT_NOISE_BYTES = 3  # an Opus packet this small is a DTX comfort-noise update, not speech


@dataclass(frozen=True)
class Playout:
    """What to play at frame `seq`'s turn: one of the four kinds below, told apart by type."""

    seq: int


@dataclass(frozen=True)
class Frame(Playout):
    payload: bytes


@dataclass(frozen=True)
class Gap(Playout):
    """A frame that was lost; `next_payload` is the following packet if here (for FEC)."""

    next_payload: bytes | None


class Comfort(Playout):
    """DTX silence: the last packet was a comfort-noise update and the next is not due yet."""


class Expand(Playout):
    """Nothing to play and nothing after it yet: conceal, and wait for the frame."""


class AdaptiveJitterBuffer:
    def __init__(self, frame_s: float = 0.02, capacity: int = 100, fec: bool = True):
        self.frame_s = frame_s
        self.fec = fec  # hold a frame for FEC after a loss only if FEC is used
        self.capacity = capacity
        self._packets: dict[int, bytes] = {}
        self._next_seq: int | None = None
        self._highest: int | None = None
        # The decaying histogram, kept without touching every bin per packet: each new packet
        # weighs 1/FORGET times the one before, which is the same as decaying all the others,
        # and a percentile does not care about the scale. Rescaled once in a long while.
        self._hist = [0.0] * BINS
        self._hist_total = 0.0
        self._weight = 1.0 - FORGET
        self._baseline: deque[tuple[float, float]] = deque()  # (arrival, relative delay)
        self._started = False
        self._lowest_level = self.capacity  # over the current shrink window
        self._window_ticks = 0
        self.target_frames = 1
        self._jitter_frames = 1  # what the lateness histogram alone asks for
        self._fec_floor_until = float("-inf")
        self._ts_ref: int | None = None  # RTP timestamp of the newest packet, for unwrapping
        self._ts_ref_ext = 0
        self._last_played_small = False
        self.late = 0
        self.duplicates = 0
        self.expands = 0
        self.dropped_to_shrink = 0
        self.skipped = 0  # frames jumped over after an outage
        self.target_history: list[int] = []

    # -- arrival ------------------------------------------------------------------------
    def push(self, ext_seq: int, payload: bytes, now: float, timestamp: int | None = None) -> bool:
        """Add a packet by extended sequence number; False if too late or a duplicate.

        With the RTP `timestamp`, lateness is measured against the media clock, so a DTX pause
        (the sequence moves by one while the clock moves by seconds) is not taken for delay."""
        if self._next_seq is None:
            self._next_seq = ext_seq
        if ext_seq < self._next_seq:
            self.late += 1
            self._observe(self._stream_time(ext_seq, timestamp), now)  # a late packet teaches
            return False
        if ext_seq in self._packets:
            self.duplicates += 1
            return False
        if ext_seq >= self._next_seq + self.capacity:  # the sender jumped: follow it
            self._packets.clear()
            self._next_seq = ext_seq
        self._packets[ext_seq] = payload
        self._highest = ext_seq if self._highest is None else max(self._highest, ext_seq)
        self._observe(self._stream_time(ext_seq, timestamp), now)
        return True

    def _stream_time(self, ext_seq: int, timestamp: int | None) -> float:
        """Where this packet sits in the stream, in seconds."""
        if timestamp is None:
            return ext_seq * self.frame_s
        if self._ts_ref is None:
            self._ts_ref = timestamp
        delta = (timestamp - self._ts_ref) & 0xFFFFFFFF
        if delta >= 1 << 31:
            delta -= 1 << 32  # older than the newest: a reordered packet
        ext = self._ts_ref_ext + delta
        if delta > 0:
            self._ts_ref, self._ts_ref_ext = timestamp, ext
        return ext / 48_000.0  # the RTP clock of Opus, whatever it codes (RFC 7587)

    def _observe(self, stream_time: float, now: float) -> None:
        relative = now - stream_time  # constant on a perfect network
        while self._baseline and now - self._baseline[0][0] > BASELINE_WINDOW:
            self._baseline.popleft()
        while self._baseline and self._baseline[-1][1] >= relative:
            self._baseline.pop()  # a monotonic deque: the front is the window's minimum
        self._baseline.append((now, relative))
        lateness_ms = 1000.0 * (relative - self._baseline[0][1])
        self._weight /= FORGET
        if self._weight > RESCALE_ABOVE:
            self._hist = [h / self._weight for h in self._hist]
            self._hist_total /= self._weight
            self._weight = 1.0
        self._hist[min(BINS - 1, int(lateness_ms / BIN_MS))] += self._weight
        self._hist_total += self._weight
        target_ms = self._percentile_ms() + HEADROOM_MS
        self._jitter_frames = max(1, math.ceil(target_ms / (1000 * self.frame_s)))
        self._retarget(now)

    def _retarget(self, now: float) -> None:
        floor = FEC_FLOOR_FRAMES if now < self._fec_floor_until else 1
        self.target_frames = max(floor, self._jitter_frames)

    def _percentile_ms(self) -> float:
        total = self._hist_total
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

    def pop(self, now: float) -> Frame | Gap | Expand | Comfort | None:
        """The frame due this tick; None before playout has started."""
        if self._next_seq is None:
            return None
        self._retarget(now)
        if not self._started:
            if self.level < self.target_frames:
                return None
            self._started = True
        self.target_history.append(self.target_frames)
        self._lowest_level = min(self._lowest_level, self.level)
        self._window_ticks += 1
        if self._window_ticks >= SHRINK_WINDOW:
            if self._lowest_level > self.target_frames and self._next_seq in self._packets:
                self.dropped_to_shrink += 1  # always a frame too many: let one go
                del self._packets[self._next_seq]
                self._next_seq += 1
            self._lowest_level, self._window_ticks = self.capacity, 0
        seq = self._next_seq
        payload = self._packets.pop(seq, None)
        if payload is not None:
            self._next_seq += 1
            self._last_played_small = len(payload) <= COMFORT_NOISE_BYTES
            return Frame(seq, payload)
        if self._highest is not None and self._highest > seq:
            if self.level > self.target_frames + SKIP_MARGIN:
                # A hole after an outage, with plenty buffered behind it: concealing the hole
                # frame by frame would make the listener hear the outage twice. Skip it.
                following = min(s for s in self._packets if s > seq)
                self.skipped += following - seq
                self._next_seq = following + 1
                return Frame(following, self._packets.pop(following))
            self._next_seq += 1  # later frames are here: this one is lost
            if self.fec and now != float("inf"):
                self._fec_floor_until = now + FEC_FLOOR_HOLD
                self._retarget(now)
            return Gap(seq, self._packets.get(seq + 1))
        if self._last_played_small:
            return Comfort(seq)  # DTX: silence until the next update or the talker's return
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
