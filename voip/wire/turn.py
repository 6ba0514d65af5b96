"""TURN wire helpers, sans-IO: ChannelData, indications, transports, REST credentials (RFC 8656)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

from voip.wire.stun import Address
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.stun import decode_error_code
from voip.wire.stun import decode_xor_address
from voip.wire.stun import encode
from voip.wire.stun import encode_error_code
from voip.wire.stun import encode_xor_address
from voip.wire.stun import new_transaction_id

UDP_TRANSPORT = 17  # REQUESTED-TRANSPORT protocol number (RFC 8656 §18.7)
CHANNEL_MIN, CHANNEL_MAX = 0x4000, 0x4FFF  # RFC 8656 §12: numbers usable for channels
# RFC 5766 allowed up to 0x7FFE and older clients (coturn's turnutils_uclient) still use it. A
# relay's own port carries only STUN and ChannelData, so it can accept them without confusion.
LEGACY_CHANNEL_MAX = 0x7FFE
ALLOCATION_LIFETIME = 600  # s, default and what we ask for (§7.2)
MAX_LIFETIME = 3600
PERMISSION_LIFETIME = 300  # s (§9)
CHANNEL_LIFETIME = 600  # s (§12)
# How long REST credentials stay valid, wherever they are made. A caller keeps its credentials
# for the whole call and every Refresh, permission and channel is checked against them, so they
# must outlast the call: 600 s cut relayed calls off after 12 minutes. One day is what the TURN
# REST API draft (draft-uberti-behave-turn-rest-00) recommends.
REST_CREDENTIAL_TTL = 24 * 3600


class ChannelDataError(ValueError):
    """A malformed ChannelData message."""


def looks_like_channel_data(data: bytes, legacy: bool = False) -> bool:
    """RFC 7983 demultiplexing: a first byte of 64-79 is TURN ChannelData (64-127 on a relay's
    own port, where RFC 5766 channel numbers can arrive)."""
    return len(data) >= 4 and 64 <= data[0] <= (127 if legacy else 79)


def pack_channel_data(channel: int, payload: bytes) -> bytes:
    # Over UDP the padding to 4 bytes is optional (RFC 8656 §12.5); we send none.
    return struct.pack("!HH", channel, len(payload)) + payload


def parse_channel_data_untrusted(data: bytes, legacy: bool = False) -> tuple[int, bytes]:
    if len(data) < 4:
        raise ChannelDataError("ChannelData shorter than its header")
    channel, length = struct.unpack_from("!HH", data)
    highest = LEGACY_CHANNEL_MAX if legacy else CHANNEL_MAX
    if not CHANNEL_MIN <= channel <= highest:
        raise ChannelDataError(f"channel 0x{channel:04x} outside 0x4000-0x{highest:04X}")
    if 4 + length > len(data):
        raise ChannelDataError("ChannelData length runs past the datagram")
    return channel, data[4 : 4 + length]


def peer_indication(method: Method, peer: Address, data: bytes) -> bytes:
    """A Send (client to relay) or Data (relay to client) indication: `data` to or from `peer`,
    for when no channel is bound (RFC 8656 §11)."""
    tid = new_transaction_id()
    ind = Message(
        method,
        Class.INDICATION,
        tid,
        ((Attr.XOR_PEER_ADDRESS, encode_xor_address(peer, tid)), (Attr.DATA, data)),
    )
    return encode(ind)


def requested_transport(protocol: int = UDP_TRANSPORT) -> bytes:
    return struct.pack("!B3x", protocol)


# REQUESTED-ADDRESS-FAMILY, ADDITIONAL-ADDRESS-FAMILY and ADDRESS-ERROR-CODE name a family so
# (RFC 8656 §18.8, §18.12, §18.13); we call families 4 and 6.
FAMILY_CODES = {4: 0x01, 6: 0x02}


def address_family(family: int) -> bytes:
    """The value of REQUESTED- or ADDITIONAL-ADDRESS-FAMILY: the family, 3 bytes reserved."""
    return struct.pack("!B3x", FAMILY_CODES[family])


def address_family_untrusted(value: bytes) -> int | None:
    """4 or 6 from an address family attribute; None for a value that names neither; StunError
    for one of the wrong length."""
    if len(value) != 4:
        raise StunError("address family attribute of the wrong length")
    return {code: family for family, code in FAMILY_CODES.items()}.get(value[0])


def encode_address_error(family: int, code: int, reason: str) -> bytes:
    """ADDRESS-ERROR-CODE: ERROR-CODE's layout with the family in its first byte."""
    return bytes([FAMILY_CODES[family]]) + encode_error_code(code, reason)[1:]


def decode_address_error_untrusted(value: bytes) -> tuple[int | None, int, str]:
    """(family, code, reason) of an ADDRESS-ERROR-CODE; StunError if it cannot be read."""
    code, reason = decode_error_code(b"\0" + value[1:])
    family = {c: f for f, c in FAMILY_CODES.items()}.get(value[0]) if value else None
    return family, code, reason


def rest_username(expiry_unix: int, name: str) -> str:
    """The TURN REST API username coturn's `use-auth-secret` expects: "expiry:name"."""
    return f"{expiry_unix}:{name}"


def rest_password(secret: str, username: str) -> str:
    """base64(HMAC-SHA1(secret, username)): the password both sides derive from the secret."""
    mac = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


def rest_credentials(
    secret: str, name: str, now_unix: float, ttl: int = REST_CREDENTIAL_TTL
) -> tuple[str, str]:
    """(username, password) for `name`, valid for `ttl` seconds from `now_unix`: the one place
    TURN REST credentials are made, by the rendezvous for its callers and by `--turn-secret`."""
    username = rest_username(int(now_unix) + ttl, name)
    return username, rest_password(secret, username)


def rest_expiry(username: str) -> int | None:
    """The expiry time in a REST username, or None if it has none."""
    head = username.split(":", 1)[0]
    # ASCII digits only: str.isdigit() is True for "²", which int() refuses.
    return int(head) if head.isascii() and head.isdigit() else None


def rest_user(username: str) -> str:
    """Who a username is for: the name in a REST username "expiry:name", else all of it. Each
    registration brings a new REST username for the same name; quotas count the name."""
    expiry, sep, name = username.partition(":")
    return name if sep and expiry.isascii() and expiry.isdigit() else username


def turn_url(text: str) -> tuple[str, int]:
    """`turn:HOST:PORT` (or `turn:HOST`, port 3478) as (host, port); ValueError if not."""
    host, port, _ = turn_uri(text)
    return host, port


def turn_uri(text: str) -> tuple[str, int, str]:
    """A TURN URI (RFC 7065) as (host, port, transport): `turn:HOST[:PORT]` is port 3478 over
    "auto" (UDP, and TCP or TLS where UDP gets no answer), `?transport=udp` or `tcp` only that;
    `turns:HOST[:PORT]` is TLS to port 5349. ValueError if it is none of these."""
    scheme, colon, rest = text.partition(":")
    if scheme not in ("turn", "turns") or not colon:
        raise ValueError(f"bad TURN server {text!r}: expected turn:HOST:PORT or turns:HOST:PORT")
    rest, _, query = rest.partition("?")
    transport = "tls" if scheme == "turns" else "auto"
    if query:
        asked = query.removeprefix("transport=").lower()
        if not query.startswith("transport=") or asked not in ("udp", "tcp"):
            raise ValueError(f"bad TURN server {text!r}: the query may be ?transport=udp or tcp")
        if scheme == "turns" and asked == "udp":
            raise ValueError(f"bad TURN server {text!r}: turns: is TLS, over TCP")
        transport = "tls" if scheme == "turns" else asked
    default = "5349" if scheme == "turns" else "3478"
    if rest.startswith("["):  # an IPv6 literal, [2001:db8::20] or [2001:db8::20]:3478
        host, _, after = rest[1:].partition("]")
        port = after.removeprefix(":") if after.startswith(":") else ("" if after else default)
    else:
        host, sep, port = rest.rpartition(":")
        if not sep:
            host, port = rest, default
        elif ":" in host:  # a bare IPv6 literal: RFC 7065 wants it in brackets
            raise ValueError(f"bad TURN server {text!r}: put an IPv6 address in [brackets]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad TURN server {text!r}: expected {scheme}:HOST:PORT")
    return host, int(port), transport


def dual_request() -> tuple[tuple[int, bytes], ...]:
    """What an Allocate carries to ask for an IPv6 relayed address besides the IPv4 one:
    ADDITIONAL-ADDRESS-FAMILY, at RFC 8656's codepoint and at the draft's that coturn reads
    (each server ignores the one it does not know: both are comprehension-optional)."""
    six = address_family(6)
    return ((Attr.ADDITIONAL_ADDRESS_FAMILY, six), (Attr.DRAFT_ADDITIONAL_ADDRESS_FAMILY, six))


def relayed_untrusted(msg: Message) -> tuple[list[Address], str | None]:
    """An Allocate answer's relayed addresses (a dual allocation's IPv4 one first), less any
    unspecified one (coturn lists one for a family it could not allocate); and why a family
    was not allocated, if the answer says (ADDRESS-ERROR-CODE). StunError for an address that
    cannot be read."""
    relayed = []
    for value in msg.get_all(Attr.XOR_RELAYED_ADDRESS):
        addr = decode_xor_address(value, msg.transaction_id)
        if addr[1] and addr[0] not in ("0.0.0.0", "::"):  # noqa: S104 - a value, never bound
            relayed.append(addr)
    refused = None
    for attr in (Attr.ADDRESS_ERROR_CODE, Attr.DRAFT_ADDRESS_ERROR_CODE):
        error = msg.get(attr)
        if error is not None:
            try:
                _, code, reason = decode_address_error_untrusted(error)
                refused = f"{code} {reason}".strip()
            except StunError:
                refused = "an unreadable ADDRESS-ERROR-CODE"
    return relayed, refused
