"""The fixed jitter buffer: delay, reordering, late and duplicate packets, gaps."""

from __future__ import annotations

from voip.media.jitter_buffer import FixedJitterBuffer, Frame, Gap


def test_playout_waits_for_the_delay_then_plays_in_order() -> None:
    jb = FixedJitterBuffer(delay=0.06)
    jb.push(10, b"a", 1.0)
    jb.push(12, b"c", 1.03)
    jb.push(11, b"b", 1.035)  # reordered
    assert jb.pop(1.05) is None  # before playout starts
    assert jb.pop(1.06) == Frame(10, b"a")
    assert jb.pop(1.08) == Frame(11, b"b")
    assert jb.pop(1.10) == Frame(12, b"c")


def test_gap_offers_the_next_packet_for_fec() -> None:
    jb = FixedJitterBuffer(delay=0.0)
    jb.push(1, b"a", 0.0)
    jb.push(3, b"c", 0.01)
    assert jb.pop(0.0) == Frame(1, b"a")
    assert jb.pop(0.02) == Gap(2, b"c")
    assert jb.pop(0.04) == Frame(3, b"c")
    assert jb.pop(0.06) == Gap(4, None)


def test_late_and_duplicate_packets_are_refused_and_counted() -> None:
    jb = FixedJitterBuffer(delay=0.0)
    assert jb.push(5, b"x", 0.0)
    assert not jb.push(5, b"x", 0.001)
    assert jb.duplicates == 1
    jb.pop(0.0)
    assert not jb.push(5, b"x", 0.03)
    assert not jb.push(4, b"w", 0.03)
    assert jb.late == 2


def test_far_jump_resynchronises() -> None:
    jb = FixedJitterBuffer(delay=0.0, capacity=8)
    jb.push(1, b"a", 0.0)
    jb.push(100, b"z", 0.01)
    assert jb.overflow == 1
    assert jb.pop(0.02) == Frame(100, b"z")
