"""TURN relay server logic over UDP, sans-IO (RFC 8656): dispatch, allocations, relaying.

Allocate, Refresh, CreatePermission, ChannelBind, Send and Data indications, ChannelData;
allocation, permission (300 s) and channel (600 s) lifetimes. Credentials and nonces are
rendezvous/turn_auth.py's, one allocation's tables rendezvous/allocation.py's, which peers may be
reached rendezvous/peer_filter.py's.

Allocations are IPv4, IPv6, or both (a dual allocation, RFC 8656 §7.2), as the Allocate asks
and the relay has addresses for (rendezvous/relay_families.py); a dual allocation relays to
peers of both families, each from the relayed address of its family.

Defences: peers refused by the peer filter get 403, and a peer of a family the allocation has
no relayed address of 443;
the relay's own addresses are never sent to over the network: a datagram for another allocation
on this relay is handed to it inside (two callers on one relay reach each other relayed to
relayed), and one for any other port of ours is dropped;
allocations are capped per user, per source IP and in all (486 for a client's share, 508 when
the relay or its sockets are exhausted); permissions and channels per allocation are capped and
purged when they expire; an unauthenticated request never gets an answer larger than itself.

Relayed sockets are the shell's business: it passes in a `RelayPorts` that opens and closes
them (and one for IPv6, if the relay has an IPv6 address), and sends what this logic returns
through the socket each `Out` names.
"""

from __future__ import annotations

import struct
import time
from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

from rendezvous.allocation import Allocation
from rendezvous.allocation import ChannelInUse
from rendezvous.allocation import TableFull
from rendezvous.allocations import AllocationTable
from rendezvous.peer_filter import PeerFilter
from rendezvous.relay_families import Refusal
from rendezvous.relay_families import RelayFamilies
from rendezvous.relay_families import RelayPorts
from rendezvous.relay_families import allocate_answer
from rendezvous.relay_families import asked_untrusted
from rendezvous.relay_policy import TurnPolicy
from rendezvous.turn_auth import TurnAuth
from voip.wire.stun import Address
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.stun import decode_xor_address
from voip.wire.stun import encode
from voip.wire.stun import encode_error_code
from voip.wire.stun import u32
from voip.wire.turn import ALLOCATION_LIFETIME
from voip.wire.turn import CHANNEL_MIN
from voip.wire.turn import LEGACY_CHANNEL_MAX
from voip.wire.turn import UDP_TRANSPORT
from voip.wire.turn import ChannelDataError
from voip.wire.turn import pack_channel_data
from voip.wire.turn import parse_channel_data_untrusted
from voip.wire.turn import peer_indication

__all__ = ["TURN_METHODS", "Allocation", "Out", "RelayPorts", "TurnPolicy", "TurnServer"]

TURN_METHODS = {
    Method.ALLOCATE,
    Method.REFRESH,
    Method.CREATE_PERMISSION,
    Method.CHANNEL_BIND,
    Method.SEND,
}


class Out(NamedTuple):
    data: bytes
    dest: Address
    via: Address | None = None  # None: the server's own socket; else this relayed address


def reply(
    msg: Message,
    dest: Address,
    key: bytes,
    attrs: Iterable[tuple[int, bytes]],
    cls: Class = Class.SUCCESS,
) -> list[Out]:
    """An answer to an authenticated request: MESSAGE-INTEGRITY under its key, FINGERPRINT."""
    return [Out(encode(msg.reply(cls, attrs), integrity_key=key, fingerprint=True), dest)]


def xor_peers(msg: Message) -> list[Address]:
    return [decode_xor_address(v, msg.transaction_id) for v in msg.get_all(Attr.XOR_PEER_ADDRESS)]


class TurnServer:
    def __init__(
        self,
        ports: RelayPorts,
        policy: TurnPolicy | None = None,
        wallclock: float | None = None,
        ports6: RelayPorts | None = None,  # IPv6 relayed addresses, if the relay has any
    ):
        self.ports = RelayFamilies(ports, ports6)
        self.policy = policy or TurnPolicy()
        self.limits = self.policy.limits
        self.stats: Counter[str] = Counter()
        # unix time = now + offset; REST usernames carry unix expiry times
        offset = (time.time() - time.monotonic()) if wallclock is None else wallclock
        self.auth = TurnAuth(self.policy, offset, self.stats)
        self.peers = PeerFilter(
            list(self.policy.allowed_peers), allow_loopback=self.policy.allow_loopback_peers
        )
        self.table = AllocationTable(self.limits)
        self.allocations = self.table.by_client
        self.by_relayed = self.table.by_relayed

    def handle_request(self, msg: Message, data: bytes, src: Address, now: float) -> list[Out]:
        """A TURN request or Send indication from a client; `data` is the datagram as received."""
        if msg.method == Method.SEND:
            return self._send_indication(msg, src, now) if msg.cls == Class.INDICATION else []
        if msg.cls != Class.REQUEST:
            return []
        try:
            auth = self.auth.authenticate(msg, data, src, now)
            if isinstance(auth, bytes):
                return [Out(auth, src)] if auth else []
            username, key = auth
            if msg.method == Method.ALLOCATE:
                return self._allocate(msg, src, username, key, now)
            alloc = self.allocations.get(src)
            if alloc is None or alloc.username != username:
                return self._error(msg, src, 437, "Allocation Mismatch", key)
            if msg.method == Method.REFRESH:
                return self._refresh(msg, alloc, now)
            if msg.method == Method.CREATE_PERMISSION:
                return self._create_permission(msg, alloc, now)
            return self._channel_bind(msg, alloc, now)
        except StunError:
            self.stats["malformed"] += 1
            return []

    def handle_channel_data(self, data: bytes, src: Address, now: float) -> list[Out]:
        alloc = self.allocations.get(src)
        try:
            channel, payload = parse_channel_data_untrusted(data, legacy=True)
        except ChannelDataError:
            self.stats["malformed"] += 1
            return []
        peer = alloc.channel_peer(channel, now) if alloc is not None else None
        if alloc is None or peer is None:
            self.stats["channel_unknown"] += 1
            return []
        outs = self._relay_out(payload, alloc, peer, now)
        if outs and not self.table.routes.live(src, channel, now):  # for the fast path
            inside = self.by_relayed.get(peer)
            if route := alloc.learned(channel, outs[0].via, inside, now):
                self.table.routes.learn(route)
        return outs

    def handle_peer(self, data: bytes, relayed: Address, peer: Address, now: float) -> list[Out]:
        """A datagram that arrived on relayed address `relayed` from `peer`."""
        alloc = self.by_relayed.get(relayed)
        if alloc is None or alloc.expires <= now or not alloc.permitted(peer[0], now):
            self.stats["peer_not_permitted"] += 1
            return []
        self.stats["relayed_to_client"] += 1
        channel = alloc.channel_for(peer, now)
        if channel is not None:
            return [Out(pack_channel_data(channel, data), alloc.client)]
        return [Out(peer_indication(Method.DATA, peer, data), alloc.client)]

    def next_deadline(self) -> float | None:
        return self.table.next_expiry()

    def poll(self, now: float) -> None:
        for client in self.table.expired(now):
            self._release(client)
            self.stats["expired"] += 1

    def client_gone(self, client: Address) -> None:
        """Its connection closed: over TCP or TLS an allocation ends with it (RFC 8656 §3.1)."""
        if client in self.allocations:
            self._release(client)
            self.stats["released_with_stream"] += 1

    def add_own_addresses(self, ips: Iterable[str]) -> None:
        """The relay's own addresses (where it listens and relays): never a peer."""
        self.peers.add_own(ips)

    def _relays_on(self, ip: str) -> bool:
        """Whether our relayed addresses are on `ip`: a permission there is for allocations
        of ours, reached inside the relay (see _relay_out)."""
        return self.peers.is_own(ip) and ip in self.table.relayed_ips  # O(1), however many

    def peer_refusal(self, ip: str) -> str | None:
        """Why a peer address may not be relayed to, or None when it may."""
        return self.peers.refusal(ip)

    def _error(self, msg: Message, dest: Address, code: int, reason: str, key: bytes) -> list[Out]:
        self.stats[f"error_{code}"] += 1
        return reply(
            msg, dest, key, [(Attr.ERROR_CODE, encode_error_code(code, reason))], Class.ERROR
        )

    def _lifetime(self, msg: Message, default: int) -> int:
        asked = msg.u32(Attr.LIFETIME)
        return default if asked is None else min(asked, self.policy.max_lifetime)

    def _allocate(
        self, msg: Message, src: Address, username: str, key: bytes, now: float
    ) -> list[Out]:
        existing = self.allocations.get(src)
        if existing is not None:
            if existing.allocate_tid == msg.transaction_id:  # a retransmission: same answer
                return [Out(existing.allocate_reply, src)]
            return self._error(msg, src, 437, "Allocation Mismatch", key)
        transport = msg.get(Attr.REQUESTED_TRANSPORT)
        if transport is None or len(transport) != 4:
            return self._error(msg, src, 400, "Bad Request", key)
        if transport[0] != UDP_TRANSPORT:
            return self._error(msg, src, 442, "Unsupported Transport Protocol", key)
        asked = asked_untrusted(msg)
        if isinstance(asked, Refusal):
            return self._error(msg, src, *asked, key)
        if msg.has(Attr.RESERVATION_TOKEN):
            return self._error(msg, src, 508, "Insufficient Capacity", key)
        if (refused := self.table.refusal(username, src)) is not None:
            reason = "Allocation Quota Reached" if refused == 486 else "Insufficient Capacity"
            return self._error(msg, src, refused, reason, key)
        opened = self.ports.open(asked)
        if isinstance(opened, Refusal):
            return self._error(msg, src, *opened, key)
        if opened.six_refused is not None:
            self.stats[f"dual_refused_{opened.six_refused.code}"] += 1
        lifetime = self._lifetime(msg, ALLOCATION_LIFETIME)
        alloc = Allocation(src, opened.relayed, username, key, now + lifetime, also=opened.also)
        answer = reply(msg, src, key, allocate_answer(opened, lifetime, src, msg.transaction_id))
        alloc.allocate_tid, alloc.allocate_reply = msg.transaction_id, answer[0].data
        self.table.add(alloc)
        self.stats["allocate"] += 1
        return answer

    def _refresh(self, msg: Message, alloc: Allocation, now: float) -> list[Out]:
        lifetime = self._lifetime(msg, ALLOCATION_LIFETIME)
        if lifetime == 0:
            self._release(alloc.client)
            self.stats["released"] += 1
        else:
            alloc.expires = now + lifetime
            alloc.purge(now)
            self.table.schedule(alloc)
            self.stats["refresh"] += 1
        return reply(msg, alloc.client, alloc.key, [(Attr.LIFETIME, u32(lifetime))])

    def _peer_error(self, msg: Message, alloc: Allocation, peers: list[Address]) -> list[Out]:
        """The answer for the first peer we may not relay to, or [] when all are fine."""
        for peer in peers:
            if alloc.relayed_for(":" in peer[0]) is None:  # no relayed address of its family
                self.stats["peer_family_mismatch"] += 1
                return self._error(
                    msg, alloc.client, 443, "Peer Address Family Mismatch", alloc.key
                )
            if self.peers.refusal(peer[0]) is not None and not self._relays_on(peer[0]):
                self.stats["peer_refused"] += 1
                return self._error(msg, alloc.client, 403, "Forbidden", alloc.key)
        return []

    def _create_permission(self, msg: Message, alloc: Allocation, now: float) -> list[Out]:
        peers = xor_peers(msg)
        if not peers:
            return self._error(msg, alloc.client, 400, "Bad Request", alloc.key)
        if refused := self._peer_error(msg, alloc, peers):
            return refused
        try:
            alloc.permit([ip for ip, _ in peers], now, self.limits.permissions_per_allocation)
        except TableFull:
            return self._error(msg, alloc.client, 508, "Insufficient Capacity", alloc.key)
        self.stats["permission"] += 1
        return reply(msg, alloc.client, alloc.key, [])

    def _channel_bind(self, msg: Message, alloc: Allocation, now: float) -> list[Out]:
        number = msg.get(Attr.CHANNEL_NUMBER)
        peers = xor_peers(msg)
        if number is None or len(number) != 4 or len(peers) != 1:
            return self._error(msg, alloc.client, 400, "Bad Request", alloc.key)
        channel, peer = struct.unpack("!H", number[:2])[0], peers[0]
        if not CHANNEL_MIN <= channel <= LEGACY_CHANNEL_MAX:
            return self._error(msg, alloc.client, 400, "Bad Request", alloc.key)
        if refused := self._peer_error(msg, alloc, peers):
            return refused
        try:
            alloc.bind(
                channel,
                peer,
                now,
                channels=self.limits.channels_per_allocation,
                permissions=self.limits.permissions_per_allocation,
            )
        except ChannelInUse:
            return self._error(msg, alloc.client, 400, "Bad Request", alloc.key)
        except TableFull:
            return self._error(msg, alloc.client, 508, "Insufficient Capacity", alloc.key)
        self.stats["channel_bind"] += 1
        return reply(msg, alloc.client, alloc.key, [])

    def _send_indication(self, msg: Message, src: Address, now: float) -> list[Out]:
        alloc = self.allocations.get(src)
        if alloc is None:
            return []
        try:
            peer = msg.xor_address(Attr.XOR_PEER_ADDRESS)
        except StunError:
            return []
        data = msg.get(Attr.DATA)
        if peer is None or data is None or not alloc.permitted(peer[0], now):
            self.stats["send_not_permitted"] += 1
            return []
        return self._relay_out(data, alloc, peer, now)

    def _relay_out(self, data: bytes, alloc: Allocation, peer: Address, now: float) -> list[Out]:
        """Send `data` from `alloc`'s relayed address to `peer`: over the network, or, for
        another allocation of ours, inside the relay; never to any other port of ours."""
        if peer in self.by_relayed:  # where it would arrive by the network all the same
            self.stats["relayed_inside"] += 1
            source = alloc.relayed_for(":" in peer[0]) or alloc.relayed
            return self.handle_peer(data, peer, source, now)
        if self.peers.is_own(peer[0]) and not self.policy.sibling(peer):
            self.stats["own_address_dropped"] += 1
            return []
        via = alloc.relayed if alloc.also is None else alloc.relayed_for(":" in peer[0])
        if via is None:  # no relayed address of its family (its permission was refused)
            return []
        self.stats["relayed_to_peer"] += 1
        return [Out(data, peer, via)]

    def _release(self, client: Address) -> None:
        alloc = self.table.remove(client)
        if alloc is not None:  # a dual allocation's sockets both
            for relayed in alloc.relayed_all:
                self.ports.close(relayed)
