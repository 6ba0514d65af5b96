"""RTCP for one call: sender and receiver reports, round-trip time, BYE, sans-IO (RFC 3550 §6.4).

RTT = A - LSR - DLSR (§6.4.1): A is when the report arrived, LSR the middle 32 bits of the NTP
time of our SR it answers, DLSR how long the peer held it. Our NTP clock is the caller's
monotonic clock plus a fixed offset, so only our own clock is ever compared with itself.
"""

from __future__ import annotations

from dataclasses import dataclass

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

NTP_UNIX_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01


def ntp64(unix_seconds: float) -> int:
    return int((unix_seconds + NTP_UNIX_OFFSET) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


def ntp_middle32(ntp: int) -> int:
    return (ntp >> 16) & 0xFFFFFFFF


@dataclass(frozen=True)
class RttMeasured:
    rtt: float  # seconds


@dataclass(frozen=True)
class PeerReceptionReport:
    """What the peer says it received of our stream."""

    fraction_lost: float  # 0..1 over the last interval
    cumulative_lost: int
    jitter_ms: float


@dataclass(frozen=True)
class PeerBye:
    reason: str


RtcpEvent = RttMeasured | PeerReceptionReport | PeerBye


class RtcpSession:
    def __init__(self, sender: RtpSender, receiver: RtpReceiverStats, wallclock_offset: float):
        self.sender = sender
        self.receiver = receiver
        self.wallclock_offset = wallclock_offset  # unix time = now + offset
        self._last_sr_middle = 0  # LSR for our next report block
        self._last_sr_arrival: float | None = None
        self.malformed = 0
        self.foreign_byes = 0

    def _ntp(self, now: float) -> int:
        return ntp64(now + self.wallclock_offset)

    def _report_block(self, now: float) -> ReportBlock | None:
        rx = self.receiver
        if rx.ssrc is None:
            return None
        dlsr = 0 if self._last_sr_arrival is None else int((now - self._last_sr_arrival) * 65536)
        return ReportBlock(
            ssrc=rx.ssrc,
            fraction_lost=rx.interval_fraction_lost(),
            cumulative_lost=rx.lost,
            highest_seq=rx.extended_max,
            jitter=int(rx.jitter),
            lsr=self._last_sr_middle,
            dlsr=dlsr,
        )

    def build_report(self, now: float, rtp_timestamp: int) -> bytes:
        """A sender report (we always send audio) with a block about the stream we receive."""
        block = self._report_block(now)
        sr = SenderReport(
            ssrc=self.sender.ssrc,
            ntp_timestamp=self._ntp(now),
            rtp_timestamp=rtp_timestamp,
            packet_count=self.sender.packet_count,
            octet_count=self.sender.octet_count,
            reports=(block,) if block else (),
        )
        return pack_compound([sr])

    def build_bye(self, now: float, reason: str = "hangup") -> bytes:
        packets: list[RtcpPacket] = [
            ReceiverReport(self.sender.ssrc, tuple(b for b in [self._report_block(now)] if b)),
            Bye((self.sender.ssrc,), reason),
        ]
        return pack_compound(packets)

    def handle(self, data: bytes, now: float) -> list[RtcpEvent]:
        try:
            packets = parse_rtcp_untrusted(data)
        except RtcpError:
            self.malformed += 1
            return []
        events: list[RtcpEvent] = []
        for pkt in packets:
            if isinstance(pkt, Bye):
                # Only the peer's own stream can end the call: a BYE for any other SSRC is
                # a forgery (or someone else's), and is ignored.
                if self.receiver.ssrc is not None and self.receiver.ssrc in pkt.ssrcs:
                    events.append(PeerBye(pkt.reason))
                else:
                    self.foreign_byes += 1
                continue
            if isinstance(pkt, SenderReport):
                self._last_sr_middle = ntp_middle32(pkt.ntp_timestamp)
                self._last_sr_arrival = now
            for block in pkt.reports:
                if block.ssrc != self.sender.ssrc:
                    continue
                events.append(
                    PeerReceptionReport(
                        fraction_lost=block.fraction_lost / 256.0,
                        cumulative_lost=block.cumulative_lost,
                        jitter_ms=1000.0 * block.jitter / self.receiver.clock_rate,
                    )
                )
                if block.lsr:
                    arrival = ntp_middle32(self._ntp(now))
                    rtt_units = (arrival - block.lsr - block.dlsr) & 0xFFFFFFFF
                    if rtt_units < 1 << 31:  # else the peer's DLSR was bogus: no sample
                        events.append(RttMeasured(rtt_units / 65536.0))
        return events
