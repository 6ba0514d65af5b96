"""A log line at most once per interval, however often the thing it reports happens."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

LOG_EVERY = 10.0  # s between two lines of one kind


class RateLimitedLog:
    """Counts every event and logs one per `every` seconds, so a stranger sending garbage,
    or a store that is down, cannot fill the server's log."""

    def __init__(
        self,
        log: logging.Logger,
        every: float = LOG_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.log = log
        self.every = every
        self.clock = clock
        self.count = 0
        self._logged_at = -every

    def warning(self, fmt: str, *args: object, exc_info: bool = False) -> bool:
        """Count one; log it if the last line is `every` old (True when logged)."""
        self.count += 1
        now = self.clock()
        if now - self._logged_at < self.every:
            return False
        self._logged_at = now
        self.log.warning(fmt + " (%d so far)", *args, self.count, exc_info=exc_info)
        return True
