"""The relay's live channel routes mirrored into rendezvous._channel_forward (RFC 8656 §12),
which forwards their datagrams in batches, with no Python per datagram.

Each route the full rules learn (rendezvous/channel_routes.py) becomes an entry of the C
forwarder's tables, both ways; when the route expires or its allocation ends the entries go,
and the forwarder itself checks each entry's expiry per datagram, so nothing outlives what the
rules allowed. Routes it is not told about (clients on TCP or TLS, a channel to one) stay with
rendezvous/fast_path.py's Python, which sees every datagram the forwarder did not send. That a
client's address has no TCP or TLS connection is checked when its route is made, not per
datagram as Python does: the server refuses a connection from an address that holds an
allocation, and routes into a client go with its allocation. A relayed socket's routes are
dropped before it closes (SocketRelayPorts.closing), so a descriptor number the kernel hands
out again never inherits one.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

from rendezvous.channel_routes import Route
from voip.wire.stun import Address

if TYPE_CHECKING:
    from rendezvous.fast_path import FastPath
    from rendezvous.relay_sockets import SocketRelayPorts

try:  # built from rendezvous/channel_forward.c when the package was installed with a compiler
    from rendezvous._channel_forward import Forwarder
except ImportError:  # pragma: no cover - the pure-Python install
    Forwarder = None  # type: ignore[assignment, misc]

CLIENTS, PEERS = 0, 1  # the forwarder's two sides: ChannelData from clients, data from peers
STRIP = -1  # a client-side route that sends the data alone, to its peer


def forwarder_missing() -> str | None:
    """Why there is no batched forwarder, or None when there is."""
    if Forwarder is None:
        return "rendezvous._channel_forward was not built (no C compiler at install)"
    return None


def new_forwarder(fast: FastPath, ports: SocketRelayPorts | None) -> Forwarder | None:
    """A forwarder for the live routes of `fast`, told of each from now on, and of each of
    `ports`' sockets before it closes (its hash keyed by a fresh secret); None without one, or
    when no one main socket serves every client."""
    if Forwarder is None or fast.out is None:
        return None
    forwarder = Forwarder(secrets.randbits(64))
    watcher = BatchedRoutes(forwarder, fast.out, fast.relay_sockets, fast.streams, fast.relay_stats)
    fast.routes.watchers.append(watcher)
    if ports is not None:
        ports.closing = watcher.forget
    return forwarder


class BatchedRoutes:
    """A RouteWatcher that keeps a forwarder's tables equal to the live routes it can carry:
    every route of a UDP client, when one main socket (`out`) serves every client."""

    def __init__(
        self,
        forwarder: Forwarder,
        out: socket.socket,
        relay_sockets: Mapping[Address, socket.socket],
        streams: Mapping[Address, object],
        stats: Counter[str],
    ):
        self.forwarder, self.out = forwarder, out
        self.relay_sockets, self.streams, self.stats = relay_sockets, streams, stats
        # the route each peer-side entry is for (a newer route may hold its key by now)
        self._peer_side: dict[tuple[int, Address], Route] = {}

    def route_added(self, route: Route) -> None:
        try:
            self._add(route)
        except (OSError, ValueError, OverflowError, TypeError, MemoryError):
            self.stats["batched_refused"] += 1  # Python relays it instead

    def route_removed(self, route: Route) -> None:
        with contextlib.suppress(OSError, ValueError, TypeError):  # never carried
            self.forwarder.unroute(CLIENTS, self.out.fileno(), route.client, route.channel)
        sock = self.relay_sockets.get(route.relayed)  # gone: forget() took its entries
        relay = sock.fileno() if sock is not None else None
        if relay is not None and self._peer_side.get((relay, route.peer)) is route:
            del self._peer_side[(relay, route.peer)]
            with contextlib.suppress(OSError, ValueError, TypeError):
                self.forwarder.unroute(PEERS, relay, route.peer, 0)

    def forget(self, sock: socket.socket) -> None:
        """`sock` is about to close: nothing may name its descriptor, which the next socket
        opened gets (its routes went with its allocation; this makes sure)."""
        fd = sock.fileno()
        self.forwarder.forget(fd)
        for peer_key in [k for k in self._peer_side if k[0] == fd]:
            del self._peer_side[peer_key]

    def _add(self, route: Route) -> None:
        if route.client in self.streams:
            return
        main = self.out.fileno()
        if route.inside is not None:  # to another allocation's client, on its channel
            dest, channel = route.inside
            if dest not in self.streams:
                self.forwarder.route(
                    CLIENTS, main, route.client, route.channel, main, dest, channel, route.expires
                )
            return
        sock = self.relay_sockets.get(route.relayed)
        if sock is None:
            return
        relay = sock.fileno()
        self.forwarder.route(
            CLIENTS, main, route.client, route.channel, relay, route.peer, STRIP, route.expires
        )
        self.forwarder.route(
            PEERS, relay, route.peer, 0, main, route.client, route.channel, route.expires
        )
        self._peer_side[(relay, route.peer)] = route
