"""What a call's security came to: cipher, the peer's key and how it was checked, the SAS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SecurityReport:
    """How the call's media was protected, and how the peer's key was checked."""

    cipher: str  # "AES-128-GCM": SRTP and SRTCP with AEAD_AES_128_GCM (RFC 7714)
    peer_fingerprint: str  # the key the peer proved in the handshake
    verified: bool  # it is the key known_peers already held for the peer
    sas: str  # the short authentication string both sides show
    trust: str  # "verified", "first" (trusted now for the first time), "accepted" (a new key)
    packets_rejected: int = 0  # SRTP/SRTCP that failed authentication or was replayed
    handshake_ms: float | None = None  # from our first handshake message (or the peer's) to keys

    def to_dict(self) -> dict[str, Any]:
        return {
            "cipher": self.cipher,
            "peer_fingerprint": self.peer_fingerprint,
            "verified": self.verified,
            "sas": self.sas,
            "trust": self.trust,
            "packets_rejected": self.packets_rejected,
            "handshake_ms": None if self.handshake_ms is None else round(self.handshake_ms, 1),
        }
