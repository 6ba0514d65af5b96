"""The rendezvous server's protocol logic: datagrams and time in, datagrams out (sans-IO).

It answers STUN Binding requests from anyone (RFC 8489 §12), keeps the presence registry, and
when two clients have each asked for the other, sends both a PEER-READY in the same instant:
candidates and fresh ICE credentials, retransmitted until each acknowledges.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from dataclasses import dataclass

from rendezvous.behaviour import Addresses, answer_binding
from rendezvous.registry import Entry, NameTaken, Registry
from rendezvous.turn_server import Out
from voip.nat.candidates import Candidate, CandidateType
from voip.wire.signal import ERR_BAD_REQUEST, ERR_NAME_TAKEN, PeerReady, Register
from voip.wire.stun import (
    MAX_DATAGRAM,
    Address,
    Attr,
    Class,
    Message,
    Method,
    StunError,
    encode,
    encode_address,
    encode_error_code,
    encode_unknown_attributes,
    encode_xor_address,
    parse_message_untrusted,
    text,
    u32,
    unknown_required,
)
from voip.wire.transactions import Transaction, TransactionTable
from voip.wire.turn import rest_password, rest_username

Transmit = tuple[bytes, Address]

SOFTWARE = "callpeer-rendezvous 0.1"
PEER_READY_RTO = 0.25
PEER_READY_RC = 7
PEER_READY_RM = 8


@dataclass(frozen=True)
class RelayOffer:
    """The TURN relay callers are told to use, and the secret its REST credentials come from.

    The relay may be this server (callpeer-rendezvous --relay-address), another instance on the
    relay host, or coturn with use-auth-secret and the same secret.
    """

    server: Address
    secret: str
    ttl: int = 600  # s; callers re-register every 10 s and get fresh ones


@dataclass(frozen=True)
class _Intro:
    to: str
    peer: str


class RendezvousLogic:
    def __init__(
        self,
        lifetime: float = 30.0,
        software: str = SOFTWARE,
        relay: RelayOffer | None = None,
        wallclock: float | None = None,
        addresses: Addresses | None = None,
    ):
        self.registry = Registry(lifetime)
        self.software = software
        self.relay = relay
        self.addresses = addresses  # our transport addresses, with the RFC 5780 alternate
        self.wall_offset = (time.time() - time.monotonic()) if wallclock is None else wallclock
        self.stats: Counter[str] = Counter()
        self._txns: TransactionTable[_Intro] = TransactionTable()

    def next_deadline(self) -> float | None:
        times = [
            t for t in (self._txns.next_deadline(), self.registry.next_expiry()) if t is not None
        ]
        return min(times, default=None)

    def poll(self, now: float) -> list[Transmit]:
        resend_txns, failed = self._txns.poll(now)
        resend = [(t.data, t.dest) for t in resend_txns]
        self.stats["peer_ready_unacknowledged"] += len(failed)
        self.stats["expired"] += len(self.registry.expire(now))
        return resend

    def handle_datagram(self, data: bytes, src: Address, now: float) -> list[Transmit]:
        """Everything that arrives goes through here; nothing it contains can raise out of it."""
        if len(data) > MAX_DATAGRAM:
            self.stats["oversized"] += 1
            return []
        try:
            msg = parse_message_untrusted(data)
            return self._dispatch(msg, src, now)
        except StunError:
            self.stats["malformed"] += 1
            return []

    # -- dispatch ---------------------------------------------------------------------------
    def _dispatch(self, msg: Message, src: Address, now: float) -> list[Transmit]:
        if msg.cls == Class.REQUEST:
            unknown = unknown_required(msg)
            if unknown:
                self.stats["unknown_attribute"] += 1
                return self._error(
                    msg,
                    src,
                    420,
                    "Unknown Attribute",
                    [(Attr.UNKNOWN_ATTRIBUTES, encode_unknown_attributes(unknown))],
                )
            if msg.method == Method.BINDING:
                return self._binding(msg, src)
            if msg.method == Method.CP_REGISTER:
                return self._register(msg, src, now)
            if msg.method == Method.CP_LEAVE:
                return self._leave(msg, src)
            self.stats["unknown_method"] += 1
            return self._error(msg, src, ERR_BAD_REQUEST, "Unknown method")
        if msg.cls == Class.SUCCESS and msg.method == Method.CP_PEER_READY:
            if self._txns.match(msg) is not None:
                self.stats["peer_ready_acknowledged"] += 1
            return []
        self.stats["ignored"] += 1
        return []

    def _reply(
        self, msg: Message, src: Address, cls: Class, attrs: list[tuple[int, bytes]]
    ) -> Transmit:
        attrs = [*attrs, (Attr.SOFTWARE, text(self.software))]
        # An RFC 3489 client has no FINGERPRINT and cannot read XOR addresses.
        return encode(msg.reply(cls, attrs), fingerprint=not msg.is_classic), src

    def _error(
        self,
        msg: Message,
        src: Address,
        code: int,
        reason: str,
        extra: list[tuple[int, bytes]] | None = None,
    ) -> list[Transmit]:
        return [
            self._reply(
                msg,
                src,
                Class.ERROR,
                [(Attr.ERROR_CODE, encode_error_code(code, reason)), *(extra or [])],
            )
        ]

    def binding(self, msg: Message, src: Address, local: Address) -> list[Out]:
        """A Binding request that arrived on our `local` address (RFC 5780 when we have an
        alternate address; see rendezvous/behaviour.py)."""
        self.stats["binding"] += 1
        addresses = self.addresses or Addresses(local)
        return answer_binding(msg, src, local, addresses, self.software)

    def _binding(self, msg: Message, src: Address) -> list[Transmit]:
        primary = self.addresses.primary if self.addresses else ("0.0.0.0", 0)  # noqa: S104
        return [(out.data, out.dest) for out in self.binding(msg, src, primary)]

    def _register(self, msg: Message, src: Address, now: float) -> list[Transmit]:
        try:
            req = Register.from_message_untrusted(msg)
        except StunError as exc:
            self.stats["bad_register"] += 1
            return self._error(msg, src, ERR_BAD_REQUEST, str(exc))
        if req.peer == req.name:
            return self._error(msg, src, ERR_BAD_REQUEST, "cannot call yourself")
        try:
            entry = self.registry.register(
                req.name, src, req.host_candidates, req.peer, now, mapping=req.mapping
            )
        except NameTaken:
            self.stats["name_taken"] += 1
            return self._error(
                msg,
                src,
                ERR_NAME_TAKEN,
                f"Name Taken: {req.name!r} is in use by a live client at another address; it "
                f"is freed {self.registry.lifetime:.0f} s after that client stops refreshing",
            )
        self.stats["register"] += 1
        peer = self.registry.match(req.name, now)
        status = "matched" if peer is not None else ("waiting" if req.peer else "registered")
        out = [
            self._reply(
                msg,
                src,
                Class.SUCCESS,
                [
                    (Attr.XOR_MAPPED_ADDRESS, encode_xor_address(src, msg.transaction_id)),
                    (Attr.LIFETIME, u32(int(self.registry.lifetime))),
                    (Attr.CP_STATUS, text(status)),
                    *self._relay_attributes(req.name, now),
                    *self._other_address(),
                ],
            )
        ]
        if peer is not None:
            out += self._introduce(entry, peer, now)
        return out

    def _other_address(self) -> list[tuple[int, bytes]]:
        """OTHER-ADDRESS, so a client can learn its NAT's mapping with one more Binding."""
        if self.addresses is None or self.addresses.alternate is None:
            return []
        return [(Attr.OTHER_ADDRESS, encode_address(self.addresses.alternate))]

    def _relay_attributes(self, name: str, now: float) -> list[tuple[int, bytes]]:
        if self.relay is None:
            return []
        username = rest_username(int(now + self.wall_offset) + self.relay.ttl, name)
        return [
            (Attr.CP_TURN_SERVER, encode_address(self.relay.server)),
            (Attr.CP_TURN_USERNAME, text(username)),
            (Attr.CP_TURN_PASSWORD, text(rest_password(self.relay.secret, username))),
        ]

    def _leave(self, msg: Message, src: Address) -> list[Transmit]:
        name = msg.text(Attr.CP_NAME) or ""
        if self.registry.remove(name, src):
            self.stats["leave"] += 1
        return [self._reply(msg, src, Class.SUCCESS, [])]

    # -- introductions ----------------------------------------------------------------------
    def _introduce(self, a: Entry, b: Entry, now: float) -> list[Transmit]:
        """Send both sides each other's candidates in one go, so they punch at the same moment."""
        self.stats["matched"] += 1
        a.wants = b.wants = None  # this request is served; a new call needs a new request
        creds = {e.name: (secrets.token_hex(4), secrets.token_urlsafe(18)) for e in (a, b)}
        first = a if a.since <= b.since else b  # the one who waited longest controls (RFC 8445)
        out: list[Transmit] = []
        for me, peer in ((a, b), (b, a)):
            ready = PeerReady(
                peer=peer.name,
                candidates=(
                    Candidate.make(CandidateType.SRFLX, peer.reflexive),
                    *peer.host_candidates,
                ),
                local_ufrag=creds[me.name][0],
                local_pwd=creds[me.name][1],
                remote_ufrag=creds[peer.name][0],
                remote_pwd=creds[peer.name][1],
                controlling=me is first,
                peer_mapping=peer.mapping,
            )
            req = ready.to_message()
            data = encode(req, fingerprint=True)
            txn = Transaction(
                req.transaction_id,
                data,
                me.reflexive,
                _Intro(me.name, peer.name),
                rto=PEER_READY_RTO,
                rc=PEER_READY_RC,
                rm=PEER_READY_RM,
            )
            out.append((self._txns.start(now, txn), me.reflexive))
        return out
