"""What every sans-IO part hands its shell: the events it queued, and its earliest deadline."""

from __future__ import annotations

from typing import Generic
from typing import TypeVar

E = TypeVar("E")


def earliest(*times: float | None) -> float | None:
    """The soonest of `times` that is set; None when none is (nothing to wake up for)."""
    return min((t for t in times if t is not None), default=None)


class EventQueue(Generic[E]):
    """Events a part queues while it handles input, for its owner to take after each call."""

    def __init__(self) -> None:
        self._events: list[E] = []

    def pop_events(self) -> list[E]:
        events, self._events = self._events, []
        return events
