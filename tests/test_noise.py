"""Noise XX: the cacophony test vector byte for byte, interop with noiseprotocol, hostile input."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from noise.connection import Keypair  # type: ignore[import-untyped]
from noise.connection import NoiseConnection

from voip.security.identity import Identity
from voip.security.noise import MAX_MESSAGE_LEN
from voip.security.noise import MAX_NONCE
from voip.security.noise import CipherState
from voip.security.noise import NoiseError
from voip.security.noise import NoiseXX
from voip.security.noise import nonce_bytes

# The Noise_XX_25519_ChaChaPoly_SHA256 vector of cacophony, the Haskell Noise implementation
# (github.com/haskell-cryptography/cacophony, vectors/cacophony.txt; snow carries the same file
# as tests/vectors/cacophony.txt). Messages 0..2 are the handshake; 3..5 transport messages,
# alternating from the responder.
PROLOGUE = bytes.fromhex("4a6f686e2047616c74")  # "John Galt"
INIT_STATIC = "e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1"
INIT_EPHEMERAL = "893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a"
RESP_STATIC = "4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893"
RESP_EPHEMERAL = "bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b"
HANDSHAKE_HASH = "c8e5f64e846193be2a834104c2a009868d6c9f3bd3c186299888b488b2f1f58e"
MESSAGES = [  # (payload, ciphertext)
    (
        "4c756477696720766f6e204d69736573",
        "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c7944"
        "4c756477696720766f6e204d69736573",
    ),
    (
        "4d757272617920526f746862617264",
        "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f14480884381cbad1f276e038c"
        "48378ffce2b65285e08d6b68aaa3629a5a8639392490e5b9bd5269c2f1e4f488ed8831161f19b781"
        "5528f8982ffe09be9b5c412f8a0db50f8814c7194e83f23dbd8d162c9326ad",
    ),
    (
        "462e20412e20486179656b",
        "c7195ffacac1307ff99046f219750fc47693e23c3cb08b89c2af808b444850a80ae475b9df0f169a"
        "e80a89be0865b57f58c9fea0d4ec82a286427402f113e4b6ae769a1d95941d49b25030",
    ),
    ("4361726c204d656e676572", "96763ed773f8e47bb3712f0e29b3060ffc956ffc146cee53d5e1df"),
    (
        "4a65616e2d426170746973746520536179",
        "3e40f15f6f3a46ae446b253bf8b1d9ffb6ed9b174d272328ff91a7e2e5c79c07f5",
    ),
    (
        "457567656e2042f6686d20766f6e2042617765726b",
        "eb3f3515110702e047a6c9da4478b6ead94873c11c0f2d710ddb3f09fce024b3a58502ae3f",
    ),
]

# Points of low order on Curve25519 (and non-canonical encodings of them), as libsodium lists.
LOW_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]

NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"


def key(hex_key: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(hex_key))


def vector_pair() -> tuple[NoiseXX, NoiseXX]:
    initiator = NoiseXX(True, key(INIT_STATIC), PROLOGUE, ephemeral=key(INIT_EPHEMERAL))
    responder = NoiseXX(False, key(RESP_STATIC), PROLOGUE, ephemeral=key(RESP_EPHEMERAL))
    return initiator, responder


def handshake(
    initiator: NoiseXX, responder: NoiseXX, payloads: tuple[bytes, ...] = (b"", b"", b"")
) -> list[bytes]:
    sent = []
    for n, payload in enumerate(payloads):
        writer, reader = (initiator, responder) if n % 2 == 0 else (responder, initiator)
        message = writer.write_message(payload)
        assert reader.read_message_untrusted(message) == payload
        sent.append(message)
    return sent


def test_cacophony_vector_byte_for_byte() -> None:
    initiator, responder = vector_pair()
    payloads = tuple(bytes.fromhex(p) for p, _ in MESSAGES[:3])
    sent = handshake(initiator, responder, payloads)
    assert [m.hex() for m in sent] == [c for _, c in MESSAGES[:3]]
    assert initiator.complete and responder.complete
    assert initiator.handshake_hash.hex() == HANDSHAKE_HASH
    assert responder.handshake_hash.hex() == HANDSHAKE_HASH
    assert initiator.remote_static == Identity.from_private_bytes(bytes.fromhex(RESP_STATIC)).public
    assert responder.remote_static == Identity.from_private_bytes(bytes.fromhex(INIT_STATIC)).public
    # The transport messages, with the raw keys of Split(): each direction counts from zero.
    i_to_r, r_to_i = initiator.split()
    assert responder.split() == (i_to_r, r_to_i)
    counters = {i_to_r: 0, r_to_i: 0}
    for n, (payload, ciphertext) in enumerate(MESSAGES[3:]):
        k = r_to_i if n % 2 == 0 else i_to_r
        sealed = ChaCha20Poly1305(k).encrypt(nonce_bytes(counters[k]), bytes.fromhex(payload), b"")
        assert sealed.hex() == ciphertext
        counters[k] += 1


def theirs(initiator: bool, static: bytes, ephemeral: bytes, prologue: bytes) -> NoiseConnection:
    conn = NoiseConnection.from_name(NAME)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_prologue(prologue)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, static)
    conn.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral)
    conn.start_handshake()
    return conn


@pytest.mark.filterwarnings("ignore:One of ephemeral keypairs:UserWarning")  # fixed on purpose
@pytest.mark.parametrize("we_initiate", [True, False])
def test_interop_with_noiseprotocol(we_initiate: bool) -> None:
    prologue = b"callpeer media v1 interop"
    keys = {role: Identity.generate().private_bytes for role in ("s", "e", "twin_s", "twin_e")}
    ours = NoiseXX(
        we_initiate,
        X25519PrivateKey.from_private_bytes(keys["s"]),
        prologue,
        ephemeral=X25519PrivateKey.from_private_bytes(keys["e"]),
    )
    peer = theirs(not we_initiate, keys["twin_s"], keys["twin_e"], prologue)
    # noiseprotocol in our place, with our keys: what we write must be what it writes.
    twin = theirs(we_initiate, keys["s"], keys["e"], prologue)
    for n, payload in enumerate([b"one", b"two", b"three"]):
        if (n % 2 == 0) == we_initiate:
            message = ours.write_message(payload)
            assert message == bytes(twin.write_message(payload))
            assert bytes(peer.read_message(message)) == payload
        else:
            message = bytes(peer.write_message(payload))
            assert ours.read_message_untrusted(message) == payload
            assert bytes(twin.read_message(message)) == payload
    assert ours.complete and peer.handshake_finished
    assert ours.handshake_hash == peer.get_handshake_hash() == twin.get_handshake_hash()
    assert ours.remote_static == Identity.from_private_bytes(keys["twin_s"]).public
    i_to_r, r_to_i = ours.split()
    send_key, receive_key = (i_to_r, r_to_i) if we_initiate else (r_to_i, i_to_r)
    for counter in range(3):
        text = b"transport %d" % counter
        assert (
            ChaCha20Poly1305(receive_key).decrypt(nonce_bytes(counter), peer.encrypt(text), b"")
            == text
        )
        sealed = ChaCha20Poly1305(send_key).encrypt(nonce_bytes(counter), text, b"")
        assert peer.decrypt(sealed) == text


def fresh_pair() -> tuple[NoiseXX, NoiseXX]:
    return (
        NoiseXX(True, X25519PrivateKey.generate(), b"p"),
        NoiseXX(False, X25519PrivateKey.generate(), b"p"),
    )


def variants(message: bytes) -> list[bytes]:
    """Every hostile version of a message: each truncation, each byte flipped, extended."""
    out = [message[:n] for n in range(len(message))]
    out += [
        message[:i] + bytes([message[i] ^ 0x01]) + message[i + 1 :] for i in range(len(message))
    ]
    out += [
        message[:i] + bytes([message[i] ^ 0x80]) + message[i + 1 :] for i in range(len(message))
    ]
    out += [message + b"\x00", message + bytes(16), message * 2]
    return out


@pytest.mark.parametrize("which", [1, 2])
def test_hostile_versions_of_msg2_and_msg3_rejected_and_harmless(which: int) -> None:
    initiator, responder = fresh_pair()
    responder.read_message_untrusted(initiator.write_message(b"x"))
    msg2 = responder.write_message(b"y")
    if which == 1:
        reader, genuine = initiator, msg2
    else:
        initiator.read_message_untrusted(msg2)
        reader, genuine = responder, initiator.write_message(b"z")
    for bad in variants(genuine):
        with pytest.raises(NoiseError):
            reader.read_message_untrusted(bad)
    # A failed read leaves the state as it was: the genuine message still goes through.
    assert reader.read_message_untrusted(genuine) == (b"y" if which == 1 else b"z")


def test_hostile_msg1_is_caught_by_the_initiator() -> None:
    """msg1 is a bare ephemeral key, authenticated by nothing: a changed one is read, and the
    msg2 built on it fails at the initiator, whose transcript differs."""
    initiator, _ = fresh_pair()
    msg1 = initiator.write_message()
    for n in range(len(msg1)):
        with pytest.raises(NoiseError):
            fresh_pair()[1].read_message_untrusted(msg1[:n])
    for i in range(len(msg1)):
        responder = NoiseXX(False, X25519PrivateKey.generate(), b"p")
        try:
            responder.read_message_untrusted(msg1[:i] + bytes([msg1[i] ^ 0x01]) + msg1[i + 1 :])
        except NoiseError:
            continue  # it landed on a point of low order
        with pytest.raises(NoiseError):
            initiator.read_message_untrusted(responder.write_message())
    assert not initiator.complete


def test_replayed_out_of_turn_and_late_messages() -> None:
    initiator, responder = fresh_pair()
    with pytest.raises(NoiseError):
        initiator.read_message_untrusted(bytes(32))  # the initiator speaks first
    msg1 = initiator.write_message()
    with pytest.raises(NoiseError):
        initiator.write_message()  # twice in a row
    responder.read_message_untrusted(msg1)
    with pytest.raises(NoiseError):
        responder.read_message_untrusted(msg1)  # replayed
    msg2 = responder.write_message()
    initiator.read_message_untrusted(msg2)
    with pytest.raises(NoiseError):
        initiator.read_message_untrusted(msg2)
    with pytest.raises(NoiseError):
        initiator.split()  # not complete yet
    msg3 = initiator.write_message()
    responder.read_message_untrusted(msg3)
    for side, message in ((responder, msg3), (responder, msg1), (initiator, msg2)):
        with pytest.raises(NoiseError):
            side.read_message_untrusted(message)  # after completion
    with pytest.raises(NoiseError):
        initiator.write_message()
    assert initiator.split() == responder.split()
    assert initiator.handshake_hash == responder.handshake_hash


@pytest.mark.parametrize("point", LOW_ORDER)
def test_low_order_ephemeral_rejected(point: str) -> None:
    _, responder = fresh_pair()
    with pytest.raises(NoiseError):
        responder.read_message_untrusted(bytes.fromhex(point))
    initiator, _ = fresh_pair()
    initiator.write_message()
    with pytest.raises(NoiseError):
        initiator.read_message_untrusted(bytes.fromhex(point) + bytes(64))


def test_prologue_mismatch_fails() -> None:
    initiator = NoiseXX(True, X25519PrivateKey.generate(), b"callpeer media v1 one")
    responder = NoiseXX(False, X25519PrivateKey.generate(), b"callpeer media v1 two")
    responder.read_message_untrusted(initiator.write_message())
    with pytest.raises(NoiseError):
        initiator.read_message_untrusted(responder.write_message())


def test_max_message_size() -> None:
    initiator, responder = fresh_pair()
    with pytest.raises(NoiseError):
        initiator.write_message(bytes(MAX_MESSAGE_LEN - 32 + 1))
    biggest = initiator.write_message(bytes(MAX_MESSAGE_LEN - 32))
    assert len(biggest) == MAX_MESSAGE_LEN
    with pytest.raises(NoiseError):
        responder.read_message_untrusted(biggest + b"\x00")
    assert responder.read_message_untrusted(biggest) == bytes(MAX_MESSAGE_LEN - 32)


def test_nonce_exhaustion() -> None:
    cipher = CipherState(bytes(32))
    cipher.n = MAX_NONCE
    with pytest.raises(NoiseError):
        cipher.encrypt_with_ad(b"", b"x")
    with pytest.raises(NoiseError):
        cipher.decrypt_with_ad(b"", bytes(17))


@settings(max_examples=300, deadline=None)
@given(stage=st.integers(0, 2), data=st.binary(max_size=200))
def test_read_arbitrary_bytes_raises_only_noise_error(stage: int, data: bytes) -> None:
    initiator, responder = fresh_pair()
    reader = responder
    if stage >= 1:
        responder.read_message_untrusted(initiator.write_message())
        reader = initiator
    if stage == 2:
        initiator.read_message_untrusted(responder.write_message())
        initiator.write_message()
        reader = responder
    try:
        payload = reader.read_message_untrusted(data)
    except NoiseError:
        return
    # Only msg1, unauthenticated, can be accepted from bytes made up at random.
    assert stage == 0 and payload == data[32:]
