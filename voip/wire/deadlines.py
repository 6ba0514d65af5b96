"""Deadlines for many keys in a heap: the earliest in O(1), each change in O(log n), sans-IO.

Each key has at most one deadline; setting a new one leaves the old heap item behind, to be
skipped when it comes up, and the heap is rebuilt when such stale items outnumber the live
ones, so a key refreshed in a tight loop cannot grow it without bound. The registry's names,
the relay's allocations and a server's transactions all expire this way.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Generic
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


class Deadlines(Generic[K]):
    def __init__(self) -> None:
        self._when: dict[K, float] = {}
        self._heap: list[tuple[float, int, K]] = []
        self._seq = itertools.count()  # ties break by insertion, never by comparing keys

    def __len__(self) -> int:
        return len(self._when)

    def set(self, key: K, when: float) -> None:
        self._when[key] = when
        heapq.heappush(self._heap, (when, next(self._seq), key))
        if len(self._heap) > 2 * len(self._when) + 64:
            self._heap = [(w, next(self._seq), k) for k, w in self._when.items()]
            heapq.heapify(self._heap)

    def discard(self, key: K) -> None:
        self._when.pop(key, None)

    def clear(self) -> None:
        self._when.clear()
        self._heap.clear()

    def next(self) -> float | None:
        """The earliest live deadline."""
        while self._heap:
            when, _, key = self._heap[0]
            if self._when.get(key) == when:
                return when
            heapq.heappop(self._heap)
        return None

    def due(self, now: float) -> list[K]:
        """The keys whose deadlines have come by `now`, earliest first; they are removed."""
        out = []
        while self._heap and self._heap[0][0] <= now:
            when, _, key = heapq.heappop(self._heap)
            if self._when.get(key) == when:
                del self._when[key]
                out.append(key)
        return out
