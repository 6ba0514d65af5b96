"""SRTP/SRTCP AEAD_AES_128_GCM through libsrtp: what the peer reads, and what it refuses."""

from __future__ import annotations

import secrets

import pytest

from voip.security.srtp import KEY_MATERIAL_BYTES
from voip.security.srtp import MediaCipher
from voip.wire.rtcp import ReceiverReport
from voip.wire.rtcp import pack_compound
from voip.wire.rtp import RtpPacket
from voip.wire.rtp import parse_rtp_untrusted


def pair() -> tuple[MediaCipher, MediaCipher]:
    a_to_b, b_to_a = secrets.token_bytes(28), secrets.token_bytes(28)
    return MediaCipher(a_to_b, b_to_a), MediaCipher(b_to_a, a_to_b)


def seal(cipher: MediaCipher, packet: bytes) -> bytes:
    sealed = cipher.protect(packet)
    assert sealed is not None
    return sealed


def rtp(seq: int, payload: bytes = b"opus frame bytes") -> bytes:
    return bytes(RtpPacket(111, seq, 960 * seq, 0x1234ABCD, payload))


def test_round_trip_hides_the_payload_and_keeps_the_header() -> None:
    alice, bob = pair()
    plain = rtp(7, b"\x55" * 80)
    sealed = seal(alice, plain)
    assert sealed[:12] == plain[:12]  # the header is authenticated, not hidden
    assert b"\x55" * 16 not in sealed
    assert len(sealed) == len(plain) + 16  # the GCM tag (RFC 7714 §6)
    assert bob.unprotect_untrusted(sealed) == plain
    assert parse_rtp_untrusted(bob.unprotect_untrusted(seal(alice, rtp(8))) or b"").sequence == 8


def test_forged_tampered_and_replayed_packets_are_dropped_and_counted() -> None:
    alice, bob = pair()
    sealed = seal(alice, rtp(1))
    assert bob.unprotect_untrusted(sealed) is not None
    assert bob.unprotect_untrusted(sealed) is None  # replayed
    later = bytearray(seal(alice, rtp(2)))
    later[-1] ^= 1
    assert bob.unprotect_untrusted(bytes(later)) is None  # tag broken
    forged = seal(MediaCipher(secrets.token_bytes(28), secrets.token_bytes(28)), rtp(3))
    assert bob.unprotect_untrusted(forged) is None  # someone without the key
    assert bob.unprotect_untrusted(rtp(4)) is None  # plain RTP
    assert bob.unprotect_untrusted(b"\x80") is None  # garbage
    assert bob.rejected == 5


def test_rtcp_is_srtcp() -> None:
    alice, bob = pair()
    report = pack_compound([ReceiverReport(ssrc=0x1234ABCD, reports=())])
    sealed = seal(alice, report)
    assert sealed != report and len(sealed) > len(report)
    assert bob.unprotect_untrusted(sealed) == report
    assert bob.unprotect_untrusted(sealed) is None  # replayed


def test_key_material_has_its_size() -> None:
    with pytest.raises(ValueError, match="28 bytes"):
        MediaCipher(b"short", secrets.token_bytes(KEY_MATERIAL_BYTES))


def test_a_packet_index_is_never_protected_twice() -> None:
    """GCM under one key must never see one nonce twice: libsrtp refuses, and we count it."""
    alice, _ = pair()
    assert alice.protect(rtp(9)) is not None
    assert alice.protect(rtp(9)) is None and alice.unsent == 1
