"""--offload: the relay's channel routes mirrored into the kernel fast path (RFC 8656 §12).

Each route the full rules learn (rendezvous/channel_routes.py: allocation, binding and
permission all live, until the earliest ends) becomes a map entry of the tc/eBPF program
(rendezvous/offload.py), so the rest of that channel's ChannelData, and its peer's answers,
never reach Python; when the route expires or its allocation ends the entry goes, and the next
datagram takes the full rules again (and teaches the route anew if they allow it). Lifetimes,
quotas and the peer filter are thus the full rules' alone. Routes the program cannot carry stay
in user space: IPv6, clients on TCP or TLS, RFC 5766's channels past 0x4FFF, and channels
between two allocations of this relay.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from collections.abc import Mapping

import psutil

from rendezvous.channel_routes import Route
from rendezvous.offload import ChannelOffload
from rendezvous.offload import OffloadUnavailable
from rendezvous.offload_maps import BpfError
from rendezvous.server import RendezvousServer
from voip.wire.stun import Address

OFFLOAD_CHANNELS = range(0x4000, 0x5000)  # what the program parses as ChannelData (RFC 8656)

log = logging.getLogger(__name__)


class OffloadedRoutes:
    """A RouteWatcher that keeps the kernel's channel table equal to the live routes."""

    def __init__(
        self, offload: ChannelOffload, streams: Mapping[Address, object], stats: Counter[str]
    ):
        self.offload, self.streams, self.stats = offload, streams, stats

    def carries(self, route: Route) -> bool:
        return (
            route.inside is None
            and route.channel in OFFLOAD_CHANNELS
            and ":" not in route.client[0]
            and ":" not in route.peer[0]
            and ":" not in route.relayed[0]
            and route.client not in self.streams
        )

    def route_added(self, route: Route) -> None:
        self._mirror(route, self.offload.add, "offload_added")

    def route_removed(self, route: Route) -> None:
        self._mirror(route, self.offload.remove, "offload_removed")

    def _mirror(
        self, route: Route, change: Callable[[Address, int, Address, Address], None], stat: str
    ) -> None:
        if not self.carries(route):
            return
        try:
            change(route.client, route.channel, route.relayed, route.peer)
            self.stats[stat] += 1
        except (BpfError, OSError, ValueError, RuntimeError):  # a full map: user space relays
            self.stats["offload_refused"] += 1


def mirror_routes(server: RendezvousServer, offload: ChannelOffload) -> None:
    """From now on the server's channel routes are the kernel's too."""
    if server.turn is not None:
        streams = server.streams.by_addr if server.streams is not None else {}
        watcher = OffloadedRoutes(offload, streams, server.turn.stats)
        server.turn.table.routes.watchers.append(watcher)


def kernel_counters(offload: ChannelOffload) -> dict[str, int]:
    """What the kernel relayed, for the server's counters line."""
    try:
        counts = offload.counters()
    except (BpfError, OSError, RuntimeError):
        return {}
    return {f"kernel_{name}": value for name, value in counts.items() if value}


def interfaces_with(ip: str) -> list[str]:
    """The interfaces that hold `ip` (the relay's address): where its clients' datagrams and
    its peers' arrive; loopback's as well when the address is a loopback one."""
    names = [
        name for name, addrs in psutil.net_if_addrs().items() if any(a.address == ip for a in addrs)
    ]
    if not names:
        raise OffloadUnavailable(f"no interface of this host holds the relay address {ip}")
    return names


def load_offload(relay_host: str, port: int) -> ChannelOffload:
    """The kernel fast path for a relay on relay_host:port; OffloadUnavailable says why not.
    Forwarding is switched on for the relay's interfaces while it runs (the kernel's FIB look-up
    for another host needs it), and off again on close."""
    return ChannelOffload.load(
        interfaces_with(relay_host), (relay_host, port), enable_forwarding=True
    )
