"""Stateless cookies: proof that a client receives at the address it sends from (sans-IO).

Before a server keeps anything for a source address, introduces it or sends it anything larger
than what it sent, the source must show that it can read what is sent there: the server answers
its first request with a short cookie, a MAC over the source address and an expiry under a key
only the server knows, and honours the request when it comes back with the cookie. Nothing is
stored per source, so a spoofed flood costs the server no memory (TURN's stateless NONCE,
RFC 8656 §9.2; QUIC's Retry token, RFC 9000 §8.1, play the same part).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct

from voip.wire.stun import Address


class CookieJar:
    """Makes and checks cookies for one server process; restarting it invalidates them all,
    which costs each client one more round trip."""

    def __init__(self, lifetime: float, mac_bytes: int = 8, key: bytes | None = None):
        self.lifetime = lifetime
        self.mac_bytes = mac_bytes
        self._key = key if key is not None else secrets.token_bytes(32)

    def _mac(self, src: Address, expiry: bytes) -> bytes:
        msg = f"{src[0]}|{src[1]}|".encode() + expiry
        return hmac.new(self._key, msg, hashlib.sha256).digest()[: self.mac_bytes]

    def make(self, src: Address, now: float) -> str:
        """A cookie for `src`, valid for `lifetime` seconds from `now` (the server's clock)."""
        expiry = struct.pack("!I", int(now + self.lifetime) & 0xFFFFFFFF)
        return base64.urlsafe_b64encode(expiry + self._mac(src, expiry)).decode()

    @staticmethod
    def expiry(cookie: str) -> float:
        """When a cookie `valid` accepted stops being valid, on the server's clock."""
        return float(struct.unpack("!I", base64.urlsafe_b64decode(cookie.encode("ascii"))[:4])[0])

    def valid(self, cookie: str | None, src: Address, now: float) -> bool:
        if cookie is None:
            return False
        try:
            raw = base64.urlsafe_b64decode(cookie.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return False
        if len(raw) != 4 + self.mac_bytes:
            return False
        expiry, mac = raw[:4], raw[4:]
        return struct.unpack("!I", expiry)[0] > now and hmac.compare_digest(
            mac, self._mac(src, expiry)
        )
