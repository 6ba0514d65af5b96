"""Client side of rendezvous signalling: register, keep the name, get the peer (sans-IO).

The first REGISTER (padded, so the answer may be as large) is answered 401 with a cookie and
the server's public key; every later one carries the cookie, which shows the server we receive
at our address, and MESSAGE-INTEGRITY-SHA256 under the key our identity key agrees with the
server's (voip/security/registration.py), which shows we hold the identity that owns our name.
The server's messages carry the same MAC, and a PEER-READY or answer without a good one is
dropped, as is a PEER-READY for anyone but the peer we asked for. We make our own ICE
credentials and send them when we ask for the peer; the PEER-READY brings the peer's, and the
identity key that owns the peer's name.

In a call, asking again (`ask`, with the same credentials) is an ICE restart: the server
introduces both sides again, and a PEER-READY that comes in a call, from the same peer key in a
transaction not seen before, is reported as `GotPeer(again=True)`.

Given several servers (voip/nat/rendezvous_servers.py), it registers with the first; when a
REGISTER to the current one fails through its retransmissions, it forgets that server's cookie
and keys and registers with the next at once (`ServerMoved`), asking for the same peer with the
same credentials, so the call it waits for is the same. Only the current server introduces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from voip.nat.relay_choice import MAX_OFFERED
from voip.nat.rendezvous_servers import RendezvousServers
from voip.nat.signal_events import Asked
from voip.nat.signal_events import GotPeer
from voip.nat.signal_events import Refreshed
from voip.nat.signal_events import Refused
from voip.nat.signal_events import Registered
from voip.nat.signal_events import ServerMoved
from voip.nat.signal_events import SignalEvent
from voip.nat.signal_events import TurnOffer
from voip.nat.signal_events import Unreachable
from voip.security.handshake import commitment
from voip.security.identity import Identity
from voip.security.registration import BadPublicKey
from voip.security.registration import RegistrationKeyPair
from voip.wire.candidates import Candidate
from voip.wire.sans_io import EventQueue
from voip.wire.sans_io import earliest
from voip.wire.signal import ERR_UNAUTHENTICATED
from voip.wire.signal import MAPPING_INDEPENDENT
from voip.wire.signal import MAX_CANDIDATES
from voip.wire.signal import UNPROVEN_REGISTER_BYTES
from voip.wire.signal import IceCredentials
from voip.wire.signal import PeerReady
from voip.wire.signal import Register
from voip.wire.stun import Address
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.stun import check_integrity
from voip.wire.stun import decode_address
from voip.wire.stun import encode
from voip.wire.stun import text
from voip.wire.transactions import Transaction
from voip.wire.transactions import TransactionTable

Transmit = tuple[bytes, Address]

RETRY_AFTER_UNREACHABLE = 2.0
MAX_CHALLENGES = 3  # 401s in a row, each with a fresh cookie, before we give up
SEEN_INTRODUCTIONS = 8  # PEER-READY transactions remembered, so no retransmission restarts


class RendezvousClient(EventQueue[SignalEvent]):
    """Registers `name` asking for `peer`, refreshes before expiry, answers PEER-READY.

    `server`: one address, or several to move between. `identity` owns the name at the
    server; None makes one for this run only, which can hold a name no other key has claimed.
    """

    def __init__(
        self,
        name: str,
        peer: str,
        server: Address | Sequence[Address],
        host_candidates: tuple[Candidate, ...],
        *,
        ask_now: bool = True,
        keepalive: float | None = None,
        identity: Identity | None = None,
    ):
        super().__init__()
        self.name = name
        self.peer: str | None = peer if ask_now else None
        self._wanted_peer = peer
        self.ring = RendezvousServers(server)
        self.servers, self.server = self.ring.all, self.ring.current  # all, and the current
        self.host_candidates = self._hosts = host_candidates[:MAX_CANDIDATES]
        self.mapped: Address | None = None
        self.mapping: str | None = None  # our NAT's mapping behaviour, told to the server
        self.keepalive = keepalive  # s between refreshes at most (our NAT forgets sooner)
        self.peer_ready: PeerReady | None = None
        self._seen_ready: list[bytes] = []  # PEER-READY transaction ids, newest last
        self._txns: TransactionTable[str] = TransactionTable()
        self._refresh_at: float | None = None
        self._closed = False
        self._asked_reported = False
        self.identity = identity or Identity.generate()
        # Our identity key is the registration key: the MAC it agrees proves we hold it.
        self.keys = RegistrationKeyPair(self.identity.private)
        # The ephemeral key of this call's handshake (voip/security/handshake.py), made now so
        # the commitment to it can go out with our ICE credentials (RFC 8445 §5.3), ahead of
        # anything the peer shows.
        self.ephemeral = X25519PrivateKey.generate()
        self.ice = replace(IceCredentials.generate(), commit=commitment(self.ephemeral))
        self._key: bytes | None = None  # agreed with the server
        self._server_key: bytes | None = None
        self._nonce: str | None = None  # the server's cookie for our address
        self._challenges = 0
        self._new_server = False  # moved: the next answer is the first from this server
        self.over_stream = False  # reached over TCP or TLS (the shell's fallback), not UDP
        self.forged = 0  # signalling whose MESSAGE-INTEGRITY failed, or for another peer

    # -- outputs --------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        return earliest(self._txns.next_deadline(), self._refresh_at)

    # -- inputs ---------------------------------------------------------------------------
    def start(self, now: float) -> list[Transmit]:
        return [self._register(now)]

    def ask(
        self, now: float, more_candidates: tuple[Candidate, ...] = (), mapping: str | None = None
    ) -> list[Transmit]:
        """Ask for the peer now, with candidates gathered since registering (a relayed one)
        and what we learned of our NAT's mapping; in a call, ask again (an ICE restart)."""
        self.peer = self._wanted_peer
        self.mapping = mapping or self.mapping
        # The server takes MAX_CANDIDATES: the relayed ones first, then hosts in their order.
        room = max(0, MAX_CANDIDATES - len(more_candidates))
        self.host_candidates = (*self._hosts[:room], *more_candidates)
        self._txns.cancel_all()
        return [self._register(now)]

    def refresh(self, now: float) -> list[Transmit]:
        """Refresh the registration now, not at its time (after the network changed, say)."""
        return [] if self._closed else [self._register(now)]

    def leave(self, now: float) -> list[Transmit]:
        """Release the name at once (best effort, one datagram) instead of waiting for expiry."""
        self._closed = True
        self._txns.cancel_all()
        self._refresh_at = None
        msg = Message(Method.CP_LEAVE, Class.REQUEST, attributes=((Attr.CP_NAME, text(self.name)),))
        return [(self._encode(msg), self.server)]

    def poll(self, now: float) -> list[Transmit]:
        out: list[Transmit] = []
        resend, failed = self._txns.poll(now)
        out += [(t.data, t.dest) for t in resend]
        for txn in failed:
            if txn.dest != self.server:
                continue  # for the server we have just left
            if not self._closed and self.ring.failed(txn.started, self.mapped is not None):
                out.append(self._move(now, now - txn.started))
                continue
            self._events.append(Unreachable(self.server, self.ring.waited(now, txn.started)))
            if self.mapped is not None and not self._closed:
                # Registered before, so the server was there: it may be restarting. Keep trying,
                # or the name lapses and a peer who calls later never finds us.
                self._refresh_at = now + RETRY_AFTER_UNREACHABLE
        if self._refresh_at is not None and now >= self._refresh_at and not self._closed:
            self._refresh_at = None
            out.append(self._register(now))
        return out

    def handle(self, msg: Message, src: Address, now: float) -> list[Transmit] | None:
        """Handle a STUN message if it is signalling for us; None when it is not ours."""
        if msg.method == Method.CP_PEER_READY and msg.cls == Class.REQUEST:
            if src != self.server:
                return []  # only the server we registered with may introduce a peer
            return self._on_peer_ready(msg, now)
        if msg.cls in (Class.SUCCESS, Class.ERROR) and msg.transaction_id in self._txns:
            txn = self._txns.match(msg)
            assert txn is not None
            return self._on_register_answer(txn, msg, now)
        return None

    # -- internals ------------------------------------------------------------------------
    def _move(self, now: float, waited: float) -> Transmit:
        """To the next server: what we agreed with the old one means nothing there."""
        old, self.server = self.server, self.ring.advance()
        self._events.append(ServerMoved(old, self.server, waited, self._nonce is not None))
        self._key = self._server_key = self._nonce = None
        self._challenges, self._new_server, self.over_stream = 0, True, False
        self._txns.cancel_all()
        self._refresh_at = None
        return self._register(now)

    def _encode(self, msg: Message) -> bytes:
        if self._key is None:
            return encode(msg, fingerprint=True)
        return encode(msg, integrity_key=self._key, integrity_sha256=True, fingerprint=True)

    def _authentic(self, msg: Message) -> bool:
        """An answer or request really from our server: under the key we agreed."""
        return self._key is not None and check_integrity(msg, self._key)

    def _take_server_key(self, server_key: bytes | None) -> None:
        """The key in a 401. It is taken only there: a restarted server has a new key, and it
        no longer knows our cookie either. A signed answer with another key is a forgery."""
        if server_key is None or server_key == self._server_key:
            return
        try:
            self._key = self.keys.agree_untrusted(server_key, we_are_client=True)
        except BadPublicKey:
            return  # the next REGISTER is challenged again, up to MAX_CHALLENGES
        self._server_key = server_key

    def _register(self, now: float) -> Transmit:
        # In a call too: the server restarts only a call whose both sides still hold its
        # credentials (a new run of the same identity makes new ones).
        ice = self.ice if self.peer is not None or self.peer_ready is not None else None
        req = Register(
            self.name,
            self.peer,
            self.host_candidates,
            self.mapping,
            self._nonce,
            self.keys.public,
            ice,
        ).to_message()
        data = self._encode(req)
        if self._nonce is None and len(data) < UNPROVEN_REGISTER_BYTES:
            # No cookie yet: pad, so the 401 with the cookie and the server's key may answer.
            room = UNPROVEN_REGISTER_BYTES - len(data) - 4
            padding = (Attr.PADDING, bytes(-(-room // 4) * 4))
            req = replace(req, attributes=(*req.attributes, padding))
            data = self._encode(req)
        context = "ask" if self.peer is not None else "register"
        schedule = self.ring.schedule(answered_here=self._nonce is not None)
        txn = Transaction.scheduled(req.transaction_id, data, self.server, context, schedule)
        return self._txns.start(now, txn), self.server

    def _on_register_answer(
        self, txn: Transaction[str], msg: Message, now: float
    ) -> list[Transmit]:
        code, reason = 0, ""
        try:
            if msg.cls == Class.ERROR:
                code, reason = msg.error() or (500, "error with no ERROR-CODE")
            nonce = msg.text(Attr.NONCE) if code == ERR_UNAUTHENTICATED else None
        except StunError:
            self._txns.restore(txn)  # not an answer we can read: wait for the real one
            return []
        self.ring.answered()
        if nonce is not None:  # a cookie for our address: ask again with it, under its key
            self._nonce = nonce
            self._take_server_key(msg.get(Attr.CP_KEY))
            self._challenges += 1
            if self._challenges <= MAX_CHALLENGES:
                return [self._register(now)]
            self._events.append(Refused(code, "the server does not accept its own cookie and key"))
            return []
        if not self._authentic(msg):
            if msg.cls == Class.ERROR and self._key is None:
                # Before any key is agreed the server cannot sign its refusal (a malformed
                # request, an unknown attribute): believe it, it answered our transaction.
                self._events.append(Refused(code, reason))
                return []
            self.forged += 1
            self._txns.restore(txn)  # a forgery must not end the real transaction
            return []
        self._challenges = 0
        if msg.cls == Class.ERROR:
            self._events.append(Refused(code, reason))
            return []
        try:
            mapped, lifetime, status, turn, other = _answer_untrusted(msg, self.over_stream)
        except StunError:
            return []
        # The first answer of a server we moved to: a NAT not known to map independently may
        # show it another port, no move of ours (a real one stops the audio: the call restarts).
        first, independent = self.mapped is None, self.mapping == MAPPING_INDEPENDENT
        moved = mapped != self.mapped and (independent or not self._new_server)
        self.mapped, self._new_server = mapped, False
        waiting = self.peer is not None
        self._refresh_at = now + self.ring.refresh_interval(lifetime, waiting, self.keepalive)
        if first:
            self._events.append(Registered(mapped, lifetime, status, turn, other))
        else:
            self._events.append(Refreshed(mapped, moved, txn.context == "ask"))
        if txn.context == "ask" and not self._asked_reported:
            self._asked_reported = True
            self._events.append(Asked(status))
        return []

    def _on_peer_ready(self, msg: Message, now: float) -> list[Transmit]:
        if self._key is None or not check_integrity(msg, self._key):
            self.forged += 1  # not from the server we registered with
            return []
        try:
            ready = PeerReady.from_message_untrusted(msg)
        except StunError:
            return []
        if ready.peer != self._wanted_peer:
            self.forged += 1  # an introduction to someone we never asked for
            return []
        again = self.peer_ready is not None
        if self.peer_ready is not None and ready.peer_key != self.peer_ready.peer_key:
            self.forged += 1  # the call's peer is whoever held the name when it began
            return []
        ack = self._encode(msg.reply(Class.SUCCESS))
        if msg.transaction_id not in self._seen_ready:  # a retransmission: acknowledged again
            self._seen_ready = [*self._seen_ready[1 - SEEN_INTRODUCTIONS :], msg.transaction_id]
            self.peer_ready = ready
            self.peer = None  # refreshes no longer ask for a call, so the server won't re-match
            self._events.append(GotPeer(ready, again))
        return [(ack, self.server)]


def _answer_untrusted(
    msg: Message, over_stream: bool
) -> tuple[Address, float, str, TurnOffer | None, Address | None]:
    """A REGISTER's success: our public address, the lifetime, our status, the relays offered
    and the server's alternate address; StunError if unreadable or without our address."""
    mapped = msg.xor_address()
    if mapped is None:
        raise StunError("no XOR-MAPPED-ADDRESS")
    lifetime = float(msg.u32(Attr.LIFETIME) or 30)
    status = msg.text(Attr.CP_STATUS) or "waiting"
    # Over TCP or TLS, RFC 5780's probes (over UDP) could tell nothing of our mapping.
    other = None if over_stream else msg.address(Attr.OTHER_ADDRESS)
    return mapped, lifetime, status, _turn_offer_untrusted(msg), other


def _turn_offer_untrusted(msg: Message) -> TurnOffer | None:
    """The relays offered (one CP-TURN-SERVER each, at most MAX_OFFERED, in order) and the
    credentials good on all of them; StunError if the credentials are unreadable."""
    servers: list[Address] = []
    for value in msg.get_all(Attr.CP_TURN_SERVER)[:MAX_OFFERED]:
        try:
            server = decode_address(value)
        except StunError:
            continue  # one we cannot read (a family we do not know): the others still serve
        if server not in servers:
            servers.append(server)
    username = msg.text(Attr.CP_TURN_USERNAME)
    password = msg.text(Attr.CP_TURN_PASSWORD)
    if not servers or username is None or password is None:
        return None
    return TurnOffer(servers[0], username, password, also=tuple(servers[1:]))
