"""One TURN allocation: its relayed addresses, permissions and channels, their lifetimes and
caps (RFC 8656 §9, §12).

A dual allocation (RFC 8656 §7.2) has two relayed addresses, IPv4 and IPv6: one allocation,
with one set of permissions and channels, whose datagrams to a peer leave from the relayed
address of the peer's family.

Both tables are capped (a client cannot grow them without bound) and purged of what has
expired whenever they are written to, so an allocation's size follows what is live.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field

from rendezvous.channel_routes import Route
from voip.wire.stun import Address
from voip.wire.turn import CHANNEL_LIFETIME
from voip.wire.turn import PERMISSION_LIFETIME


class TableFull(Exception):
    """An allocation holds as many permissions or channels as it may."""


class ChannelInUse(Exception):
    """The channel is bound to another peer, or the peer to another channel (RFC 8656 §12.2)."""


@dataclass
class Allocation:
    client: Address
    relayed: Address
    username: str
    key: bytes
    expires: float
    permissions: dict[str, float] = field(default_factory=dict)  # peer IP -> expiry
    channels: dict[int, tuple[Address, float]] = field(default_factory=dict)
    by_peer: dict[Address, int] = field(default_factory=dict)
    allocate_tid: bytes = b""
    allocate_reply: bytes = b""
    also: Address | None = None  # a dual allocation's second relayed address, the IPv6 one

    @property
    def relayed_all(self) -> tuple[Address, ...]:
        return (self.relayed,) if self.also is None else (self.relayed, self.also)

    def relayed_for(self, six: bool) -> Address | None:
        """Where datagrams to a peer of this family (True: IPv6) leave from, if the allocation
        has an address of that family: a permission for another is refused (443)."""
        if self.also is None:
            return self.relayed if (":" in self.relayed[0]) == six else None
        return self.also if six else self.relayed

    def permitted(self, ip: str, now: float) -> bool:
        return self.permissions.get(ip, 0.0) > now

    def permit(self, ips: list[str], now: float, cap: int) -> None:
        """Install or refresh permissions for all of `ips`, or for none (TableFull)."""
        self.purge(now)
        new = {ip for ip in ips if ip not in self.permissions}
        if len(self.permissions) + len(new) > cap:
            raise TableFull
        for ip in ips:
            self.permissions[ip] = now + PERMISSION_LIFETIME

    def bind(
        self, channel: int, peer: Address, now: float, *, channels: int, permissions: int
    ) -> None:
        """Bind or refresh `channel` to `peer`; a binding installs a permission too (§12.2).
        `channels` and `permissions` are the caps on each table."""
        self.purge(now)
        bound = self.channels.get(channel)
        if (bound is not None and bound[0] != peer) or self.by_peer.get(peer, channel) != channel:
            raise ChannelInUse
        if bound is None and len(self.channels) >= channels:
            raise TableFull
        if peer[0] not in self.permissions and len(self.permissions) >= permissions:
            raise TableFull
        self.channels[channel] = (peer, now + CHANNEL_LIFETIME)
        self.by_peer[peer] = channel
        self.permissions[peer[0]] = now + PERMISSION_LIFETIME

    def channel_peer(self, channel: int, now: float) -> Address | None:
        """Where ChannelData on `channel` goes, if the binding and its permission are live."""
        bound = self.channels.get(channel)
        if bound is None or bound[1] <= now or not self.permitted(bound[0][0], now):
            return None
        return bound[0]

    def route(self, channel: int, via: Address) -> Route:
        """Where `channel`'s data goes, from `via`, for as long as the allocation, the binding and
        its peer's permission all live."""
        peer, bound_until = self.channels[channel]
        expires = min(self.expires, bound_until, self.permissions.get(peer[0], 0.0))
        return Route(self.client, channel, via, peer, expires)

    def learned(
        self, channel: int, via: Address | None, receiver: Allocation | None, now: float
    ) -> Route | None:
        """The route the full rules just took for `channel`: out of `via` to the network, or
        inside this relay to `receiver`'s client."""
        if via is not None:
            return self.route(channel, via)
        return self.inside_route(channel, receiver, now) if receiver is not None else None

    def inside_route(self, channel: int, receiver: Allocation, now: float) -> Route | None:
        """Where `channel`'s data goes when its peer is `receiver`'s relayed address on this
        relay: to receiver's client on its channel for our relayed address, while both
        allocations, both bindings and both permissions live; None while receiver has no
        channel for us (the data then reaches it as Data indications)."""
        peer, _ = self.channels[channel]
        source = self.relayed_for(":" in peer[0]) or self.relayed
        back = receiver.channel_for(source, now)
        if back is None:
            return None
        mine = self.route(channel, source)
        _, bound_until = receiver.channels[back]
        theirs = min(receiver.expires, bound_until, receiver.permissions.get(source[0], 0.0))
        return mine._replace(expires=min(mine.expires, theirs), inside=(receiver.client, back))

    def channel_for(self, peer: Address, now: float) -> int | None:
        channel = self.by_peer.get(peer)
        if channel is None or self.channels[channel][1] <= now:
            return None
        return channel

    def purge(self, now: float) -> None:
        for ip in [ip for ip, expiry in self.permissions.items() if expiry <= now]:
            del self.permissions[ip]
        for channel in [c for c, (_, expiry) in self.channels.items() if expiry <= now]:
            peer, _ = self.channels.pop(channel)
            self.by_peer.pop(peer, None)
