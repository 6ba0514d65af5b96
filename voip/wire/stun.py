"""STUN message codec, sans-IO (RFC 8489; ICE attributes of RFC 8445, RFC 5780, RFC 8656)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import os
import struct
import zlib
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field

from voip.wire import stun_registry

# The registries live beside the codec; its users take them from here, with it.
Attr = stun_registry.Attr
KNOWN_ATTRIBUTES = frozenset(int(a) for a in Attr)  # asked of every request: built once
Class = stun_registry.Class
Method = stun_registry.Method

MAGIC_COOKIE = 0x2112A442
HEADER_LEN = 20
FINGERPRINT_XOR = 0x5354554E  # "STUN", RFC 8489 §14.7
MAX_DATAGRAM = 1500  # larger STUN datagrams are not ours to parse (RFC 8489 §6.1 path MTU)

Address = tuple[str, int]
_U32 = struct.Struct("!I")  # the integer attributes, as Message.u32 and u64 read them
_U64 = struct.Struct("!Q")


class StunError(ValueError):
    """Raised for every malformed STUN input; nothing else escapes the parser."""


# CHANGE-REQUEST flags (RFC 5780 §7.2), and the RFC 3489 attributes an old client (Debian's
# `stun`) still reads in a Binding answer.
CHANGE_IP = 0x04
CHANGE_PORT = 0x02
SOURCE_ADDRESS = 0x0004
CHANGED_ADDRESS = 0x0005


def change_request(flags: int) -> bytes:
    """A CHANGE-REQUEST attribute's value."""
    return struct.pack("!I", flags)


def message_type(method: int, cls: Class) -> int:
    """Interleave the 12 method bits and 2 class bits as RFC 8489 §5 lays them out."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 0b01) << 4)
        | ((cls & 0b10) << 7)
    )


def split_message_type(mtype: int) -> tuple[int, Class]:
    method = (mtype & 0x000F) | ((mtype & 0x00E0) >> 1) | ((mtype & 0x3E00) >> 2)
    cls = Class(((mtype >> 4) & 0b01) | ((mtype >> 7) & 0b10))
    return method, cls


def new_transaction_id() -> bytes:
    return os.urandom(12)


@dataclass(frozen=True)
class Message:
    """A STUN message. Attributes stay raw, in wire order, so integrity checks see what was sent."""

    method: int
    cls: Class
    transaction_id: bytes = field(default_factory=new_transaction_id)
    attributes: tuple[tuple[int, bytes], ...] = ()
    cookie: int = MAGIC_COOKIE  # anything else marks an RFC 3489 ("classic") message
    raw: bytes = field(default=b"", compare=False, repr=False)  # bytes as parsed, if parsed
    integrity_at: int | None = field(default=None, compare=False, repr=False)
    integrity256_at: int | None = field(default=None, compare=False, repr=False)
    fingerprint_at: int | None = field(default=None, compare=False, repr=False)

    # -- reading attributes ------------------------------------------------------------
    def get(self, attr: int) -> bytes | None:
        for atype, value in self.attributes:
            if atype == attr:
                return value
        return None

    def get_all(self, attr: int) -> list[bytes]:
        return [value for atype, value in self.attributes if atype == attr]

    def has(self, attr: int) -> bool:
        return self.get(attr) is not None

    def text(self, attr: int) -> str | None:
        value = self.get(attr)
        if value is None:
            return None
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StunError(f"attribute 0x{attr:04x} is not UTF-8") from exc

    def u32(self, attr: int) -> int | None:
        return self._unsigned(attr, _U32)

    def u64(self, attr: int) -> int | None:
        return self._unsigned(attr, _U64)

    def _unsigned(self, attr: int, form: struct.Struct) -> int | None:
        value = self.get(attr)
        if value is None:
            return None
        if len(value) != form.size:
            raise StunError(f"attribute 0x{attr:04x} must be {form.size} bytes, got {len(value)}")
        return int(form.unpack(value)[0])

    def xor_address(self, attr: int = Attr.XOR_MAPPED_ADDRESS) -> Address | None:
        value = self.get(attr)
        return None if value is None else decode_xor_address(value, self.transaction_id)

    def address(self, attr: int = Attr.MAPPED_ADDRESS) -> Address | None:
        value = self.get(attr)
        return None if value is None else decode_address(value)

    def error(self) -> tuple[int, str] | None:
        value = self.get(Attr.ERROR_CODE)
        return None if value is None else decode_error_code(value)

    @property
    def is_classic(self) -> bool:
        return self.cookie != MAGIC_COOKIE

    def reply(self, cls: Class, attributes: Iterable[tuple[int, bytes]] = ()) -> Message:
        """A response to this request, same method, transaction ID and cookie."""
        return Message(self.method, cls, self.transaction_id, tuple(attributes), self.cookie)


# -- attribute value codecs -----------------------------------------------------------


@functools.lru_cache(maxsize=4096)  # every answer packs its asker's address: parse it once
def _pack_ip(host: str) -> tuple[int, bytes]:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as exc:
        raise StunError(f"not an IP address: {host!r}") from exc
    return (0x01 if ip.version == 4 else 0x02), ip.packed


def encode_address(addr: Address) -> bytes:
    family, packed = _pack_ip(addr[0])
    return struct.pack("!BBH", 0, family, addr[1]) + packed


def decode_address(value: bytes) -> Address:
    if len(value) < 4:
        raise StunError("address attribute too short")
    _, family, port = struct.unpack_from("!BBH", value)
    body = value[4:]
    if family == 0x01 and len(body) == 4:
        return str(ipaddress.IPv4Address(body)), port
    if family == 0x02 and len(body) == 16:
        return str(ipaddress.IPv6Address(body)), port
    raise StunError(f"bad address family {family} or length {len(value)}")


def _xor_key(transaction_id: bytes) -> bytes:
    return struct.pack("!I", MAGIC_COOKIE) + transaction_id


def encode_xor_address(addr: Address, transaction_id: bytes) -> bytes:
    family, packed = _pack_ip(addr[0])
    key = _xor_key(transaction_id)
    xport = addr[1] ^ (MAGIC_COOKIE >> 16)
    size = len(packed)
    xaddr = (int.from_bytes(packed) ^ int.from_bytes(key[:size])).to_bytes(size)
    return struct.pack("!BBH", 0, family, xport) + xaddr


def decode_xor_address(value: bytes, transaction_id: bytes) -> Address:
    if len(value) < 4:
        raise StunError("XOR address attribute too short")
    key = _xor_key(transaction_id)
    plain = value[:2] + struct.pack(
        "!H", struct.unpack_from("!H", value, 2)[0] ^ (MAGIC_COOKIE >> 16)
    )
    plain += bytes(a ^ b for a, b in zip(value[4:], key, strict=False))
    return decode_address(plain)


def encode_error_code(code: int, reason: str) -> bytes:
    if not 300 <= code <= 699:
        raise ValueError(f"STUN error codes are 300-699, got {code}")
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8")


def decode_error_code(value: bytes) -> tuple[int, str]:
    if len(value) < 4:
        raise StunError("ERROR-CODE too short")
    _, klass, number = struct.unpack_from("!HBB", value)
    code = (klass & 0x07) * 100 + number
    if not 300 <= code <= 699 or number > 99:
        raise StunError(f"ERROR-CODE out of range: {code}")
    return code, value[4:].decode("utf-8", errors="replace")


def encode_unknown_attributes(types: Sequence[int]) -> bytes:
    return b"".join(struct.pack("!H", t) for t in types)


def u32(value: int) -> bytes:
    return struct.pack("!I", value)


def u64(value: int) -> bytes:
    return struct.pack("!Q", value)


def text(value: str) -> bytes:
    return value.encode("utf-8")


# -- encoding -----------------------------------------------------------------------


def _pad(length: int) -> int:
    return (4 - length % 4) % 4


def _pack_attrs(attributes: Iterable[tuple[int, bytes]], padding: bytes) -> bytes:
    out = bytearray()
    for atype, value in attributes:
        out += struct.pack("!HH", atype, len(value)) + value + padding * _pad(len(value))
    return bytes(out)


def _header(msg: Message, body_len: int) -> bytes:
    return struct.pack("!HHI", message_type(msg.method, msg.cls), body_len, msg.cookie) + (
        msg.transaction_id
    )


def encode(
    msg: Message,
    *,
    integrity_key: bytes | None = None,
    integrity_sha256: bool = False,
    fingerprint: bool = False,
    padding: bytes = b"\x00",
) -> bytes:
    """Serialise; add MESSAGE-INTEGRITY(-SHA256) over key and FINGERPRINT last, as §14.5-14.7 say.

    `padding` is the byte used to fill attributes to 4 bytes; receivers must ignore it, and RFC 5769
    pads with spaces, so the vectors are reproduced byte for byte only when it can be chosen.
    """
    if len(msg.transaction_id) != 12:
        raise ValueError("transaction ID must be 12 bytes")
    body = _pack_attrs(msg.attributes, padding)
    if integrity_key is not None:
        if integrity_sha256:
            mac_type, mac_len, digest = Attr.MESSAGE_INTEGRITY_SHA256, 32, hashlib.sha256
        else:
            mac_type, mac_len, digest = Attr.MESSAGE_INTEGRITY, 20, hashlib.sha1
        # The length field covers the MAC attribute itself while the MAC is computed (§14.5).
        mac = hmac.new(integrity_key, _header(msg, len(body) + 4 + mac_len) + body, digest)
        body += struct.pack("!HH", mac_type, mac_len) + mac.digest()
    if fingerprint:
        crc = zlib.crc32(_header(msg, len(body) + 8) + body) ^ FINGERPRINT_XOR
        body += struct.pack("!HHI", Attr.FINGERPRINT, 4, crc)
    return _header(msg, len(body)) + body


# -- parsing (hostile input enters here) ----------------------------------------------


def looks_like_stun(data: bytes) -> bool:
    """RFC 7983 demultiplexing: a first byte of 0-3 is STUN."""
    return len(data) >= HEADER_LEN and data[0] < 4


def parse_message_untrusted(data: bytes) -> Message:
    """Parse one datagram as STUN. Raises StunError, and only StunError, on anything malformed."""
    if len(data) < HEADER_LEN:
        raise StunError(f"datagram of {len(data)} bytes is shorter than a STUN header")
    if len(data) > MAX_DATAGRAM:
        raise StunError(f"datagram of {len(data)} bytes is larger than {MAX_DATAGRAM}")
    mtype, length, cookie = struct.unpack_from("!HHI", data)
    if mtype & 0xC000:
        raise StunError("first two bits of a STUN message must be zero")
    if length % 4 or length != len(data) - HEADER_LEN:
        raise StunError(f"length field {length} does not match datagram of {len(data)} bytes")
    method, cls = split_message_type(mtype)
    tid = data[8:20]
    attrs: list[tuple[int, bytes]] = []
    pos = HEADER_LEN
    integrity_at = integrity256_at = fingerprint_at = None
    while pos < len(data):
        if pos + 4 > len(data):
            raise StunError("truncated attribute header")
        atype, alen = struct.unpack_from("!HH", data, pos)
        end = pos + 4 + alen
        if end > len(data):
            raise StunError(f"attribute 0x{atype:04x} overruns the message")
        value = data[pos + 4 : end]
        if fingerprint_at is not None:
            raise StunError("attribute after FINGERPRINT")
        if atype == Attr.FINGERPRINT:
            if alen != 4:
                raise StunError("FINGERPRINT must be 4 bytes")
            fingerprint_at = pos
            attrs.append((atype, value))
        elif atype == Attr.MESSAGE_INTEGRITY_SHA256 and integrity256_at is None:
            if alen < 16 or alen > 32 or alen % 4:
                raise StunError("MESSAGE-INTEGRITY-SHA256 must be 16-32 bytes, a multiple of 4")
            integrity256_at = pos
            attrs.append((atype, value))
        elif integrity_at is not None or integrity256_at is not None:
            pass  # §14.5: everything after MESSAGE-INTEGRITY but those two is ignored
        elif atype == Attr.MESSAGE_INTEGRITY:
            if alen != 20:
                raise StunError("MESSAGE-INTEGRITY must be 20 bytes")
            integrity_at = pos
            attrs.append((atype, value))
        else:
            attrs.append((atype, value))
        pos = end + _pad(alen)
    if pos != len(data):
        raise StunError("attribute padding runs past the message")
    return Message(
        method, cls, tid, tuple(attrs), cookie, data, integrity_at, integrity256_at, fingerprint_at
    )


def _with_length(raw: bytes, upto: int, extra: int) -> bytes:
    """raw[:upto] with its length field rewritten to end `extra` bytes past `upto`."""
    return raw[:2] + struct.pack("!H", upto - HEADER_LEN + extra) + raw[4:upto]


def check_integrity(msg: Message, key: bytes) -> bool:
    """True when the message carries a MESSAGE-INTEGRITY(-SHA256) that `key` produced."""
    raw = msg.raw
    if msg.integrity_at is not None:
        at = msg.integrity_at
        mac = hmac.new(key, _with_length(raw, at, 24), hashlib.sha1).digest()
        return hmac.compare_digest(mac, raw[at + 4 : at + 24])
    if msg.integrity256_at is not None:
        at = msg.integrity256_at
        alen = struct.unpack_from("!H", raw, at + 2)[0]
        mac = hmac.new(key, _with_length(raw, at, 4 + alen), hashlib.sha256).digest()
        return hmac.compare_digest(mac[:alen], raw[at + 4 : at + 4 + alen])
    return False


def check_fingerprint(msg: Message) -> bool:
    if msg.fingerprint_at is None:
        return False
    at = msg.fingerprint_at
    expected = zlib.crc32(_with_length(msg.raw, at, 8)) ^ FINGERPRINT_XOR
    return bool(struct.unpack_from("!I", msg.raw, at + 4)[0] == expected)


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """RFC 8489 §9.2.2 key for MESSAGE-INTEGRITY: MD5(username ":" realm ":" password).

    MD5 here is the protocol's definition, not our choice of hash for security.
    """
    return hashlib.md5(f"{username}:{realm}:{password}".encode(), usedforsecurity=False).digest()


def unknown_required(msg: Message, known: Iterable[int] = ()) -> list[int]:
    """Comprehension-required attributes (0x0000-0x7FFF) we do not understand (§6.3.1)."""
    known_set = KNOWN_ATTRIBUTES.union(known) if known else KNOWN_ATTRIBUTES
    return sorted({t for t, _ in msg.attributes if t < 0x8000 and t not in known_set})
