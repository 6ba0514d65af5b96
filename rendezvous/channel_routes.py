"""Where each live TURN channel's data goes, decided once (RFC 8656 §12), sans-IO.

When the relay has passed a client's ChannelData to its peer by the full rules (the allocation,
the channel binding and the peer's permission all live, the peer neither ours nor refused), it
records the route, both ways, until the earliest of those three lifetimes. Until then a
ChannelData datagram on that channel, and a peer's datagram on the relayed address, cost the
server's shell one dict look-up (rendezvous/fast_path.py) or none at all (the kernel's, with
--offload). Nothing here makes a route longer-lived than the rules allow: a refresh does not
extend one; once it expires, the next datagram takes the full rules again and learns it anew.
A released allocation's routes go with it.
"""

from __future__ import annotations

from typing import NamedTuple
from typing import Protocol

from voip.wire.deadlines import Deadlines
from voip.wire.stun import Address


class Route(NamedTuple):
    client: Address
    channel: int
    relayed: Address  # where datagrams to the peer leave from, and the peer's answers arrive
    peer: Address
    expires: float
    # When the peer is another allocation's relayed address on this relay: that allocation's
    # client, and its channel for us; the data goes straight to it as ChannelData.
    inside: tuple[Address, int] | None = None


class RouteWatcher(Protocol):
    """Told of each route made and dropped (the kernel offload mirrors them)."""

    def route_added(self, route: Route) -> None: ...

    def route_removed(self, route: Route) -> None: ...


class ChannelRoutes:
    def __init__(self) -> None:
        self.to_peer: dict[tuple[Address, int], Route] = {}  # by (client, channel)
        self.to_client: dict[tuple[Address, Address], Route] = {}  # by (relayed, peer)
        self._channels: dict[Address, set[int]] = {}  # a client's, to drop with its allocation
        self._into: dict[Address, set[tuple[Address, int]]] = {}  # routes inside, by receiver
        self._expiries: Deadlines[tuple[Address, int]] = Deadlines()
        self.watchers: list[RouteWatcher] = []

    def __len__(self) -> int:
        return len(self.to_peer)

    def live(self, client: Address, channel: int, now: float) -> bool:
        route = self.to_peer.get((client, channel))
        return route is not None and route.expires > now

    def learn(self, route: Route) -> None:
        key = (route.client, route.channel)
        if key in self.to_peer:
            self._remove(key)
        self.to_peer[key] = route
        if route.inside is None:
            self.to_client[(route.relayed, route.peer)] = route
        else:
            self._into.setdefault(route.inside[0], set()).add(key)
        self._channels.setdefault(route.client, set()).add(route.channel)
        self._expiries.set(key, route.expires)
        for watcher in self.watchers:
            watcher.route_added(route)

    def drop_client(self, client: Address) -> None:
        """Its allocation is gone: every route of it too, and every route inside to it."""
        for channel in sorted(self._channels.get(client, ())):
            self._remove((client, channel))
        for key in sorted(self._into.get(client, ())):
            self._remove(key)

    def next_expiry(self) -> float | None:
        return self._expiries.next()

    def expire(self, now: float) -> None:
        for key in self._expiries.due(now):
            self._remove(key)

    def _remove(self, key: tuple[Address, int]) -> None:
        route = self.to_peer.pop(key, None)
        if route is None:
            return
        self._expiries.discard(key)
        if self.to_client.get((route.relayed, route.peer)) is route:
            del self.to_client[(route.relayed, route.peer)]
        if route.inside is not None and (into := self._into.get(route.inside[0])) is not None:
            into.discard(key)
            if not into:
                del self._into[route.inside[0]]
        channels = self._channels.get(route.client)
        if channels is not None:
            channels.discard(route.channel)
            if not channels:
                del self._channels[route.client]
        for watcher in self.watchers:
            watcher.route_removed(route)
