"""RTP packets and stream statistics: wraparound, loss, jitter (RFC 3550 A.1, A.3, A.8)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voip.media.rtp_stream import RtpReceiverStats
from voip.media.rtp_stream import RtpSender
from voip.wire.rtp import RtpError
from voip.wire.rtp import RtpPacket
from voip.wire.rtp import is_rtcp
from voip.wire.rtp import looks_like_rtp_or_rtcp
from voip.wire.rtp import parse_rtp_untrusted


def test_packet_round_trip() -> None:
    pkt = RtpPacket(111, 65535, 0xFFFFFFFF, 0xDEADBEEF, b"opus", marker=True, csrcs=(1, 2))
    data = bytes(pkt)
    assert data[0] == 0x82 and data[1] == 0x80 | 111
    assert parse_rtp_untrusted(data) == pkt
    assert looks_like_rtp_or_rtcp(data) and not is_rtcp(data)


def test_padding_and_extension_are_stripped() -> None:
    base = bytearray(bytes(RtpPacket(111, 1, 2, 3, b"")))
    base[0] |= 0x30  # padding + extension
    ext = b"\xbe\xde\x00\x01" + b"\x10\xaa\x00\x00"
    data = bytes(base) + ext + b"payload" + b"\x00\x00\x03"
    assert parse_rtp_untrusted(data).payload == b"payload"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(11),
        b"\x40" + bytes(11),
        b"\x8f" + bytes(11),
        b"\xa0" + bytes(10) + b"\x00",
        b"\x90" + bytes(11) + b"\x00\x00\x00\x09",
    ],
)
def test_malformed_rtp_raises_rtp_error(data: bytes) -> None:
    with pytest.raises(RtpError):
        parse_rtp_untrusted(data)


@given(st.binary(max_size=200))
def test_rtp_parser_never_raises_anything_else(data: bytes) -> None:
    with contextlib.suppress(RtpError):
        parse_rtp_untrusted(data)


def test_sender_wraps_sequence_and_timestamp() -> None:
    tx = RtpSender(sequence=65534, timestamp=0xFFFFFFFF - 959)
    seqs, stamps = [], []
    for _ in range(4):
        pkt = tx.packetize(b"x", 960)
        seqs.append(pkt.sequence)
        stamps.append(pkt.timestamp)
    assert seqs == [65534, 65535, 0, 1]
    assert stamps == [0xFFFFFFFF - 959, 0, 960, 1920]
    assert tx.packet_count == 4 and tx.octet_count == 4


def _stream(
    start_seq: int, n: int, drop: frozenset[int] = frozenset(), start_ts: int = 0
) -> list[RtpPacket]:
    return [
        RtpPacket(111, (start_seq + i) % 65536, (start_ts + 960 * i) % 2**32, 7, b"")
        for i in range(n)
        if i not in drop
    ]


def test_receiver_counts_across_sequence_wrap() -> None:
    rx = RtpReceiverStats()
    exts = [rx.update(p, i * 0.02) for i, p in enumerate(_stream(65530, 12))]
    assert exts == list(range(65530, 65542))  # extended numbers keep counting past 65535
    assert rx.cycles == 65536 and rx.expected == 12 and rx.lost == 0


def test_receiver_counts_loss_across_wrap() -> None:
    rx = RtpReceiverStats()
    for i, p in enumerate(_stream(65530, 20, drop=frozenset({3, 7, 8}))):
        rx.update(p, i * 0.02)
    assert rx.expected == 20 and rx.received == 17 and rx.lost == 3
    assert rx.loss_pct == pytest.approx(15.0)
    assert rx.interval_fraction_lost() == (3 << 8) // 20
    assert rx.interval_fraction_lost() == 0  # nothing new since the last report


def test_reordered_packet_keeps_its_place() -> None:
    rx = RtpReceiverStats()
    pkts = _stream(100, 5)
    order = [0, 1, 3, 2, 4]
    exts = [rx.update(pkts[i], n * 0.02) for n, i in enumerate(order)]
    assert exts == [100, 101, 103, 102, 104]
    assert rx.lost == 0


def test_jitter_is_zero_for_perfect_timing_and_grows_with_variation() -> None:
    rx = RtpReceiverStats()
    for i, p in enumerate(_stream(0, 50, start_ts=2**32 - 960 * 10)):  # wraps the timestamp too
        rx.update(p, i * 0.02)
    assert rx.jitter_ms == pytest.approx(0.0, abs=1e-6)
    rx2 = RtpReceiverStats()
    for i, p in enumerate(_stream(0, 400)):
        rx2.update(p, i * 0.02 + (0.005 if i % 2 else 0.0))  # alternate 5 ms early/late
    # |D| is 5 ms every packet, so J converges to 5 ms (A.8's estimator).
    assert rx2.jitter_ms == pytest.approx(5.0, rel=0.02)


def test_other_ssrc_is_ignored_and_restart_needs_two_in_a_row() -> None:
    rx = RtpReceiverStats()
    rx.update(RtpPacket(111, 10, 0, 1, b""), 0.0)
    assert rx.update(RtpPacket(111, 11, 0, 2, b""), 0.02) is None
    assert rx.update(RtpPacket(111, 40000, 0, 1, b""), 0.04) is None  # one wild jump: ignored
    assert rx.update(RtpPacket(111, 40001, 0, 1, b""), 0.06) == 40001  # two in a row: restart
    assert rx.expected == 1
