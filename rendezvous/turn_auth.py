"""TURN long-term credentials with stateless nonces (RFC 8656 §9.2, RFC 8489 §9.2), sans-IO.

Static users, or TURN REST API usernames "expiry:name" whose password is
base64(HMAC-SHA1(secret, username)), what coturn's `use-auth-secret` checks, so one secret
serves this relay and a coturn fleet alike. The nonce is a cookie over the client's address
(rendezvous/cookies.py): answering the challenge proves the client receives there, and the
server keeps nothing until it has.
"""

from __future__ import annotations

from collections import Counter

from rendezvous.cookies import CookieJar
from rendezvous.relay_policy import TurnPolicy
from voip.wire.stun import Address
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import check_integrity
from voip.wire.stun import encode
from voip.wire.stun import encode_error_code
from voip.wire.stun import long_term_key
from voip.wire.stun import text
from voip.wire.turn import rest_expiry
from voip.wire.turn import rest_password

NONCE_LIFETIME = 600  # s
# A nonce is 4 bytes of expiry and 5 of MAC, 12 characters of base64: a forged one only skips
# the challenge round trip (MESSAGE-INTEGRITY still decides), and with the 2-character realm
# the unauthenticated 401 is 52 bytes, so even coturn's turnutils_uclient's smallest Allocate
# (52 bytes) can be challenged without the answer being larger than the question.
NONCE_MAC_BYTES = 5


class TurnAuth:
    def __init__(self, policy: TurnPolicy, wall_offset: float, stats: Counter[str]):
        self.policy = policy
        self.wall_offset = wall_offset  # unix time = now + offset; REST usernames carry it
        self.stats = stats
        self.nonces = CookieJar(NONCE_LIFETIME, NONCE_MAC_BYTES)

    def password(self, username: str, now: float) -> str | None:
        if username in self.policy.users:
            return self.policy.users[username]
        if self.policy.secret is not None:
            expiry = rest_expiry(username)
            if expiry is None or expiry < now + self.wall_offset:
                self.stats["rest_expired" if expiry is not None else "rest_malformed"] += 1
                return None
            return rest_password(self.policy.secret, username)
        return None

    def challenge(self, msg: Message, data: bytes, src: Address, now: float, code: int) -> bytes:
        """A 401 or 438 with a fresh nonce, or b"" when it would be larger than the request."""
        reply = encode(
            msg.reply(
                Class.ERROR,
                [
                    (Attr.ERROR_CODE, encode_error_code(code, "")),  # no reason: bytes count
                    (Attr.REALM, text(self.policy.realm)),
                    (Attr.NONCE, text(self.nonces.make(src, now))),
                ],
            )
        )
        # Never answer a request we cannot authenticate with more bytes than it carried.
        if len(reply) > len(data):
            self.stats["challenge_withheld"] += 1
            return b""
        self.stats[f"challenge_{code}"] += 1
        return reply

    def authenticate(
        self, msg: Message, data: bytes, src: Address, now: float
    ) -> tuple[str, bytes] | bytes:
        """(username, key) for a request that proves both, else the challenge to answer."""
        username = msg.text(Attr.USERNAME)
        nonce = msg.text(Attr.NONCE)
        realm = msg.text(Attr.REALM)
        if msg.integrity_at is None or username is None or nonce is None or realm is None:
            return self.challenge(msg, data, src, now, 401)
        if not self.nonces.valid(nonce, src, now):
            return self.challenge(msg, data, src, now, 438)
        password = self.password(username, now) if realm == self.policy.realm else None
        key = long_term_key(username, realm, password) if password is not None else None
        if key is None or not check_integrity(msg, key):
            self.stats["bad_credentials"] += 1
            return self.challenge(msg, data, src, now, 401)
        return username, key
