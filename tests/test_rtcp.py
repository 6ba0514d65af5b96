"""RTCP packets and the RTT they measure (RFC 3550 §6.4)."""

from __future__ import annotations

import pytest

from voip.media.rtcp_session import PeerBye
from voip.media.rtcp_session import PeerReceptionReport
from voip.media.rtcp_session import RtcpSession
from voip.media.rtcp_session import RttMeasured
from voip.media.rtp_stream import RtpReceiverStats
from voip.media.rtp_stream import RtpSender
from voip.wire.rtcp import Bye
from voip.wire.rtcp import ReceiverReport
from voip.wire.rtcp import ReportBlock
from voip.wire.rtcp import RtcpError
from voip.wire.rtcp import RtcpPacket
from voip.wire.rtcp import SenderReport
from voip.wire.rtcp import pack_compound
from voip.wire.rtcp import parse_rtcp_untrusted
from voip.wire.rtp import RtpPacket
from voip.wire.rtp import is_rtcp


def test_compound_round_trip() -> None:
    block = ReportBlock(0x1234, 25, -3, 70000, 480, 0xAABBCCDD, 65536)
    packets: list[RtcpPacket] = [
        SenderReport(1, 0x0123456789ABCDEF, 960, 10, 1000, (block,)),
        ReceiverReport(2, (block,)),
        Bye((1,), "hangup"),
    ]
    data = pack_compound(packets)
    assert is_rtcp(data)
    assert parse_rtcp_untrusted(data) == packets


@pytest.mark.parametrize(
    "data",
    [b"\x80", b"\x40\xc8\x00\x00", b"\x81\xc8\x00\x01" + bytes(4), b"\x80\xc8\x00\x09" + bytes(8)],
)
def test_malformed_rtcp_raises(data: bytes) -> None:
    with pytest.raises(RtcpError):
        parse_rtcp_untrusted(data)


def test_rtt_from_sr_rr_exchange_with_known_delays() -> None:
    """A sends an SR; B holds it 0.3 s and reports; A computes RTT = A - LSR - DLSR."""
    one_way = 0.045
    a_tx, b_tx = RtpSender(), RtpSender()
    a_rx, b_rx = RtpReceiverStats(), RtpReceiverStats()
    # Different wall-clock offsets: RTT must not depend on the two clocks agreeing.
    a = RtcpSession(a_tx, a_rx, wallclock_offset=1_700_000_000.0)
    b = RtcpSession(b_tx, b_rx, wallclock_offset=1_600_000_123.4)
    a_rx.update(RtpPacket(111, 1, 0, b_tx.ssrc, b""), 0.0)
    b_rx.update(RtpPacket(111, 1, 0, a_tx.ssrc, b""), 0.0)

    t = 10.0
    sr = a.build_report(t, 0)
    # B learns LSR; A has had no SR from B yet, so its block carries LSR 0 and yields no RTT.
    assert not any(isinstance(e, RttMeasured) for e in b.handle(sr, t + one_way))
    rr = b.build_report(t + one_way + 0.3, 0)
    events = a.handle(rr, t + one_way + 0.3 + one_way)
    rtts = [e.rtt for e in events if isinstance(e, RttMeasured)]
    assert rtts == [pytest.approx(2 * one_way, abs=1e-4)]  # 1/65536 s resolution
    assert any(isinstance(e, PeerReceptionReport) for e in events)


def test_report_without_lsr_gives_no_rtt_and_bye_is_reported() -> None:
    a = RtcpSession(RtpSender(), RtpReceiverStats(), 0.0)
    b_tx, b_rx = RtpSender(), RtpReceiverStats()
    b = RtcpSession(b_tx, b_rx, 0.0)
    b_rx.update(RtpPacket(111, 1, 0, a.sender.ssrc, b""), 0.0)
    events = a.handle(b.build_report(1.0, 0), 1.1)
    assert not any(isinstance(e, RttMeasured) for e in events)
    # A BYE counts only from the stream we receive: before any of b's RTP, not at all.
    assert not any(isinstance(e, PeerBye) for e in a.handle(b.build_bye(2.0, "bye now"), 2.1))
    a.receiver.update(RtpPacket(111, 1, 0, b.sender.ssrc, b""), 2.2)
    assert PeerBye("bye now") in a.handle(b.build_bye(2.3, "bye now"), 2.4)


def test_a_forged_bye_with_another_ssrc_does_not_end_the_call() -> None:
    """A 12-byte BYE from the peer's address with any SSRC used to end the call."""
    a = RtcpSession(RtpSender(), RtpReceiverStats(), 0.0)
    peer_ssrc = 0x1234_5678
    a.receiver.update(RtpPacket(111, 1, 0, peer_ssrc, b""), 0.0)
    forged = pack_compound([Bye((peer_ssrc ^ 1,))])
    assert len(forged) == 8 and a.handle(forged, 1.0) == []
    assert a.foreign_byes == 1
    assert a.handle(pack_compound([Bye((peer_ssrc,))]), 1.1) == [PeerBye("")]


def test_garbage_is_counted_not_raised() -> None:
    s = RtcpSession(RtpSender(), RtpReceiverStats(), 0.0)
    assert s.handle(b"\x80\xc8\xff\xff", 0.0) == []
    assert s.malformed == 1
