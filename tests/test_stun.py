"""STUN codec: RFC 5769 test vectors byte for byte, round trips, and parser robustness."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from voip.wire.stun import MAGIC_COOKIE
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.stun import check_fingerprint
from voip.wire.stun import check_integrity
from voip.wire.stun import encode
from voip.wire.stun import encode_error_code
from voip.wire.stun import encode_xor_address
from voip.wire.stun import long_term_key
from voip.wire.stun import message_type
from voip.wire.stun import parse_message_untrusted
from voip.wire.stun import split_message_type
from voip.wire.stun import text
from voip.wire.stun import u32
from voip.wire.stun import u64
from voip.wire.stun import unknown_required

# RFC 5769 §2.1-2.4, as printed in the RFC.
TID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"

SAMPLE_REQUEST = bytes.fromhex(
    "00010058"
    "2112a442"
    "b7e7a701bc34d686fa87dfae"
    "80220010"
    "5354554e"
    "20746573"
    "7420636c"
    "69656e74"  # SOFTWARE "STUN test client"
    "00240004"
    "6e0001ff"  # PRIORITY
    "80290008"
    "932ff9b1"
    "51263b36"  # ICE-CONTROLLED
    "00060009"
    "6576746a"
    "3a683676"
    "59202020"  # USERNAME "evtj:h6vY", space-padded
    "00080014"
    "9aeaa70c"
    "bfd8cb56"
    "781ef2b5"
    "b2d3f249"
    "c1b571a2"  # MESSAGE-INTEGRITY
    "80280004"
    "e57a3bcf"  # FINGERPRINT
)
SAMPLE_IPV4_RESPONSE = bytes.fromhex(
    "0101003c"
    "2112a442"
    "b7e7a701bc34d686fa87dfae"
    "8022000b"
    "74657374"
    "20766563"
    "746f7220"  # SOFTWARE "test vector", space-padded
    "00200008"
    "0001a147"
    "e112a643"  # XOR-MAPPED-ADDRESS 192.0.2.1:32853
    "00080014"
    "2b91f599"
    "fd9e90c3"
    "8c7489f9"
    "2af9ba53"
    "f06be7d7"
    "80280004"
    "c07d4c96"
)
SAMPLE_IPV6_RESPONSE = bytes.fromhex(
    "01010048"
    "2112a442"
    "b7e7a701bc34d686fa87dfae"
    "8022000b"
    "74657374"
    "20766563"
    "746f7220"
    "00200014"
    "0002a147"
    "0113a9fa"
    "a5d3f179"
    "bc25f4b5"
    "bed2b9d9"
    "00080014"
    "a382954e"
    "4be67bf1"
    "1784c97c"
    "8292c275"
    "bfe3ed41"
    "80280004"
    "c8fb0b4c"
)
LTC_TID = bytes.fromhex("78ad3433c6ad72c029da412e")
SAMPLE_LONG_TERM_REQUEST = bytes.fromhex(
    "00010060"
    "2112a442"
    "78ad3433c6ad72c029da412e"
    "00060012"
    "e3839ee3"
    "8388e383"
    "aae38383"
    "e382afe3"
    "82b90000"  # USERNAME (katakana)
    "0015001c"
    "662f2f34"
    "39396b39"
    "35346436"
    "4f4c3334"
    "6f4c3946"
    "53547679"
    "36347341"
    "0014000b"
    "6578616d"
    "706c652e"
    "6f726700"  # REALM "example.org"
    "00080014"
    "f6702465"
    "6dd64a3e"
    "02b8e071"
    "2e85c9a2"
    "8ca89666"
)
LTC_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"


def test_sample_request_encodes_byte_for_byte() -> None:
    msg = Message(
        Method.BINDING,
        Class.REQUEST,
        TID,
        (
            (Attr.SOFTWARE, text("STUN test client")),
            (Attr.PRIORITY, u32(0x6E0001FF)),
            (Attr.ICE_CONTROLLED, u64(0x932FF9B151263B36)),
            (Attr.USERNAME, text("evtj:h6vY")),
        ),
    )
    assert encode(msg, integrity_key=PASSWORD, fingerprint=True, padding=b" ") == SAMPLE_REQUEST


def test_sample_request_decodes_and_verifies() -> None:
    msg = parse_message_untrusted(SAMPLE_REQUEST)
    assert (msg.method, msg.cls, msg.transaction_id) == (Method.BINDING, Class.REQUEST, TID)
    assert msg.text(Attr.USERNAME) == "evtj:h6vY"
    assert msg.text(Attr.SOFTWARE) == "STUN test client"
    assert msg.u32(Attr.PRIORITY) == 0x6E0001FF
    assert msg.u64(Attr.ICE_CONTROLLED) == 0x932FF9B151263B36
    assert check_integrity(msg, PASSWORD)
    assert not check_integrity(msg, b"wrong password")
    assert check_fingerprint(msg)


@pytest.mark.parametrize(
    ("vector", "address"),
    [
        (SAMPLE_IPV4_RESPONSE, ("192.0.2.1", 32853)),
        (SAMPLE_IPV6_RESPONSE, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
)
def test_sample_responses_round_trip(vector: bytes, address: tuple[str, int]) -> None:
    msg = parse_message_untrusted(vector)
    assert msg.cls == Class.SUCCESS
    assert msg.xor_address() == address
    assert check_integrity(msg, PASSWORD)
    assert check_fingerprint(msg)
    rebuilt = Message(
        Method.BINDING,
        Class.SUCCESS,
        TID,
        (
            (Attr.SOFTWARE, text("test vector")),
            (Attr.XOR_MAPPED_ADDRESS, encode_xor_address(address, TID)),
        ),
    )
    assert encode(rebuilt, integrity_key=PASSWORD, fingerprint=True, padding=b" ") == vector


def test_long_term_credentials_vector() -> None:
    key = long_term_key(LTC_USERNAME, "example.org", "TheMatrIX")
    msg = Message(
        Method.BINDING,
        Class.REQUEST,
        LTC_TID,
        (
            (Attr.USERNAME, text(LTC_USERNAME)),
            (Attr.NONCE, text("f//499k954d6OL34oL9FSTvy64sA")),
            (Attr.REALM, text("example.org")),
        ),
    )
    assert encode(msg, integrity_key=key) == SAMPLE_LONG_TERM_REQUEST
    parsed = parse_message_untrusted(SAMPLE_LONG_TERM_REQUEST)
    assert check_integrity(parsed, key)
    assert not check_fingerprint(parsed)  # this vector carries none


def test_tampered_byte_fails_integrity_and_fingerprint() -> None:
    tampered = bytearray(SAMPLE_REQUEST)
    tampered[30] ^= 0x01  # inside SOFTWARE
    msg = parse_message_untrusted(bytes(tampered))
    assert not check_integrity(msg, PASSWORD)
    assert not check_fingerprint(msg)


def test_message_integrity_sha256_round_trip() -> None:
    msg = Message(Method.BINDING, Class.REQUEST, TID, ((Attr.USERNAME, text("a:b")),))
    data = encode(msg, integrity_key=b"secret", integrity_sha256=True, fingerprint=True)
    parsed = parse_message_untrusted(data)
    assert parsed.integrity256_at is not None
    assert check_integrity(parsed, b"secret")
    assert not check_integrity(parsed, b"other")
    assert check_fingerprint(parsed)


def test_attributes_after_integrity_are_ignored() -> None:
    # RFC 8489 §14.5: anything but FINGERPRINT after MESSAGE-INTEGRITY is ignored.
    msg = Message(Method.BINDING, Class.REQUEST, TID, ((Attr.USERNAME, text("a:b")),))
    data = encode(msg, integrity_key=b"k")
    extra = struct.pack("!HH", Attr.SOFTWARE, 4) + b"evil"
    data = data[:2] + struct.pack("!H", len(data) - 20 + 8) + data[4:] + extra
    parsed = parse_message_untrusted(data)
    assert parsed.get(Attr.SOFTWARE) is None
    assert check_integrity(parsed, b"k")


@pytest.mark.parametrize("method", [0x001, 0x003, 0x0C3, 0xFFF])
@pytest.mark.parametrize("cls", list(Class))
def test_message_type_interleaving_round_trips(method: int, cls: Class) -> None:
    assert split_message_type(message_type(method, cls)) == (method, cls)


def test_known_message_types() -> None:
    assert message_type(Method.BINDING, Class.REQUEST) == 0x0001
    assert message_type(Method.BINDING, Class.SUCCESS) == 0x0101
    assert message_type(Method.BINDING, Class.ERROR) == 0x0111
    assert message_type(Method.ALLOCATE, Class.REQUEST) == 0x0003
    assert message_type(Method.DATA, Class.INDICATION) == 0x0017


def test_error_code_round_trip() -> None:
    msg = Message(
        Method.BINDING,
        Class.ERROR,
        TID,
        ((Attr.ERROR_CODE, encode_error_code(420, "Unknown Attribute")),),
    )
    assert parse_message_untrusted(encode(msg)).error() == (420, "Unknown Attribute")
    with pytest.raises(ValueError, match="300-699"):
        encode_error_code(200, "OK")


def test_unknown_comprehension_required_attributes_are_listed() -> None:
    msg = Message(Method.BINDING, Class.REQUEST, TID, ((0x7777, b"x"), (0xBEEF, b"y")))
    parsed = parse_message_untrusted(encode(msg))
    assert unknown_required(parsed) == [0x7777]  # 0xBEEF is comprehension-optional


def test_classic_rfc3489_message_is_recognised() -> None:
    data = struct.pack("!HHI", 0x0001, 0, 0x01020304) + bytes(12)
    msg = parse_message_untrusted(data)
    assert msg.is_classic and msg.cookie == 0x01020304
    assert encode(msg.reply(Class.SUCCESS))[4:8] == bytes([1, 2, 3, 4])


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "shorter"),
        (b"\x00\x01\x00\x00" + struct.pack("!I", MAGIC_COOKIE) + bytes(11), "shorter"),
        (b"\xc0\x01\x00\x00" + struct.pack("!I", MAGIC_COOKIE) + bytes(12), "two bits"),
        (b"\x00\x01\x00\x04" + struct.pack("!I", MAGIC_COOKIE) + bytes(12), "length"),
        (
            b"\x00\x01\x00\x04" + struct.pack("!I", MAGIC_COOKIE) + bytes(12) + b"\x00\x06\x00\x08",
            "overruns",
        ),
        (
            b"\x00\x01\x00\x08"
            + struct.pack("!I", MAGIC_COOKIE)
            + bytes(12)
            + b"\x80\x28\x00\x02abcd",
            "FINGERPRINT",
        ),
        (bytes(1501), "larger"),
    ],
)
def test_malformed_messages_raise_stun_error(data: bytes, why: str) -> None:
    with pytest.raises(StunError, match=why):
        parse_message_untrusted(data)


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600))
def test_parser_never_raises_anything_but_stun_error(data: bytes) -> None:
    try:
        msg = parse_message_untrusted(data)
    except StunError:
        return
    # Whatever parses must also survive every accessor.
    for attr in (Attr.XOR_MAPPED_ADDRESS, Attr.MAPPED_ADDRESS):
        try:
            msg.xor_address(attr)
            msg.address(attr)
        except StunError:
            pass
    for getter in (msg.error, lambda: msg.text(Attr.USERNAME), lambda: msg.u32(Attr.PRIORITY)):
        with contextlib.suppress(StunError):
            getter()
    check_integrity(msg, b"k")
    check_fingerprint(msg)


@settings(max_examples=500, deadline=None)
@given(
    st.binary(min_size=20, max_size=20).map(
        lambda h: b"\x00\x01" + h[2:4] + struct.pack("!I", MAGIC_COOKIE) + h[8:20]
    ),
    st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=6),
)
def test_parser_survives_structured_garbage(header: bytes, attrs: list[tuple[int, bytes]]) -> None:
    # Plausible headers with random attributes reach deeper than random bytes do.
    body = b"".join(
        struct.pack("!HH", t, len(v)) + v + b"\0" * ((4 - len(v) % 4) % 4) for t, v in attrs
    )
    data = header[:2] + struct.pack("!H", len(body)) + header[4:20] + body
    try:
        msg = parse_message_untrusted(data)
        msg.xor_address()
        msg.error()
    except StunError:
        pass
