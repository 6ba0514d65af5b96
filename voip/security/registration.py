"""Registration keys: X25519 agreement of a caller with its rendezvous (RFC 7748; HKDF, RFC 5869).

The caller's key pair is its long-term identity (voip/security/identity.py); it sends the public
half in REGISTER, and the server sends its own in the 401 that carries the cookie. Both derive
the same 32-byte key, and every later message between them carries MESSAGE-INTEGRITY-SHA256
(RFC 8489 §14.6) under it. Only the holder of the identity's private key can compute it, so the
MAC proves possession of the key that owns the name: nobody else can claim, refresh, move or
release it, and a PEER-READY or an answer forged by anyone off the path fails it. The server's
key is per process and unauthenticated, so someone on the path could stand in the middle of the
agreement, and the server itself could lie about a peer's key: the call's handshake, pinned in
known_peers and checked aloud with the SAS, is what settles who the peer is.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PUBLIC_KEY_BYTES = 32
KEY_BYTES = 32
INFO = b"callpeer rendezvous registration v1"


class BadPublicKey(ValueError):
    """A public key from the network that cannot be agreed with."""


class RegistrationKeyPair:
    """One side's X25519 key pair: the caller's identity key, the server's for its lifetime."""

    def __init__(self, private: X25519PrivateKey | None = None):
        self._private = private or X25519PrivateKey.generate()
        self.public = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def agree_untrusted(self, peer_public: bytes, *, we_are_client: bool) -> bytes:
        """The shared message-integrity key with the holder of `peer_public`, bound to both
        public keys in (caller, server) order. Raises BadPublicKey for a key of the wrong
        length or one that agrees on nothing."""
        if len(peer_public) != PUBLIC_KEY_BYTES:
            raise BadPublicKey("an X25519 public key is 32 bytes")
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # a low-order point: the shared secret would be all zeros
            raise BadPublicKey("that public key agrees on no secret") from exc
        pair = (self.public, peer_public) if we_are_client else (peer_public, self.public)
        hkdf = HKDF(
            algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=INFO + b"".join(pair)
        )
        return hkdf.derive(shared)
