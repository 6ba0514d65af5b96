"""voip/rate_log.py: one line per interval whatever the rate of events, on the owner's clock, and
the home worker's link logging through it."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from rendezvous.stream_listener import StreamListener
from rendezvous.worker_link import HomeReader
from rendezvous.worker_link import pack_frame
from voip.rate_log import RateLimitedLog

log = logging.getLogger("tests.rate_log")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_interval_with_the_count_so_far(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = RateLimitedLog(log, every=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert limited.warning("bad %s", "thing")
        for _ in range(5):
            clock.now += 1.0
            assert not limited.warning("bad %s", "thing")
        clock.now = 10.0
        assert limited.warning("bad %s", "thing")
    assert limited.count == 7
    assert [r.getMessage() for r in caplog.records] == [
        "bad thing (1 so far)",
        "bad thing (7 so far)",
    ]


def test_the_callers_count_is_shown_when_it_keeps_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limited = RateLimitedLog(log, clock=Clock())
    with caplog.at_level(logging.WARNING, logger=log.name):
        limited.warning("garbage", count=42)
    assert caplog.records[0].getMessage() == "garbage (42 so far)" and limited.count == 1


def test_exception_is_an_error_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    limited = RateLimitedLog(log, clock=Clock())
    with caplog.at_level(logging.WARNING, logger=log.name):
        try:
            raise ValueError("a parser bug")
        except ValueError:
            assert limited.exception("a datagram from %s:%s could not be handled", "h", 1)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.getMessage() == "a datagram from h:1 could not be handled (1 so far)"


def test_note_counts_and_says_when_a_line_may_go() -> None:
    clock = Clock()
    limited = RateLimitedLog(log, every=10.0, clock=clock)
    assert limited.note() and not limited.note()
    clock.now = 10.0
    assert limited.note() and limited.count == 3


def test_the_home_counts_every_failed_frame_and_logs_one_an_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(data: bytes, src: tuple[str, int], local: tuple[str, int]) -> None:
        raise ValueError("a bug in the home")

    home, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    home.setblocking(False)
    clock = Clock()
    reader = HomeReader(home, broken, clock)
    try:
        with caplog.at_level(logging.ERROR, logger="rendezvous.worker_link"):
            for _ in range(3):
                worker.send(pack_frame(b"x", ("192.0.2.1", 1), ("192.0.2.2", 2)))
            worker.send(b"\xff")  # does not parse: counted, never logged
            reader.readable()
            clock.now = 10.0
            worker.send(pack_frame(b"x", ("192.0.2.1", 1), ("192.0.2.2", 2)))
            reader.readable()
    finally:
        home.close()
        worker.close()
    assert reader.failures == 5
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["a datagram from another worker could not be handled"] * 2
    assert all(r.exc_info is not None for r in caplog.records)


class NoHost:
    """A StreamHost for a listener that only counts and logs: it is never asked."""

    def stream_opens(self, src: tuple[str, int]) -> bool:
        return True

    def stream_frame(self, data: bytes, src: tuple[str, int]) -> None:
        pass

    def stream_closed(self, src: tuple[str, int]) -> None:
        pass


def test_a_listener_counts_each_kind_and_logs_one_line_for_both(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listener = StreamListener(NoHost())

    async def noted() -> None:
        listener.garbage(("192.0.2.1", 5), "a bad length")
        try:
            raise ValueError("a handler bug")
        except ValueError:
            listener.failed(("192.0.2.1", 5))
        listener.garbage(("192.0.2.1", 5), "a bad length")

    with caplog.at_level(logging.WARNING, logger="rendezvous.stream_listener"):
        asyncio.run(noted())
    assert listener.stats["stream_garbage"] == 2 and listener.stats["stream_handler_failed"] == 1
    assert [r.getMessage() for r in caplog.records] == [
        "192.0.2.1:5: garbage (a bad length); its connection closed (1 so far)"
    ]
