"""Binding answers for NAT behaviour discovery, sans-IO (RFC 5780 §7; RFC 3489 for old clients).

With an alternate address the server listens on four transport addresses: its primary and
alternate IP, each on the primary and the alternate port. Every Binding answer carries
RESPONSE-ORIGIN (where it was sent from) and OTHER-ADDRESS (the alternate IP and port), and a
CHANGE-REQUEST is honoured by answering from the other IP and/or port. Those are what let a
client tell how its NAT maps and filters. Without an alternate address the server still
answers, with no OTHER-ADDRESS, so a client knows which tests it cannot run here; a
CHANGE-REQUEST then gets 420, as RFC 5780 §6.1 says. RESPONSE-PORT (§7.5) sends the answer to
another port of the asking IP: that is how a client learns whether an idle mapping still lives
without refreshing it.

Binding is the one request every STUN server answers unauthenticated, so its answer is kept to
what a client cannot do without: XOR-MAPPED-ADDRESS, and FINGERPRINT if the request had one (40
bytes for IPv4). RESPONSE-ORIGIN, OTHER-ADDRESS and SOFTWARE are added only while the answer
stays no larger than the request: a client that wants them pads its request (RFC 5780's
PADDING), as natcheck does. An RFC 3489 client testing its NAT (a CHANGE-REQUEST, 28 bytes)
gets MAPPED-ADDRESS and, when there is one, CHANGED-ADDRESS, which it cannot test without: 44
bytes, a smaller factor than a plain Binding's 32 for 20.
"""

from __future__ import annotations

import socket
import struct
import zlib
from dataclasses import dataclass

from rendezvous.turn_server import Out
from voip.wire.stun import CHANGE_IP
from voip.wire.stun import CHANGE_PORT
from voip.wire.stun import CHANGED_ADDRESS
from voip.wire.stun import FINGERPRINT_XOR
from voip.wire.stun import HEADER_LEN
from voip.wire.stun import MAGIC_COOKIE
from voip.wire.stun import SOURCE_ADDRESS
from voip.wire.stun import Address
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import StunError
from voip.wire.stun import encode
from voip.wire.stun import encode_address
from voip.wire.stun import encode_error_code
from voip.wire.stun import encode_unknown_attributes
from voip.wire.stun import encode_xor_address
from voip.wire.stun import text

# The plain Binding requests (RFC 8489 §6.1: no attributes, or FINGERPRINT alone) that most
# keepalives and every load generator send, by their first 8 bytes, and what their answers
# begin with. Their answer is always the same but for the address and the transaction ID.
_COOKIE = struct.pack("!I", MAGIC_COOKIE)
_PLAIN = {b"\x00\x01\x00\x00" + _COOKIE: 20, b"\x00\x01\x00\x08" + _COOKIE: 28}
_FINGERPRINT_HEAD = struct.pack("!HH", Attr.FINGERPRINT, 4)
_ANSWER4 = struct.Struct("!HHI12sHHBBHI")  # header, then XOR-MAPPED-ADDRESS of an IPv4 address
_ANSWER6 = struct.Struct("!HHI12sHHBBH16s")
_FINGERPRINT = struct.Struct("!HHI")


def plain_binding_answer(data: bytes, src: Address) -> bytes | None:
    """The answer to a plain Binding request from `src`, byte for byte what answer_binding gives
    it, in a few operations (a server answers thousands a second); None for any other datagram,
    which takes answer_binding's way."""
    n = _PLAIN.get(data[:8])
    if n != len(data) or (n == 28 and data[20:24] != _FINGERPRINT_HEAD):
        return None
    tid, xport = data[8:20], src[1] ^ (MAGIC_COOKIE >> 16)
    try:
        if ":" in src[0]:
            key = int.from_bytes(_COOKIE + tid)
            xaddr = (int.from_bytes(socket.inet_pton(socket.AF_INET6, src[0])) ^ key).to_bytes(16)
            answer = _ANSWER6.pack(
                0x0101, 24, MAGIC_COOKIE, tid, Attr.XOR_MAPPED_ADDRESS, 20, 0, 2, xport, xaddr
            )
        else:
            xip = int.from_bytes(socket.inet_aton(src[0])) ^ MAGIC_COOKIE
            answer = _ANSWER4.pack(
                0x0101, 12, MAGIC_COOKIE, tid, Attr.XOR_MAPPED_ADDRESS, 8, 0, 1, xport, xip
            )
    except OSError:  # not an IP address: the full path says why
        return None
    if n == 20:
        return answer
    answer = answer[:2] + struct.pack("!H", len(answer) - HEADER_LEN + 8) + answer[4:]
    crc = zlib.crc32(answer) ^ FINGERPRINT_XOR
    return answer + _FINGERPRINT.pack(Attr.FINGERPRINT, 4, crc)


@dataclass(frozen=True)
class Addresses:
    primary: Address
    alternate: Address | None = None  # (alternate IP, alternate port)

    def all(self) -> list[Address]:
        if self.alternate is None:
            return [self.primary]
        (ip1, p1), (ip2, p2) = self.primary, self.alternate
        return [(ip1, p1), (ip1, p2), (ip2, p1), (ip2, p2)]

    def changed(self, local: Address, change_ip: bool, change_port: bool) -> Address:
        """The local address that differs from `local` in IP and/or port, as asked."""
        assert self.alternate is not None
        ips = (self.primary[0], self.alternate[0])
        ports = (self.primary[1], self.alternate[1])
        ip = ips[1 - ips.index(local[0])] if change_ip else local[0]
        port = ports[1 - ports.index(local[1])] if change_port else local[1]
        return ip, port


def attribute_size(value: bytes) -> int:
    """Bytes an attribute takes on the wire: header, value, padding to 4 (RFC 8489 §14)."""
    return 4 + len(value) + (-len(value) % 4)


def answer_binding(
    msg: Message, src: Address, local: Address, addresses: Addresses, software: str
) -> list[Out]:
    """The answer to a Binding request that arrived from `src` on our `local` address."""
    flags = 0
    raw = msg.get(Attr.CHANGE_REQUEST)
    if raw is not None:
        if len(raw) != 4:
            raise StunError("CHANGE-REQUEST must be 4 bytes")
        flags = struct.unpack("!I", raw)[0]
    dest = src
    raw_port = msg.get(Attr.RESPONSE_PORT)
    if raw_port is not None and not msg.is_classic:
        if len(raw_port) != 4:
            raise StunError("RESPONSE-PORT must be 4 bytes")
        port = struct.unpack("!H", raw_port[:2])[0]
        if port == 0:
            raise StunError("RESPONSE-PORT 0")
        # The same IP only, so it cannot aim answers at anyone else.
        dest = (src[0], port)
    fingerprint = not msg.is_classic and msg.fingerprint_at is not None
    budget = len(msg.raw) - (8 if fingerprint else 0) - HEADER_LEN  # bytes of attributes
    wants_change = bool(flags & (CHANGE_IP | CHANGE_PORT))
    if wants_change and addresses.alternate is None:
        error: list[tuple[int, bytes]] = [
            (Attr.ERROR_CODE, encode_error_code(420, "")),
            (Attr.UNKNOWN_ATTRIBUTES, encode_unknown_attributes([Attr.CHANGE_REQUEST])),
        ]
        if sum(attribute_size(v) for _, v in error) > budget:
            return []  # an error no larger than the question, or none
        reply = msg.reply(Class.ERROR, error)
        return [Out(encode(reply, fingerprint=fingerprint), src, local)]
    origin = (
        addresses.changed(local, bool(flags & CHANGE_IP), bool(flags & CHANGE_PORT))
        if wants_change
        else local
    )
    attrs: list[tuple[int, bytes]] = []
    optional: list[tuple[int, bytes]] = []
    if msg.is_classic:  # RFC 3489: plain addresses, and its names for the same facts
        attrs.append((Attr.MAPPED_ADDRESS, encode_address(src)))
        if addresses.alternate is not None:
            changed = (CHANGED_ADDRESS, encode_address(addresses.alternate))
            (attrs if raw is not None else optional).append(changed)
        optional.append((SOURCE_ADDRESS, encode_address(origin)))
        # RFC 3489's SERVER attribute is a multiple of 4 bytes long; an old client (Debian's
        # `stun`) rejects any other length, so pad with spaces as RFC 5769's vectors do.
        optional.append((Attr.SOFTWARE, text(software + " " * (-len(software.encode()) % 4))))
    else:
        attrs.append((Attr.XOR_MAPPED_ADDRESS, encode_xor_address(src, msg.transaction_id)))
        optional.append((Attr.RESPONSE_ORIGIN, encode_address(origin)))
        if addresses.alternate is not None:
            optional.append((Attr.OTHER_ADDRESS, encode_address(addresses.alternate)))
        optional.append((Attr.SOFTWARE, text(software)))
    used = sum(attribute_size(v) for _, v in attrs)
    for attr in optional:
        if used + attribute_size(attr[1]) <= budget:
            attrs.append(attr)
            used += attribute_size(attr[1])
    reply = msg.reply(Class.SUCCESS, attrs)
    return [Out(encode(reply, fingerprint=fingerprint), dest, origin)]
