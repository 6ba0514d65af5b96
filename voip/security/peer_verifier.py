"""Whether to talk to the key a peer proved: known_peers first, the rendezvous's word second.

The handshake calls it with the peer's static key before it finishes (voip/security/handshake.py)
so a refused key ends the call before any audio. A pinned key must match. With no pin, the key
must at least be the one the rendezvous introduced (anything else means someone on the path is
answering for the peer); it is then trusted for the first time, pinned once the handshake
completes, and the people compare the SAS aloud, which is what catches a lying rendezvous.
"""

from __future__ import annotations

from dataclasses import dataclass

from voip.security.identity import fingerprint
from voip.security.known_peers import KnownPeers
from voip.security.known_peers import KnownPeersError
from voip.security.known_peers import Trust


@dataclass
class PeerVerifier:
    peer: str
    introduced_key: bytes | None  # from PEER-READY; None when the rendezvous gave none
    known: KnownPeers
    accept_new_key: bool = False
    trust: str | None = None  # "verified", "first" or "accepted", once a key is taken
    refusal: str | None = None
    unsaved: str | None = None  # why the key could not be remembered, if it could not

    def __call__(self, proved: bytes) -> str | None:
        """None to go on with this key; else why not, in words that say what to do."""
        self.refusal = self._refusal(proved)
        return self.refusal

    def _refusal(self, proved: bytes) -> str | None:
        verdict = self.known.check(self.peer, proved)
        if verdict.trust is Trust.VERIFIED:
            self.trust = "verified"
            return None
        if verdict.trust is Trust.CHANGED and not self.accept_new_key:
            return (
                f"{self.peer}'s key has changed: known_peers has {verdict.pinned}, but the "
                f"peer proved {verdict.fingerprint}. Someone may be impersonating {self.peer}, "
                f"or {self.peer} has a new identity: ask them (their 'callpeer whoami'), then "
                f"call again with --accept-new-key, or run "
                f"'callpeer trust {self.peer} {verdict.fingerprint}'"
            )
        if self.introduced_key is not None and proved != self.introduced_key:
            return (
                f"the key that answered ({verdict.fingerprint}) is not the one the rendezvous "
                f"introduced for {self.peer} ({fingerprint(self.introduced_key)}): someone on "
                "the path is answering in their place"
            )
        self.trust = "first" if verdict.trust is Trust.FIRST else "accepted"
        return None

    def settle(self, proved: bytes) -> None:
        """The handshake finished with `proved`: remember it, if it was not pinned already. A
        known_peers that cannot be written does not stop the call (it is said in `unsaved`)."""
        if self.trust in ("first", "accepted"):
            try:
                self.known.pin(self.peer, fingerprint(proved))
            except KnownPeersError as exc:
                self.unsaved = str(exc)
