"""RTCP codec for SR, RR and BYE in compound packets, sans-IO (RFC 3550 §6.4, §6.6)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

SR = 200
RR = 201
SDES = 202
BYE = 203


class RtcpError(ValueError):
    """Raised for every malformed RTCP input."""


@dataclass(frozen=True)
class ReportBlock:
    """One reception report (§6.4.1): what the reporter saw of the stream `ssrc`."""

    ssrc: int
    fraction_lost: int  # of 256, since the last report
    cumulative_lost: int  # signed 24 bits (duplicates can make it negative)
    highest_seq: int  # extended: cycles << 16 | highest sequence number
    jitter: int  # in RTP timestamp units
    lsr: int  # middle 32 bits of the NTP time of the last SR received, 0 if none
    dlsr: int  # delay since that SR, in 1/65536 s

    def pack(self) -> bytes:
        lost = self.cumulative_lost
        lost = max(-0x800000, min(0x7FFFFF, lost)) & 0xFFFFFF
        return struct.pack(
            "!IIIIII",
            self.ssrc,
            (self.fraction_lost & 0xFF) << 24 | lost,
            self.highest_seq & 0xFFFFFFFF,
            self.jitter & 0xFFFFFFFF,
            self.lsr & 0xFFFFFFFF,
            self.dlsr & 0xFFFFFFFF,
        )

    @classmethod
    def unpack(cls, data: bytes, offset: int) -> ReportBlock:
        ssrc, lost_word, hseq, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", data, offset)
        cum = lost_word & 0xFFFFFF
        if cum & 0x800000:
            cum -= 0x1000000
        return cls(ssrc, lost_word >> 24, cum, hseq, jitter, lsr, dlsr)


@dataclass(frozen=True)
class SenderReport:
    ssrc: int
    ntp_timestamp: int  # 64-bit NTP format
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True)
class ReceiverReport:
    ssrc: int
    reports: tuple[ReportBlock, ...] = ()


@dataclass(frozen=True)
class Bye:
    ssrcs: tuple[int, ...]
    reason: str = ""


RtcpPacket = SenderReport | ReceiverReport | Bye


def _header(count: int, ptype: int, body_len: int) -> bytes:
    # Length is in 32-bit words minus one (§6.4.1), counting the 4-byte header.
    return struct.pack("!BBH", 0x80 | count, ptype, (body_len + 4) // 4 - 1)


def pack_rtcp(packet: RtcpPacket) -> bytes:
    if isinstance(packet, SenderReport):
        body = struct.pack(
            "!IQIII",
            packet.ssrc,
            packet.ntp_timestamp,
            packet.rtp_timestamp & 0xFFFFFFFF,
            packet.packet_count & 0xFFFFFFFF,
            packet.octet_count & 0xFFFFFFFF,
        ) + b"".join(r.pack() for r in packet.reports)
        return _header(len(packet.reports), SR, len(body)) + body
    if isinstance(packet, ReceiverReport):
        body = struct.pack("!I", packet.ssrc) + b"".join(r.pack() for r in packet.reports)
        return _header(len(packet.reports), RR, len(body)) + body
    body = b"".join(struct.pack("!I", s) for s in packet.ssrcs)
    if packet.reason:
        reason = packet.reason.encode()[:255]
        body += bytes([len(reason)]) + reason
        body += b"\x00" * ((4 - len(body) % 4) % 4)
    return _header(len(packet.ssrcs), BYE, len(body)) + body


def pack_compound(packets: list[RtcpPacket]) -> bytes:
    return b"".join(pack_rtcp(p) for p in packets)


def parse_rtcp_untrusted(data: bytes) -> list[RtcpPacket]:
    """Parse a compound RTCP packet. Unknown packet types (SDES, APP, feedback) are skipped."""
    out: list[RtcpPacket] = []
    pos = 0
    if len(data) < 4:
        raise RtcpError("shorter than an RTCP header")
    while pos < len(data):
        if pos + 4 > len(data):
            raise RtcpError("truncated RTCP header")
        b0, ptype, words = struct.unpack_from("!BBH", data, pos)
        if b0 >> 6 != 2:
            raise RtcpError(f"RTCP version {b0 >> 6}, expected 2")
        end = pos + 4 * (words + 1)
        if end > len(data):
            raise RtcpError("RTCP packet overruns the datagram")
        count = b0 & 0x1F
        body = data[pos + 4 : end]
        if ptype == SR:
            if len(body) < 24 + 24 * count:
                raise RtcpError("SR too short for its report count")
            ssrc, ntp, rtp_ts, pkts, octets = struct.unpack_from("!IQIII", body)
            blocks = tuple(ReportBlock.unpack(body, 24 + 24 * i) for i in range(count))
            out.append(SenderReport(ssrc, ntp, rtp_ts, pkts, octets, blocks))
        elif ptype == RR:
            if len(body) < 4 + 24 * count:
                raise RtcpError("RR too short for its report count")
            ssrc = struct.unpack_from("!I", body)[0]
            blocks = tuple(ReportBlock.unpack(body, 4 + 24 * i) for i in range(count))
            out.append(ReceiverReport(ssrc, blocks))
        elif ptype == BYE:
            if len(body) < 4 * count:
                raise RtcpError("BYE too short for its SSRC count")
            ssrcs = struct.unpack_from(f"!{count}I", body)
            reason = ""
            rest = body[4 * count :]
            if rest:
                n = rest[0]
                reason = rest[1 : 1 + n].decode("utf-8", errors="replace")
            out.append(Bye(tuple(ssrcs), reason))
        pos = end
    return out
