"""A log line at most once per interval, however often the thing it reports happens.

Shared by the socket shell (voip/transport.py) and the rendezvous server, so it lives here:
the client side may not import the server's modules.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

LOG_EVERY = 10.0  # s between two lines of one kind


class RateLimitedLog:
    """Counts every event and logs one per `every` seconds, so a stranger sending garbage,
    or a store that is down, cannot fill the server's log.

    `clock` is the owner's: an event loop's time where the events are timed by it."""

    def __init__(
        self,
        log: logging.Logger,
        every: float = LOG_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.log = log
        self.every = every
        self.clock = clock
        self.count = 0  # events noted, logged or not
        self._logged_at = -every

    def note(self) -> bool:
        """Count one; True when a line about it may go now (the last was `every` ago): for
        a caller that writes the line itself."""
        self.count += 1
        now = self.clock()
        if now - self._logged_at < self.every:
            return False
        self._logged_at = now
        return True

    def warning(
        self, fmt: str, *args: object, exc_info: bool = False, count: int | None = None
    ) -> bool:
        """Count one; log it with the count so far if the last line is `every` old (True when
        logged). `count`: the caller's own tally to show instead (one it keeps per kind, or
        with events it does not log)."""
        return self._emit(logging.WARNING, fmt, args, exc_info, count)

    def exception(self, fmt: str, *args: object, count: int | None = None) -> bool:
        """As `warning`, at ERROR with the traceback: call it inside an `except` block."""
        return self._emit(logging.ERROR, fmt, args, True, count)

    def _emit(
        self, level: int, fmt: str, args: tuple[object, ...], exc_info: bool, count: int | None
    ) -> bool:
        if not self.note():
            return False
        shown = self.count if count is None else count
        self.log.log(level, fmt + " (%d so far)", *args, shown, exc_info=exc_info)
        return True
