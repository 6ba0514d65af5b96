"""TURN client over UDP, sans-IO (RFC 8656): allocate, refresh, permissions, channels, data.

It shares the caller's one socket: requests go to the TURN server and its answers, Data
indications and ChannelData come back on the same socket, told apart by first byte (RFC 7983).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from voip.wire.sans_io import EventQueue
from voip.wire.sans_io import earliest
from voip.wire.stun import Address
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.stun import encode
from voip.wire.stun import encode_xor_address
from voip.wire.stun import long_term_key
from voip.wire.stun import new_transaction_id
from voip.wire.stun import text
from voip.wire.stun import u32
from voip.wire.transactions import SERVER_SCHEDULE
from voip.wire.transactions import Transaction
from voip.wire.transactions import TransactionTable
from voip.wire.turn import ALLOCATION_LIFETIME
from voip.wire.turn import CHANNEL_LIFETIME
from voip.wire.turn import CHANNEL_MIN
from voip.wire.turn import PERMISSION_LIFETIME
from voip.wire.turn import ChannelDataError
from voip.wire.turn import dual_request
from voip.wire.turn import pack_channel_data
from voip.wire.turn import parse_channel_data_untrusted
from voip.wire.turn import peer_indication
from voip.wire.turn import relayed_untrusted
from voip.wire.turn import requested_transport

Transmit = tuple[bytes, Address]
# Long enough that the first, unauthenticated Allocate is larger than a minimal 401 answer:
# a careful server (ours) will not answer a smaller request with a larger reply.
SOFTWARE = "callpeer 0.1 TURN client (RFC 8656)"
REFRESH_MARGIN = 60  # s before expiry
# Answers to a dual Allocate from a server that will not make one: it does not know the
# attribute (400, 420), or cannot in its configuration (coturn with an external IP: 440).
NO_DUAL = (400, 420, 440)


@dataclass(frozen=True)
class Allocated:
    relayed: Address
    mapped: Address
    lifetime: int
    relayed6: Address | None = None  # a dual allocation's IPv6 relayed address


@dataclass(frozen=True)
class TurnFailed:
    reason: str


@dataclass(frozen=True)
class PermissionRefused:
    peer_ip: str
    reason: str


TurnEvent = Allocated | TurnFailed | PermissionRefused


@dataclass(frozen=True)
class _Req:
    method: int
    attrs: tuple[tuple[int, bytes], ...]  # without the credential attributes
    peer: Address | None = None  # for permissions and channels
    channel: int | None = None


@dataclass(frozen=True)
class _Sent:
    req: _Req
    authenticated: bool  # sent with MESSAGE-INTEGRITY: a 401 to it means bad credentials


class TurnClient(EventQueue[TurnEvent]):
    """`ipv6`: ask for an IPv6 relayed address besides the IPv4 one (a dual allocation, RFC
    8656 §7.2), for a caller whose socket is dual-stack; a server that will not make one is
    asked again without, and one that cannot allocate IPv6 gives the IPv4 address alone."""

    def __init__(
        self,
        server: Address,
        username: str,
        password: str,
        keepalive: float | None = None,
        *,
        ipv6: bool = False,
    ):
        super().__init__()
        self.server = server
        self.ipv6 = ipv6
        # Seconds between packets to the relay when natcheck measured how soon this NAT forgets
        # a quiet mapping: a Binding indication (no answer) holds the mapping open.
        self.keepalive = keepalive
        self._keepalive_at: float | None = None
        self.username, self.password = username, password
        self.realm: str | None = None
        self.nonce: str | None = None
        self.key: bytes | None = None
        self.relayed: Address | None = None
        self.relayed6: Address | None = None  # a dual allocation's second, IPv6 address
        self.ipv6_refused: str | None = None  # why a dual allocation has no IPv6 address
        self.mapped: Address | None = None
        self.failed: str | None = None
        self.permissions: dict[str, float] = {}  # peer IP -> when to refresh
        self.channels: dict[Address, int] = {}  # bound (confirmed) channels
        self._channel_refresh: dict[Address, float] = {}
        self._by_channel: dict[int, Address] = {}
        self._next_channel = CHANNEL_MIN
        self._refresh_at: float | None = None
        self._txns: TransactionTable[_Sent] = TransactionTable()

    # -- outputs -------------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        return earliest(
            self._txns.next_deadline(),
            self._refresh_at,
            self._keepalive_at,
            *self.permissions.values(),
            *self._channel_refresh.values(),
        )

    # -- requests ------------------------------------------------------------------------
    @property
    def families(self) -> frozenset[int]:
        """The families (4, 6) the allocation relays to: a peer of another is refused (443)."""
        return frozenset(6 if ":" in a[0] else 4 for a in (self.relayed, self.relayed6) if a)

    def start(self, now: float) -> list[Transmit]:
        attrs = (
            (Attr.REQUESTED_TRANSPORT, requested_transport()),
            (Attr.LIFETIME, u32(ALLOCATION_LIFETIME)),
            *(dual_request() if self.ipv6 else ()),
        )
        return [self._send(_Req(Method.ALLOCATE, attrs), now)]

    def permit(self, ips: list[str], now: float) -> list[Transmit]:
        """Install permissions for these peer IPs (one request each, so one refusal is one)."""
        out = []
        for ip in ips:
            if ip in self.permissions or self.relayed is None:
                continue
            self.permissions[ip] = now + PERMISSION_LIFETIME - REFRESH_MARGIN
            out.append(self._send(_Req(Method.CREATE_PERMISSION, (), (ip, 0)), now))
        return out

    def bind_channel(self, peer: Address, now: float) -> list[Transmit]:
        if peer in self.channels or peer in self._channel_refresh or self.relayed is None:
            return []
        channel = self._next_channel
        self._next_channel += 1
        self._channel_refresh[peer] = now + CHANNEL_LIFETIME - REFRESH_MARGIN
        return [self._send(_Req(Method.CHANNEL_BIND, (), peer, channel), now)]

    def wrap(self, data: bytes, peer: Address) -> Transmit:
        """`data` for `peer` through the relay: ChannelData when bound, else a Send indication."""
        channel = self.channels.get(peer)
        if channel is not None:
            return pack_channel_data(channel, data), self.server
        return peer_indication(Method.SEND, peer, data), self.server

    def close(self, now: float) -> list[Transmit]:
        """Release the allocation now rather than let it time out (Refresh, LIFETIME 0)."""
        if self.relayed is None:
            return []
        self.relayed = self.relayed6 = None
        self._txns.cancel_all()
        self.permissions.clear()
        self._channel_refresh.clear()
        self._refresh_at = None
        req = _Req(Method.REFRESH, ((Attr.LIFETIME, u32(0)),))
        return [(self._encode(req, new_transaction_id()), self.server)]

    # -- inputs ---------------------------------------------------------------------------
    def poll(self, now: float) -> list[Transmit]:
        resend, failed = self._txns.poll(now)
        out = [(t.data, t.dest) for t in resend]
        for txn in failed:
            if txn.context.req.method == Method.ALLOCATE:
                self._fail(f"no answer from TURN server {self.server[0]}:{self.server[1]}")
        if self._refresh_at is not None and now >= self._refresh_at:
            self._refresh_at = None
            out.append(
                self._send(_Req(Method.REFRESH, ((Attr.LIFETIME, u32(ALLOCATION_LIFETIME)),)), now)
            )
        for ip, when in list(self.permissions.items()):
            if now >= when:
                self.permissions[ip] = now + PERMISSION_LIFETIME - REFRESH_MARGIN
                out.append(self._send(_Req(Method.CREATE_PERMISSION, (), (ip, 0)), now))
        for peer, when in list(self._channel_refresh.items()):
            if now >= when and peer in self.channels:
                self._channel_refresh[peer] = now + CHANNEL_LIFETIME - REFRESH_MARGIN
                req = _Req(Method.CHANNEL_BIND, (), peer, self.channels[peer])
                out.append(self._send(req, now))
        if self._keepalive_at is not None and self.keepalive and now >= self._keepalive_at:
            self._keepalive_at = now + self.keepalive
            keep = Message(Method.BINDING, Class.INDICATION)
            out.append((encode(keep, fingerprint=True), self.server))
        return out

    def handle(self, msg: Message, src: Address, now: float) -> list[Transmit] | None:
        """Answers to our TURN requests; None when the message is not one."""
        if src != self.server or msg.cls not in (Class.SUCCESS, Class.ERROR):
            return None
        txn = self._txns.match(msg)
        if txn is None:
            return None
        try:
            return self._on_answer(msg, txn.context.req, txn.context.authenticated, now)
        except StunError:
            # An answer we cannot read (a bad LIFETIME, a NONCE that is not UTF-8): perhaps
            # forged by someone who saw the transaction ID. Wait for the real one.
            self._txns.restore(txn)
            return []

    def unwrap(self, msg: Message, src: Address) -> tuple[bytes, Address] | None:
        """(payload, peer) of a Data indication from our server, else None."""
        if src != self.server or msg.method != Method.DATA or msg.cls != Class.INDICATION:
            return None
        try:
            peer = msg.xor_address(Attr.XOR_PEER_ADDRESS)
        except StunError:
            return None
        data = msg.get(Attr.DATA)
        return None if peer is None or data is None else (data, peer)

    def unwrap_channel(self, data: bytes, src: Address) -> tuple[bytes, Address] | None:
        if src != self.server:
            return None
        try:
            channel, payload = parse_channel_data_untrusted(data)
        except ChannelDataError:
            return None
        peer = self._by_channel.get(channel)
        return None if peer is None else (payload, peer)

    # -- internals ------------------------------------------------------------------------
    def _encode(self, req: _Req, tid: bytes) -> bytes:
        attrs = list(req.attrs)
        if req.channel is not None:
            attrs.append((Attr.CHANNEL_NUMBER, struct.pack("!HH", req.channel, 0)))
        if req.peer is not None:
            attrs.append((Attr.XOR_PEER_ADDRESS, encode_xor_address(req.peer, tid)))
        if self.key is None:  # the first Allocate: no credentials yet, so the SOFTWARE pad
            attrs.append((Attr.SOFTWARE, text(SOFTWARE)))
            return encode(Message(req.method, Class.REQUEST, tid, tuple(attrs)), fingerprint=True)
        assert self.realm is not None and self.nonce is not None
        attrs += [
            (Attr.USERNAME, text(self.username)),
            (Attr.REALM, text(self.realm)),
            (Attr.NONCE, text(self.nonce)),
        ]
        msg = Message(req.method, Class.REQUEST, tid, tuple(attrs))
        return encode(msg, integrity_key=self.key, fingerprint=True)

    def _send(self, req: _Req, now: float) -> Transmit:
        tid = new_transaction_id()
        sent = _Sent(req, self.key is not None)
        txn = Transaction.scheduled(tid, self._encode(req, tid), self.server, sent, SERVER_SCHEDULE)
        return self._txns.start(now, txn), self.server

    def _fail(self, reason: str) -> None:
        if self.failed is None:
            self.failed = reason
            self._events.append(TurnFailed(reason))

    def _on_answer(
        self, msg: Message, req: _Req, authenticated: bool, now: float
    ) -> list[Transmit]:
        if msg.cls == Class.ERROR:
            try:
                code, reason = msg.error() or (500, "")
            except StunError:
                code, reason = 500, ""
            if code in (401, 438) and msg.text(Attr.NONCE):
                if code == 401 and authenticated:
                    self._fail(f"the TURN server refused the credentials for {self.username!r}")
                    return []
                # 401: the challenge, answered with credentials; 438: a fresh nonce (§9.2.5)
                self.realm = msg.text(Attr.REALM) or self.realm
                self.nonce = msg.text(Attr.NONCE)
                assert self.realm is not None
                self.key = long_term_key(self.username, self.realm, self.password)
                return [self._send(req, now)]
            if req.method == Method.ALLOCATE and self.ipv6 and code in NO_DUAL:
                self.ipv6 = False  # a server that makes no dual allocations: IPv4 alone
                return self.start(now)
            if req.method == Method.ALLOCATE:
                self._fail(f"TURN allocation refused: {code} {reason}".strip())
            elif req.method == Method.CREATE_PERMISSION and req.peer is not None:
                self._events.append(PermissionRefused(req.peer[0], f"{code} {reason}".strip()))
            elif req.method == Method.CHANNEL_BIND and req.peer is not None:
                self._channel_refresh.pop(req.peer, None)
            return []
        if req.method == Method.ALLOCATE:
            try:
                relayed, self.ipv6_refused = relayed_untrusted(msg)
                mapped = msg.xor_address(Attr.XOR_MAPPED_ADDRESS)
                lifetime = msg.u32(Attr.LIFETIME) or ALLOCATION_LIFETIME
            except StunError:
                relayed = []
            if not relayed or mapped is None:
                self._fail("TURN allocation answer without XOR-RELAYED-ADDRESS")
                return []
            # By family, not by order: RFC 8656 does not say which a dual answer lists first.
            four, six = ([a for a in relayed if (":" in a[0]) is v6] for v6 in (False, True))
            self.relayed, self.mapped = (four or six)[0], mapped
            self.relayed6 = six[0] if four and six else None
            self._refresh_at = now + max(lifetime / 2, lifetime - REFRESH_MARGIN)
            if self.keepalive is not None:
                self._keepalive_at = now + self.keepalive
            self._events.append(Allocated(self.relayed, mapped, lifetime, self.relayed6))
        elif req.method == Method.REFRESH:
            lifetime = msg.u32(Attr.LIFETIME) or ALLOCATION_LIFETIME
            self._refresh_at = now + max(lifetime / 2, lifetime - REFRESH_MARGIN)
        elif req.method == Method.CHANNEL_BIND and req.peer is not None and req.channel:
            self.channels[req.peer] = req.channel
            self._by_channel[req.channel] = req.peer
        return []
