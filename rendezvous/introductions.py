"""Introductions: PEER-READY to both callers in the same instant, retransmitted until each
acknowledges (a STUN transaction each), one in flight per name, sans-IO.

Each side is handed the other's candidates, the ICE credentials the other made for itself, and
the identity key that owns the other's name here; the server makes no credentials of its own.

An ICE restart (RFC 8445 §9) goes the same way. A caller in a call whose paths all went quiet
(its NAT forgot the mapping, its host moved) asks for its peer again, from its new mapping with
its new candidates; if the peer still holds the same call (each was last introduced to the
other, under the keys that own the names now), both are introduced again at once: the asker's
fresh candidates, and the peer's as it last registered them, with the credentials and roles of
the call, so both run fresh checks while the call's keys stay. At most RESTARTS_PER_WINDOW per
caller in RESTART_WINDOW: each one sends the peer a datagram it did not ask for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container
from dataclasses import dataclass

from rendezvous.registry import Entry
from rendezvous.turn_server import Out
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.signal import IceCredentials
from voip.wire.signal import PeerReady
from voip.wire.stun import Address
from voip.wire.stun import Message
from voip.wire.stun import encode
from voip.wire.transactions import Schedule
from voip.wire.transactions import Transaction
from voip.wire.transactions import TransactionTable

# A quick first retransmission (both sides are waiting to punch), and up to 16 s in all.
PEER_READY = Schedule(rto=0.25, rc=7, rm=8)
RESTART_WINDOW = 60.0
RESTARTS_PER_WINDOW = 12


@dataclass(frozen=True)
class Handoff:
    """An introduction's half for a caller another rendezvous holds (--redis): that server
    sends the PEER-READY, signed with the key only it shares with its caller."""

    server: str  # the id of the server that holds `to`
    to: str
    to_key: bytes  # the identity key `to` held when it asked: the same run, or nothing
    ready: PeerReady  # what to tell it, role included
    restart: bool


def restarting(asker: Entry, peer: Entry) -> bool:
    """Whether `asker` asks again in the call it is in with `peer`: each was last introduced to
    the other under the keys they hold now, and the asker's credentials are the call's (a new
    run of the same identity makes new ones: a new call, which waits for the peer to ask)."""
    return (
        asker.call == (peer.name, peer.client_key)
        and peer.call == (asker.name, asker.client_key)
        and asker.ice is not None
        and asker.ice == asker.call_ice
        and peer.ice == peer.call_ice  # the peer's run is the call's, not a new one
    )


def signed(msg: Message, key: bytes) -> bytes:
    """A message to or from a registered caller: MESSAGE-INTEGRITY-SHA256 and FINGERPRINT."""
    return encode(msg, integrity_key=key, integrity_sha256=True, fingerprint=True)


class Introductions:
    def __init__(self, stats: Counter[str], streams: Container[Address] = frozenset()):
        self.stats = stats
        # Clients on a TCP or TLS connection (the server's live streams, by address): the
        # address we see them at is a TCP mapping, no candidate for a peer's UDP.
        self.streams = streams
        self._txns: TransactionTable[str] = TransactionTable()  # context: the name introduced
        # A caller asking again and again replaces its own introduction, so the table never
        # holds more than there are names.
        self._of: dict[str, bytes] = {}
        self.handoffs: list[Handoff] = []  # halves for other servers' callers, to be sent on

    def __len__(self) -> int:
        return len(self._txns)

    def next_deadline(self) -> float | None:
        return self._txns.next_deadline()

    def poll(self, now: float) -> list[tuple[bytes, Address]]:
        resend, failed = self._txns.poll(now)
        for txn in failed:
            self._of.pop(txn.context, None)
        self.stats["peer_ready_unacknowledged"] += len(failed)
        return [(t.data, t.dest) for t in resend]

    def acknowledged(self, answer: Message) -> None:
        if (txn := self._txns.match(answer)) is not None:
            self._of.pop(txn.context, None)
            self.stats["peer_ready_acknowledged"] += 1

    def introduce(self, a: Entry, b: Entry, now: float, a_first: bool | None = None) -> list[Out]:
        """Send both sides each other's candidates in one go, so they punch at the same moment.
        `a_first`: whether `a` asked first, when the shared store compared their asks."""
        if a.ice is None or b.ice is None:
            # Every REGISTER that asks for a peer brings credentials (the logic refuses one
            # without), so an entry that wants someone has them: this is never reached.
            self.stats["introduction_without_credentials"] += 1
            return []
        self.stats["matched"] += 1
        a.wants = b.wants = None  # this request is served; a new call needs a new request
        if a_first is None:
            a_first = a.since <= b.since
        first = a if a_first else b  # the one who waited longest controls (RFC 8445)
        for me, peer in ((a, b), (b, a)):
            me.call, me.call_ice = (peer.name, peer.client_key), me.ice
            me.call_controlling, me.restarts = me is first, []
        return self._send(a, b, now)

    def restart(self, asker: Entry, peer: Entry | None, now: float) -> list[Out] | None:
        """Introduce two callers in one call again (an ICE restart): None if the ask is not
        one, nothing if the asker has no asks left (its next, at the next refresh, may)."""
        if peer is None or not restarting(asker, peer):
            return None
        asker.restarts = [t for t in asker.restarts if now - t < RESTART_WINDOW]
        # Answered or refused, it is no ask for a new call (the peer's next may not pair them).
        asker.wants = None
        if len(asker.restarts) >= RESTARTS_PER_WINDOW:
            self.stats["restart_refused"] += 1
            return []
        asker.restarts.append(now)
        self.stats["restarted"] += 1
        return self._send(asker, peer, now, restart=True)

    def _send(self, a: Entry, b: Entry, now: float, restart: bool = False) -> list[Out]:
        out: list[Out] = []
        for me, peer in ((a, b), (b, a)):
            ready = self.ready_for(peer, me.call_controlling)
            if me.server is not None:
                self.handoffs.append(Handoff(me.server, me.name, me.client_key, ready, restart))
            else:
                out.append(self.tell(me, ready, now))
        return out

    def ready_for(
        self, peer: Entry, controlling: bool, creds: IceCredentials | None = None
    ) -> PeerReady:
        """What a caller in a call with `peer` is told: its candidates, its credentials for
        the call (or `creds`), its key, and the caller's role."""
        creds = creds or peer.call_ice
        assert creds is not None  # set from the asks that made the call
        if peer.server is not None:
            candidates = peer.host_candidates  # as its server saw them, reflexive included
        elif peer.reflexive in self.streams:
            candidates = peer.host_candidates
        else:
            srflx = Candidate.make(CandidateType.SRFLX, peer.reflexive)
            candidates = (srflx, *peer.host_candidates)
        return PeerReady(
            peer=peer.name,
            candidates=candidates,
            remote_ufrag=creds.ufrag,
            remote_pwd=creds.pwd,
            controlling=controlling,
            peer_key=peer.client_key,
            peer_mapping=peer.mapping,
            peer_commit=creds.commit,
        )

    def tell(self, me: Entry, ready: PeerReady, now: float) -> Out:
        """A PEER-READY to a caller of ours, retransmitted until it acknowledges; it replaces
        any introduction still in flight to it."""
        req = ready.to_message()
        txn = Transaction.scheduled(
            req.transaction_id, signed(req, me.key), me.reflexive, me.name, PEER_READY
        )
        if (previous := self._of.get(me.name)) is not None:
            self._txns.cancel(previous)
        self._of[me.name] = txn.transaction_id
        return Out(self._txns.start(now, txn), me.reflexive)
