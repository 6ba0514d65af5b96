"""A fixed-delay jitter buffer, sans-IO: packets in by sequence, one frame out per tick.

Playout starts `delay` after the first packet arrives and then runs on the caller's 20 ms tick.
Each tick yields the next frame in sequence: the packet if it is here, else a gap that the
decoder conceals (or rebuilds from the FEC in the packet after it, when that has arrived).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Frame:
    seq: int
    payload: bytes


@dataclass(frozen=True)
class Gap:
    seq: int
    next_payload: bytes | None  # the following packet, if present: it may carry FEC for this one


class FixedJitterBuffer:
    def __init__(self, delay: float = 0.06, capacity: int = 64):
        self.delay = delay
        self.capacity = capacity
        self._packets: dict[int, bytes] = {}
        self._next_seq: int | None = None  # extended sequence number to play next
        self.playout_start: float | None = None
        self.late = 0
        self.duplicates = 0
        self.overflow = 0

    def push(self, ext_seq: int, payload: bytes, now: float) -> bool:
        """Add a packet by extended sequence number; False if it came too late or twice."""
        if self.playout_start is None:
            self.playout_start = now + self.delay
            self._next_seq = ext_seq
        assert self._next_seq is not None
        if ext_seq < self._next_seq:
            self.late += 1
            return False
        if ext_seq in self._packets:
            self.duplicates += 1
            return False
        if ext_seq >= self._next_seq + self.capacity:
            # Far ahead of playout (the sender jumped, or we stalled): skip forward to it.
            self.overflow += 1
            self._packets = {
                s: p for s, p in self._packets.items() if s >= ext_seq - self.capacity // 2
            }
            self._next_seq = min([ext_seq, *self._packets])
        self._packets[ext_seq] = payload
        return True

    def pop(self, now: float) -> Frame | Gap | None:
        """The frame due now; None before playout starts."""
        if self.playout_start is None or now < self.playout_start or self._next_seq is None:
            return None
        seq = self._next_seq
        self._next_seq += 1
        payload = self._packets.pop(seq, None)
        if payload is not None:
            return Frame(seq, payload)
        return Gap(seq, self._packets.get(seq + 1))

    @property
    def depth(self) -> int:
        return len(self._packets)
