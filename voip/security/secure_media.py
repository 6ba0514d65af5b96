"""A call's end-to-end media protection, sans-IO: the key exchange, then SRTP both ways.

The ICE controlled side starts a Noise XX handshake on the chosen path (voip/security/
handshake.py), authenticated by both long-term identity keys; the `PeerVerifier` decides
whether to go on with the key the peer proves. From the result come the SRTP keys
(voip/security/srtp.py) and the SAS. Until then no media is sent, and media that arrives is
dropped: nothing is ever sent or played in the clear.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from voip.events import Secured
from voip.security.handshake import HandshakeResult
from voip.security.handshake import MediaHandshake
from voip.security.identity import Identity
from voip.security.identity import fingerprint
from voip.security.known_peers import KnownPeers
from voip.security.peer_verifier import PeerVerifier
from voip.security.srtp import CIPHER
from voip.security.srtp import MediaCipher
from voip.security.summary import SecurityReport
from voip.wire.signal import PeerReady

PROLOGUE = b"callpeer media v1"


def prologue(initiator: str, responder: str) -> bytes:
    """Both names go into the handshake hash: a handshake relayed from another call fails."""
    return b"\0".join((PROLOGUE, initiator.encode(), responder.encode()))


class SecureMedia:
    def __init__(
        self,
        identity: Identity,
        initiator: bool,
        names: tuple[str, str],
        verifier: PeerVerifier,
        *,
        ephemeral: X25519PrivateKey | None = None,
        peer_commitment: bytes | None = None,
    ):
        """`names`: (initiator's, responder's); `ephemeral` ours, committed to in REGISTER;
        `peer_commitment` the peer's, from PEER-READY."""
        self.verifier = verifier
        self.handshake = MediaHandshake(
            initiator,
            identity.private,
            prologue(*names),
            verifier,
            ephemeral=ephemeral,
            peer_commitment=peer_commitment,
        )
        self.cipher: MediaCipher | None = None
        self.result: HandshakeResult | None = None
        self.outbox: list[bytes] = []  # handshake messages for the peer, sent once there is a path

    @classmethod
    def for_call(
        cls,
        identity: Identity,
        me: str,
        ready: PeerReady,
        known: KnownPeers,
        accept: bool,
        *,
        ephemeral: X25519PrivateKey,
    ) -> SecureMedia:
        """For the call the rendezvous introduced with `ready`. `accept`: go on with a key
        that differs from the pinned one. The controlled side starts the handshake: it has
        its path first (on the nominating check, half a round trip before the controlling
        side hears the answer), so its first message reaches the controlling side as that
        side chooses the path, and each side has its keys one round trip after it would have
        started sending without them (the controlling side starting would cost the other two)."""
        verifier = PeerVerifier(ready.peer, ready.peer_key, known, accept)
        initiator = not ready.controlling
        names = (me, ready.peer) if initiator else (ready.peer, me)
        return cls(
            identity,
            initiator,
            names,
            verifier,
            ephemeral=ephemeral,
            peer_commitment=ready.peer_commit,
        )

    def take_outbox(self) -> list[bytes]:
        out, self.outbox = self.outbox, []
        return out

    @property
    def failure(self) -> str | None:
        return self.verifier.refusal or self.handshake.failure

    def next_deadline(self) -> float | None:
        return None if self.cipher is not None else self.handshake.next_deadline()

    def start(self, now: float) -> None:
        self.outbox += self.handshake.start(now)

    def poll(self, now: float) -> None:
        if self.cipher is None:
            self.outbox += self.handshake.poll(now)

    def on_handshake(self, data: bytes, now: float) -> None:
        """A handshake datagram from the peer, or from anyone: answers go to the outbox."""
        self.outbox += self.handshake.handle_untrusted(data, now)
        self._take_result()

    def _take_result(self) -> None:
        result = self.handshake.result
        if result is None or self.cipher is not None:
            return
        self.result = result
        self.cipher = MediaCipher(result.local_srtp, result.remote_srtp)
        self.verifier.settle(result.remote_static)

    def protect(self, packet: bytes) -> bytes | None:
        """SRTP or SRTCP of an RTP or RTCP packet; None before there are keys to send it under."""
        self._take_result()
        return None if self.cipher is None else self.cipher.protect(packet)

    def unprotect_untrusted(self, packet: bytes) -> bytes | None:
        """The plain packet, if it is the peer's and authentic; None before the keys (the
        peer's media can beat its last handshake message here) and for anything forged."""
        return None if self.cipher is None else self.cipher.unprotect_untrusted(packet)

    def secured(self, peer: str) -> Secured:
        """The event that says so, once the handshake is over."""
        assert self.result is not None
        report = self.report()
        assert report is not None
        return Secured(peer, CIPHER, report.peer_fingerprint, report.trust, report.sas)

    def report(self) -> SecurityReport | None:
        if self.result is None or self.cipher is None:
            return None
        trust = self.verifier.trust or "first"
        return SecurityReport(
            cipher=CIPHER,
            peer_fingerprint=fingerprint(self.result.remote_static),
            verified=trust == "verified",
            sas=self.result.sas,
            trust=trust,
            packets_rejected=self.cipher.rejected,
            handshake_ms=self._handshake_ms(),
        )

    def _handshake_ms(self) -> float | None:
        started, done = self.handshake.started_at, self.handshake.completed_at
        return None if started is None or done is None else (done - started) * 1000
