"""RTP packet codec, sans-IO (RFC 3550 §5.1; Opus payload format RFC 7587)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

RTP_VERSION = 2
OPUS_PAYLOAD_TYPE = 111  # dynamic (RFC 3551 §6); 111 is what most SDP offers map to opus/48000/2
OPUS_CLOCK_RATE = 48_000  # RFC 7587 §4.1: the RTP clock is always 48 kHz, whatever Opus codes


class RtpError(ValueError):
    """Raised for every malformed RTP input."""


@dataclass(frozen=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool = False
    csrcs: tuple[int, ...] = ()

    def __bytes__(self) -> bytes:
        if not 0 <= self.payload_type < 128:
            raise ValueError("payload type is 7 bits")
        b0 = (RTP_VERSION << 6) | len(self.csrcs)
        b1 = (int(self.marker) << 7) | self.payload_type
        head = struct.pack(
            "!BBHII", b0, b1, self.sequence & 0xFFFF, self.timestamp & 0xFFFFFFFF, self.ssrc
        )
        return head + b"".join(struct.pack("!I", c) for c in self.csrcs) + self.payload


def looks_like_rtp_or_rtcp(data: bytes) -> bool:
    """RFC 7983: a first byte of 128-191 is RTP or RTCP."""
    return len(data) >= 4 and 128 <= data[0] <= 191


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 §4: on a shared port, packet types 192-223 (as RTP PT 64-95) are RTCP."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def parse_rtp_untrusted(data: bytes) -> RtpPacket:
    if len(data) < 12:
        raise RtpError(f"{len(data)} bytes is shorter than an RTP header")
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
    if b0 >> 6 != RTP_VERSION:
        raise RtpError(f"RTP version {b0 >> 6}, expected 2")
    cc = b0 & 0x0F
    pos = 12 + 4 * cc
    if pos > len(data):
        raise RtpError("CSRC list overruns the packet")
    csrcs = struct.unpack_from(f"!{cc}I", data, 12)
    end = len(data)
    if b0 & 0x10:  # header extension (§5.3.1): skip it; we define none
        if pos + 4 > end:
            raise RtpError("extension header overruns the packet")
        ext_words = struct.unpack_from("!H", data, pos + 2)[0]
        pos += 4 + 4 * ext_words
        if pos > end:
            raise RtpError("extension overruns the packet")
    if b0 & 0x20:  # padding: the last byte counts the padding bytes, itself included
        pad = data[-1]
        if pad == 0 or pos + pad > end:
            raise RtpError("bad RTP padding")
        end -= pad
    return RtpPacket(
        payload_type=b1 & 0x7F,
        sequence=seq,
        timestamp=ts,
        ssrc=ssrc,
        payload=data[pos:end],
        marker=bool(b1 & 0x80),
        csrcs=tuple(csrcs),
    )
