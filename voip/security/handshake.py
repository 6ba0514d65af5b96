"""Media key agreement: Noise XX on the call's socket (RFC 7983 demux) to SRTP keys and a SAS.

Each datagram is framed so that RFC 7983 demultiplexing tells it from STUN, DTLS and RTP on the
same socket: byte 0 is 16, in the range 16..19 RFC 7983 gives ZRTP (another media key
agreement); byte 1 the message number 1, 2 or 3; bytes 2..3 reserved, zero; then the Noise
message (voip/security/noise.py). The initiator is the ICE controlled side (see
voip/security/secure_media.py for why).

UDP loses and repeats datagrams, so each side resends its last message until the next one
arrives (RETRANSMIT_FIRST, doubling, at most RETRANSMIT_MAX apart), and answers an exact repeat
of the peer's message with its cached reply; msg3, which nothing answers, is resent when msg2
is. Datagrams that are not a genuine next message are counted in `rejected` and dropped; a
Noise read that fails leaves the state as it was, so a forgery cannot wedge the handshake.

A SAS of 40 bits stops a man in the middle only if he cannot try many handshakes for one whose
two SASes match. So payloads must be empty (nothing free to vary), the static keys are the ones
the rendezvous introduced (voip/security/peer_verifier.py), and each side's ephemeral is
committed to before the other side shows its own: its hash went out with the ICE credentials in
REGISTER, reached the peer in PEER-READY, and a message whose `e` does not match is dropped
unread, as ZRTP's hash commitment does (RFC 6189 §4.4.1.1). This also means a stranger's msg1
costs the responder a hash, not a key exchange, and gets no answer.

The result gives SRTP AEAD_AES_128_GCM keying material for each direction (RFC 7714: 16-byte
master key and 12-byte master salt) and a short authentication string both people can compare
aloud, as ZRTP does (RFC 6189 §7): equal strings mean no one stands in the middle.
Sans-IO: bytes and time in, datagrams and a result out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from voip.security.noise import NoiseError
from voip.security.noise import NoiseXX
from voip.wire.sans_io import earliest

FRAME_TYPE = 16  # RFC 7983 §7: first byte 16..19, the range ZRTP has
FRAME_RANGE = range(16, 20)
HEADER_BYTES = 4
RETRANSMIT_FIRST = 0.25
RETRANSMIT_MAX = 1.0
GIVE_UP_AFTER = 10.0
MAX_RESPONDER_SESSIONS = 4  # distinct msg1s answered at once: see _Responder

SRTP_INFO = b"callpeer srtp aes128gcm v1"
SRTP_KEYING_BYTES = 28  # RFC 7714 AEAD_AES_128_GCM: 16-byte master key + 12-byte master salt
SAS_INFO = b"callpeer sas v1"
COMMIT_INFO = b"callpeer handshake ephemeral v1"
DHLEN = 32
NEVER_ANSWERED = "the peer never answered the key exchange"
# We answered the peer's first message, and its last never came: the peer stopped there, which
# is what a peer that refused our key does (it says nothing unauthenticated about why).
NEVER_FINISHED = (
    "the peer never finished the key exchange: its callpeer may have refused our key (a key it "
    "had pinned for us that is not ours: ask them to check known_peers against your "
    "`callpeer whoami`)"
)


def is_handshake(data: bytes) -> bool:
    """RFC 7983: is this datagram ours, rather than STUN (0..3), DTLS (20..63) or RTP/RTCP?"""
    return len(data) > 0 and data[0] in FRAME_RANGE


def commitment(ephemeral: X25519PrivateKey) -> bytes:
    """What a caller sends ahead of its handshake: SHA-256 over a label and the public key."""
    public = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(COMMIT_INFO + public).digest()


def _keeps_commitment(message: bytes, commit: bytes | None) -> bool:
    """Does the `e` that opens this Noise message (msg1 and msg2 both start with it) match?"""
    if commit is None:
        return True
    if len(message) < DHLEN:
        return False
    return hmac.compare_digest(hashlib.sha256(COMMIT_INFO + message[:DHLEN]).digest(), commit)


def frame(number: int, noise_message: bytes) -> bytes:
    return bytes((FRAME_TYPE, number, 0, 0)) + noise_message


def unframe_untrusted(data: bytes) -> tuple[int, bytes] | None:
    """(message number, Noise message), or None if this is no handshake datagram of ours."""
    if len(data) < HEADER_BYTES or data[0] != FRAME_TYPE or data[2:4] != b"\x00\x00":
        return None
    if data[1] not in (1, 2, 3):
        return None
    return data[1], bytes(data[HEADER_BYTES:])


@dataclass(frozen=True)
class HandshakeResult:
    remote_static: bytes  # the peer's X25519 public key: its identity
    handshake_hash: bytes  # Noise's h: binds everything both sides saw
    local_srtp: bytes  # what we protect our packets with (master key + master salt)
    remote_srtp: bytes  # what we unprotect the peer's packets with
    sas: str  # e.g. "ABCD-EFGH": compared aloud by the two people


def _hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


def short_authentication_string(handshake_hash: bytes) -> str:
    """40 bits as 8 characters of RFC 4648 base32, "ABCD-EFGH": enough that a man in the middle
    who cannot choose both sides' hashes is caught with all but a 2**-40 chance."""
    text = base64.b32encode(_hkdf(handshake_hash, SAS_INFO, 5)).decode("ascii")
    return text[:4] + "-" + text[4:]


def derive_result(noise: NoiseXX) -> HandshakeResult:
    """The keys and SAS of a complete handshake, seen from `noise`'s side."""
    i_to_r, r_to_i = noise.split()
    srtp_i = _hkdf(i_to_r, SRTP_INFO, SRTP_KEYING_BYTES)  # what the initiator sends with
    srtp_r = _hkdf(r_to_i, SRTP_INFO, SRTP_KEYING_BYTES)
    local, remote = (srtp_i, srtp_r) if noise.initiator else (srtp_r, srtp_i)
    assert noise.remote_static is not None  # a complete XX handshake always has it
    return HandshakeResult(
        remote_static=noise.remote_static,
        handshake_hash=noise.handshake_hash,
        local_srtp=local,
        remote_srtp=remote,
        sas=short_authentication_string(noise.handshake_hash),
    )


@dataclass
class _Session:
    """The responder's side of one msg1: its Noise state and the msg2 that answered it."""

    msg1: bytes
    msg2: bytes
    noise: NoiseXX


class MediaHandshake:
    """One side of a call's key agreement. Feed it the peer's handshake datagrams
    (`is_handshake`) and the time; send what it returns; read `result` or `failure`."""

    def __init__(
        self,
        initiator: bool,
        static: X25519PrivateKey,
        prologue: bytes,
        verify: Callable[[bytes], str | None],
        *,
        give_up_after: float = GIVE_UP_AFTER,
        ephemeral: X25519PrivateKey | None = None,
        peer_commitment: bytes | None = None,
    ) -> None:
        """`ephemeral`: ours, whose `commitment` the peer holds (None: a fresh one);
        `peer_commitment`: the peer's, from PEER-READY (None: any ephemeral is taken, as
        nothing then holds the peer to one)."""
        self.initiator = initiator
        self._ephemeral = ephemeral
        self._peer_commitment = peer_commitment
        self._static = static
        self._prologue = prologue
        self._verify = verify
        self._give_up_after = give_up_after
        self.result: HandshakeResult | None = None
        self.failure: str | None = None
        self.rejected = 0
        self.started_at: float | None = None
        self.completed_at: float | None = None
        self._give_up_at: float | None = None
        self._resend_at: float | None = None
        self._interval = RETRANSMIT_FIRST
        # Initiator: one Noise state, msg1, then msg2 and msg3 once answered.
        self._noise = self._new_noise() if initiator else None
        self._msg1 = b""
        self._msg2 = b""
        self._msg3 = b""
        # Responder: a session per distinct msg1. msg1 carries nothing authenticated, so the
        # first one to arrive may be forged; answering each (a few at most) keeps a forgery
        # that arrives first from shutting the genuine initiator out. msg3 picks the real one.
        self._sessions: list[_Session] = []

    def _new_noise(self) -> NoiseXX:
        return NoiseXX(
            self.initiator,
            self._static,
            self._prologue,
            ephemeral=self._ephemeral,
            empty_payloads=True,
        )

    @property
    def done(self) -> bool:
        return self.result is not None or self.failure is not None

    def start(self, now: float) -> list[bytes]:
        self.started_at = now
        self._give_up_at = now + self._give_up_after
        if self._noise is None:
            return []
        self._msg1 = frame(1, self._noise.write_message())
        self._arm(now)
        return [self._msg1]

    def next_deadline(self) -> float | None:
        if self.done:
            return None
        return earliest(self._resend_at, self._give_up_at)

    def poll(self, now: float) -> list[bytes]:
        if self.done:
            return []
        if self._give_up_at is not None and now >= self._give_up_at:
            answered = not self.initiator and bool(self._sessions)
            self._fail(NEVER_FINISHED if answered else NEVER_ANSWERED)
            return []
        if self._resend_at is None or now < self._resend_at:
            return []
        self._interval = min(self._interval * 2, RETRANSMIT_MAX)
        self._resend_at = now + self._interval
        if self.initiator:
            return [self._msg1]
        return [s.msg2 for s in reversed(self._sessions)]  # the newest first

    def handle_untrusted(self, data: bytes, now: float) -> list[bytes]:
        """Datagrams to send in answer to `data`, one the peer sent us. Never raises."""
        framed = unframe_untrusted(data)
        if framed is None:
            self.rejected += 1
            return []
        if self.failure is not None:
            return []
        number, message = framed
        if self.initiator:
            return self._initiator_reads(number, bytes(data), message, now)
        return self._responder_reads(number, bytes(data), message, now)

    def _initiator_reads(self, number: int, data: bytes, message: bytes, now: float) -> list[bytes]:
        if number == 2 and self._msg2 and data == self._msg2:
            return [self._msg3]  # our msg3 was lost: the responder is still resending msg2
        noise = self._noise
        if number != 2 or self._msg2 or noise is None:
            self.rejected += 1
            return []
        if not _keeps_commitment(message, self._peer_commitment):
            self.rejected += 1  # not the ephemeral the responder committed to
            return []
        try:
            noise.read_message_untrusted(message)
        except NoiseError:
            self.rejected += 1  # the state is unchanged: the genuine msg2 can still come
            return []
        assert noise.remote_static is not None  # msg2 carries the responder's static key
        reason = self._verify(noise.remote_static)
        if reason is not None:
            self._fail(reason)  # before msg3, which would prove who we are to a refused peer
            return []
        self._msg2 = data
        self._msg3 = frame(3, noise.write_message())
        self._complete(noise, now)
        return [self._msg3]

    def _responder_reads(self, number: int, data: bytes, message: bytes, now: float) -> list[bytes]:
        if number == 1:
            return self._answer_msg1(data, message, now)
        if number != 3 or self.result is not None:
            # A repeat of the genuine msg3 after completion is harmless; anything else is not.
            if number != 3 or not self._is_repeat_msg3(data):
                self.rejected += 1
            return []
        for session in self._sessions:
            try:
                session.noise.read_message_untrusted(message)
            except NoiseError:
                continue  # not this session's msg3; its state is unchanged
            assert session.noise.remote_static is not None  # msg3 carries the initiator's key
            reason = self._verify(session.noise.remote_static)
            if reason is not None:
                self._fail(reason)
                return []
            self._msg3 = data
            self._complete(session.noise, now)
            return []
        self.rejected += 1
        return []

    def _answer_msg1(self, data: bytes, message: bytes, now: float) -> list[bytes]:
        for session in self._sessions:
            if session.msg1 == data:  # our msg2 was lost: the initiator is resending msg1
                return [] if self.result is not None else [session.msg2]
        if self.result is not None or not _keeps_commitment(message, self._peer_commitment):
            self.rejected += 1
            return []
        noise = self._new_noise()
        try:
            noise.read_message_untrusted(message)
            msg2 = frame(2, noise.write_message())
        except NoiseError:
            self.rejected += 1
            return []
        if len(self._sessions) == MAX_RESPONDER_SESSIONS:
            # Drop the oldest: a genuine initiator resends msg1 until it has msg2, so it is
            # never shut out unless a flood outpaces its msg3 round trip.
            self._sessions.pop(0)
        self._sessions.append(_Session(data, msg2, noise))
        if self._resend_at is None:
            self._arm(now)
        return [msg2]

    def _is_repeat_msg3(self, data: bytes) -> bool:
        return bool(self._msg3) and data == self._msg3

    def _arm(self, now: float) -> None:
        self._interval = RETRANSMIT_FIRST
        self._resend_at = now + self._interval

    def _complete(self, noise: NoiseXX, now: float) -> None:
        self.result = derive_result(noise)
        self.completed_at = now
        self._resend_at = None
        self._sessions = [s for s in self._sessions if s.noise is noise]

    def _fail(self, reason: str) -> None:
        self.failure = reason
        self._resend_at = None
        self._sessions = []
