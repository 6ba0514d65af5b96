"""A call's key exchange: Noise_XX_25519_ChaChaPoly_SHA256 (Noise Protocol Framework, rev 34).

CipherState, SymmetricState and the handshake state are written as the specification's §5
describes them, for the one pattern a call uses (§7.5):

    XX:
      -> e
      <- e, ee, s, es
      -> s, se

Both sides learn the other's static key (the caller's Identity) during the handshake, so
neither needs to know it beforehand; what a side does with it (pin it, show a SAS) is above
this module. Sans-IO: bytes in, bytes out.

One deliberate difference from a literal reading of the spec: reading a message is atomic.
It works on a copy of the state and keeps it only if the whole message checks out, so a forged
or damaged message leaves the handshake exactly where it was and the genuine one, arriving
later over UDP, can still be read.
"""

from __future__ import annotations

import copy

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
DHLEN = 32
HASHLEN = 32
TAGLEN = 16
MAX_MESSAGE_LEN = 65535  # §3: every Noise message, handshake or transport
MAX_NONCE = 2**64 - 1  # §5.1: reserved, never used to encrypt

# Each message's tokens, in order; the initiator writes messages 0 and 2.
PATTERN: tuple[tuple[str, ...], ...] = (("e",), ("e", "ee", "s", "es"), ("s", "se"))


class NoiseError(Exception):
    """A Noise message that cannot be accepted, or a use of the state out of its order."""


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _hash(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """§4.3 HKDF(ck, ikm, 2): exactly RFC 5869 HKDF with salt = ck and empty info."""
    out = HKDF(algorithm=hashes.SHA256(), length=2 * HASHLEN, salt=chaining_key, info=b"")
    okm = out.derive(ikm)
    return okm[:HASHLEN], okm[HASHLEN:]


def _dh(private: X25519PrivateKey, public: X25519PublicKey) -> bytes:
    try:
        return private.exchange(public)
    except ValueError as exc:  # a low-order point: every key would agree on all zeros
        raise NoiseError("a public key of low order agrees on no secret") from exc


def nonce_bytes(n: int) -> bytes:
    """§12.3 ChaChaPoly: 32 bits of zeros, then the counter as 64 bits little-endian."""
    return b"\x00" * 4 + n.to_bytes(8, "little")


class CipherState:
    """§5.1: a key (or none yet) and a nonce counter."""

    def __init__(self, k: bytes | None = None) -> None:
        self.k = k
        self.n = 0

    def has_key(self) -> bool:
        return self.k is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.k is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise NoiseError("nonces exhausted")
        out = ChaCha20Poly1305(self.k).encrypt(nonce_bytes(self.n), plaintext, ad)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.k is None:
            return ciphertext
        if self.n >= MAX_NONCE:
            raise NoiseError("nonces exhausted")
        try:
            out = ChaCha20Poly1305(self.k).decrypt(nonce_bytes(self.n), ciphertext, ad)
        except InvalidTag as exc:
            raise NoiseError("authentication failed") from exc
        self.n += 1  # only on success, as §5.1 says
        return out


class SymmetricState:
    """§5.2: the chaining key ck, the transcript hash h and the CipherState keyed from ck."""

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = _hash(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def copy(self) -> SymmetricState:
        twin = copy.copy(self)
        twin.cipher = copy.copy(self.cipher)
        return twin

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf2(self.ck, ikm)
        self.cipher = CipherState(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        return _hkdf2(self.ck, b"")


class NoiseXX:
    """§5.3 HandshakeState for the XX pattern, one side of one handshake."""

    def __init__(
        self,
        initiator: bool,
        static: X25519PrivateKey,
        prologue: bytes = b"",
        *,
        ephemeral: X25519PrivateKey | None = None,  # committed to ahead, or a test vector's
        empty_payloads: bool = False,
    ) -> None:
        """`empty_payloads`: refuse a message whose payload is not empty. A payload is free for
        whoever writes it, and each choice changes h; where h is shown to people (a SAS), that
        freedom would let a man in the middle search for two that match."""
        self.initiator = initiator
        self._empty_payloads = empty_payloads
        self._s = static
        # Made up front rather than at the `e` token (equivalent), so a received ephemeral can
        # be checked against it for low order as soon as it is read.
        self._e = ephemeral or X25519PrivateKey.generate()
        self._re: X25519PublicKey | None = None
        self._rs: X25519PublicKey | None = None
        self.remote_static: bytes | None = None
        self._ss = SymmetricState(PROTOCOL_NAME)
        self._ss.mix_hash(prologue)
        self._turn = 0  # index into PATTERN of the next message, written or read
        self._keys: tuple[bytes, bytes] | None = None

    @property
    def complete(self) -> bool:
        return self._keys is not None

    @property
    def handshake_hash(self) -> bytes:
        """h: final once complete; both sides' are equal then (channel binding, SAS)."""
        return self._ss.h

    def split(self) -> tuple[bytes, bytes]:
        """(initiator->responder key, responder->initiator key): each CipherState's k."""
        if self._keys is None:
            raise NoiseError("the handshake is not complete")
        return self._keys

    def _our_turn(self) -> bool:
        return (self._turn % 2 == 0) == self.initiator

    def write_message(self, payload: bytes = b"") -> bytes:
        if self.complete or not self._our_turn():
            raise NoiseError("not our turn to write a handshake message")
        ss = self._ss.copy()
        out = bytearray()
        for op in PATTERN[self._turn]:
            if op == "e":
                e_pub = _public_bytes(self._e)
                out += e_pub
                ss.mix_hash(e_pub)
            elif op == "s":
                out += ss.encrypt_and_hash(_public_bytes(self._s))
            else:
                ss.mix_key(self._pair_dh(op, self._re, self._rs))
        out += ss.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE_LEN:
            raise NoiseError(f"a Noise message is at most {MAX_MESSAGE_LEN} bytes")
        self._commit(ss, self._re, self._rs)
        return bytes(out)

    def read_message_untrusted(self, message: bytes) -> bytes:
        """The payload of the peer's next handshake message. NoiseError for anything wrong;
        the state is then unchanged."""
        if self.complete or self._our_turn():
            raise NoiseError("not expecting a handshake message from the peer now")
        if len(message) > MAX_MESSAGE_LEN:
            raise NoiseError(f"a Noise message is at most {MAX_MESSAGE_LEN} bytes")
        ss = self._ss.copy()
        re, rs = self._re, self._rs
        rest = bytes(message)
        for op in PATTERN[self._turn]:
            if op == "e":
                raw, rest = _take(rest, DHLEN)
                re = self._public_untrusted(raw)
                ss.mix_hash(raw)
            elif op == "s":
                raw, rest = _take(rest, DHLEN + (TAGLEN if ss.cipher.has_key() else 0))
                rs = self._public_untrusted(ss.decrypt_and_hash(raw))
            else:
                ss.mix_key(self._pair_dh(op, re, rs))
        if ss.cipher.has_key() and len(rest) < TAGLEN:
            raise NoiseError("handshake message too short")
        payload = ss.decrypt_and_hash(rest)
        if payload and self._empty_payloads:
            raise NoiseError("a payload where none may be")
        self._commit(ss, re, rs)
        return payload

    def _pair_dh(self, op: str, re: X25519PublicKey | None, rs: X25519PublicKey | None) -> bytes:
        """ee, es, se: the first letter is the initiator's key, the second the responder's."""
        ours, theirs = (0, 1) if self.initiator else (1, 0)
        local = self._e if op[ours] == "e" else self._s
        remote = re if op[theirs] == "e" else rs
        assert remote is not None  # XX always carries a key before a DH uses it
        return _dh(local, remote)

    def _public_untrusted(self, raw: bytes) -> X25519PublicKey:
        if len(raw) != DHLEN:  # cannot happen after _take, but never trust a length
            raise NoiseError("an X25519 public key is 32 bytes")
        try:
            key = X25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise NoiseError("not an X25519 public key") from exc
        # Clamped scalars are multiples of the cofactor, so any one of ours maps a point of low
        # order (and only such a point) to all zeros: check now, not at a later DH.
        _dh(self._e, key)
        return key

    def _commit(
        self, ss: SymmetricState, re: X25519PublicKey | None, rs: X25519PublicKey | None
    ) -> None:
        self._ss, self._re, self._rs = ss, re, rs
        if rs is not None and self.remote_static is None:
            self.remote_static = rs.public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        self._turn += 1
        if self._turn == len(PATTERN):
            self._keys = ss.split()


def _take(data: bytes, n: int) -> tuple[bytes, bytes]:
    if len(data) < n:
        raise NoiseError("handshake message too short")
    return data[:n], data[n:]
