"""What a TURN relay accepts: credentials (static users or REST), peers it may reach, its limits."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from dataclasses import field

from rendezvous.limits import Limits
from voip.wire.turn import MAX_LIFETIME


@dataclass
class TurnPolicy:
    realm: str = "cp"  # short on purpose: see turn_auth.NONCE_MAC_BYTES
    secret: str | None = None  # TURN REST API shared secret (coturn's static-auth-secret)
    users: dict[str, str] = field(default_factory=dict)  # static long-term users
    # Ranges opened again among those refused by default (rendezvous/peer_filter.py).
    allowed_peers: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    allow_loopback_peers: bool = False  # only for a relay that is itself on loopback
    limits: Limits = field(default_factory=Limits)
    max_lifetime: int = MAX_LIFETIME
    # --workers: the relayed port range all workers draw from, on these relay addresses, and
    # this worker's slice of it. A port of another worker's slice there may be that worker's
    # allocation, reached over the network, not inside; any other port of ours never is (one
    # of our own slice that is no allocation of ours is no one's).
    sibling_hosts: frozenset[str] = frozenset()
    sibling_ports: tuple[int, int] = (0, -1)
    own_ports: tuple[int, int] = (0, -1)

    def sibling(self, peer: tuple[str, int]) -> bool:
        (low, high), (mine_low, mine_high) = self.sibling_ports, self.own_ports
        port = peer[1]
        in_ours = mine_low <= port <= mine_high
        return low <= port <= high and not in_ours and peer[0] in self.sibling_hosts
