"""STUN and ChannelData over a byte stream (TURN over TCP or TLS, RFC 8656 §12.5), sans-IO.

Over UDP each datagram is one message. Over TCP and TLS messages follow each other on one
stream, and a read may hold half of one or several: each frame says its own length. A STUN
message is its 20-byte header plus the length in its header; ChannelData is its 4-byte header
plus its length, padded to a multiple of 4 on a stream (RFC 8656 §12.5: "over TCP and TLS-over-
TCP, the ChannelData message MUST be padded"). Anything else on the stream is garbage: the
stream cannot be resynchronised, so the connection that carried it must be closed (and only
that one).
"""

from __future__ import annotations

import struct
from typing import NoReturn

from voip.wire.turn import CHANNEL_MAX
from voip.wire.turn import CHANNEL_MIN
from voip.wire.turn import LEGACY_CHANNEL_MAX

STUN_HEADER = 20
CHANNEL_HEADER = 4
MAGIC_COOKIE = 0x2112A442
# The largest frame taken: a TURN message fits a UDP datagram (RFC 8656 relays datagrams), so
# 64 KiB plus a header; a peer that announces more is not speaking TURN.
MAX_FRAME = 65535 + STUN_HEADER


class FramingError(ValueError):
    """The stream carries something that is not a STUN or ChannelData frame: close it."""


def frame_channel_data(channel: int, payload: bytes) -> bytes:
    """ChannelData for a stream: padded to a multiple of 4 bytes (RFC 8656 §12.5)."""
    padding = -len(payload) % 4
    return struct.pack("!HH", channel, len(payload)) + payload + bytes(padding)


class StreamDeframer:
    """Bytes of one connection in, whole frames out (each a STUN message, or ChannelData with
    its header and without the padding), in order. After a FramingError the deframer stays
    broken: the caller closes the connection."""

    def __init__(self, legacy_channels: bool = False):
        self._buffer = bytearray()
        self._highest = LEGACY_CHANNEL_MAX if legacy_channels else CHANNEL_MAX
        self.broken: str | None = None

    @property
    def pending(self) -> int:
        """Bytes held for a frame not yet whole (never more than MAX_FRAME plus a read)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """The frames `data` completes; raises FramingError at the first garbage."""
        if self.broken is not None:
            raise FramingError(self.broken)
        self._buffer += data
        frames: list[bytes] = []
        while (size := self._next_size()) is not None and len(self._buffer) >= size[0]:
            whole, keep = size
            frames.append(bytes(self._buffer[:keep]))
            del self._buffer[:whole]
        return frames

    def _next_size(self) -> tuple[int, int] | None:
        """(bytes the next frame takes on the stream, bytes of it to keep), once its header is
        in; None before."""
        buf = self._buffer
        if len(buf) < CHANNEL_HEADER:
            return None
        first, length = struct.unpack_from("!HH", buf)
        if first >> 14 == 0:  # STUN: the top two bits are zero (RFC 8489 §5)
            if len(buf) < 8:
                return None
            if struct.unpack_from("!I", buf, 4)[0] != MAGIC_COOKIE or length % 4:
                self._garbage("not a STUN message (bad cookie or length)")
            return STUN_HEADER + length, STUN_HEADER + length
        if CHANNEL_MIN <= first <= self._highest:
            kept = CHANNEL_HEADER + length
            return kept + (-length % 4), kept
        self._garbage(f"neither STUN nor ChannelData (first bytes 0x{first:04x})")

    def _garbage(self, why: str) -> NoReturn:
        self.broken = why
        self._buffer.clear()
        raise FramingError(why)


class StreamFramer:
    """What goes on a stream for each datagram a sans-IO core sends (the same bytes it would
    send over UDP): ChannelData padded, STUN as it is; and a request sent again with the same
    transaction ID is not sent again: over TCP and TLS the stream itself is reliable, and the
    client "SHOULD NOT" retransmit (RFC 8489 §6.2.2), while the core keeps one schedule for
    every transport and relies on its timeout alone."""

    SENT_IDS = 64  # requests remembered: a core has a handful outstanding at once

    def __init__(self) -> None:
        self._sent: dict[bytes, None] = {}  # transaction IDs in the order sent (a bounded set)

    def frame(self, data: bytes) -> bytes | None:
        if len(data) < CHANNEL_HEADER:
            return None
        if (CHANNEL_MIN >> 8) <= data[0] <= (CHANNEL_MAX >> 8):
            length = struct.unpack_from("!H", data, 2)[0]
            if len(data) < CHANNEL_HEADER + length:
                return None
            return data[: CHANNEL_HEADER + length] + bytes(-length % 4)
        if data[0] >> 6 != 0 or len(data) < STUN_HEADER:
            return None  # not ours to put on a stream (the stream would break at the peer)
        if data[0] & 0x01 == 0 and data[1] & 0x10 == 0:  # class bits 00: a request
            tid = data[8:STUN_HEADER]
            if tid in self._sent:
                return None
            self._sent[tid] = None
            if len(self._sent) > self.SENT_IDS:
                del self._sent[next(iter(self._sent))]
        return data
