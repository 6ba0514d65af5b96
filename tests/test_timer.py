"""The asyncio shell's one timer (voip/transport.py): what time it hands the sans-IO side."""

from __future__ import annotations

from collections.abc import Callable

from voip.transport import Timer


class Handle:
    def cancel(self) -> None:
        pass


class CoarseLoop:
    """A loop whose clock counts in steps, as uvloop's counts milliseconds."""

    def __init__(self) -> None:
        self.now = 0.0
        self.scheduled: list[tuple[float, Callable[[], None]]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> Handle:
        self.scheduled.append((when, callback))
        return Handle()


def test_a_timer_run_early_by_a_coarse_clock_fires_as_at_its_deadline() -> None:
    """A callback run "on time" may read a time just before its deadline: the sans-IO side must
    be given the deadline, or it finds nothing due and the timer is set again at once."""
    loop = CoarseLoop()
    fired: list[float] = []
    deadlines = [0.0205]
    timer = Timer(loop, lambda: deadlines[0] if deadlines else None, fired.append)  # type: ignore[arg-type]
    timer.rearm()
    deadlines.clear()
    loop.now = 0.020  # the clock's last tick before the deadline
    [(when, callback)] = loop.scheduled
    callback()
    assert fired == [when] == [0.0205]
    assert len(loop.scheduled) == 1  # nothing due any more: not set again


def test_a_timer_run_late_fires_with_the_time_it_ran() -> None:
    loop = CoarseLoop()
    fired: list[float] = []
    timer = Timer(loop, lambda: 0.5 if not fired else None, fired.append)  # type: ignore[arg-type]
    timer.rearm()
    loop.now = 0.75  # a busy loop got to it late: the work is done as of now
    loop.scheduled[0][1]()
    assert fired == [0.75]
