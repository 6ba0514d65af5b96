"""The relay's allocations: found by client and by relayed address, counted per user and per
source against the quotas, and due to expire from a heap (O(log n) however many there are)."""

from __future__ import annotations

from collections import Counter

from rendezvous.allocation import Allocation
from rendezvous.channel_routes import ChannelRoutes
from rendezvous.limits import Limits
from rendezvous.limits import address_block
from voip.wire.deadlines import Deadlines
from voip.wire.stun import Address
from voip.wire.turn import rest_user


class AllocationTable:
    def __init__(self, limits: Limits):
        self.limits = limits
        self.by_client: dict[Address, Allocation] = {}  # by client 5-tuple (UDP: address)
        self.by_relayed: dict[Address, Allocation] = {}
        self._per_user: Counter[str] = Counter()  # by the name in a REST username
        self._per_source: Counter[str] = Counter()  # by IPv4 address, or IPv6 /64
        self._expiries: Deadlines[Address] = Deadlines()
        self.routes = ChannelRoutes()  # the channels in use, for the fast path
        self.relayed_ips: Counter[str] = Counter()  # allocations' relayed addresses, by IP

    def __len__(self) -> int:
        return len(self.by_client)

    def refusal(self, username: str, src: Address) -> int | None:
        """486 when this user's or this source's share is used up, 508 when the relay is full,
        None when another allocation may be made."""
        if (
            self._per_user[rest_user(username)] >= self.limits.allocations_per_user
            or self._per_source[address_block(src[0])] >= self.limits.allocations_per_ip
        ):
            return 486
        return 508 if len(self) >= self.limits.allocations else None

    def add(self, alloc: Allocation) -> None:
        self.by_client[alloc.client] = alloc
        for relayed in alloc.relayed_all:  # a dual allocation: both, counted once
            self.by_relayed[relayed] = alloc
            self.relayed_ips[relayed[0]] += 1
        self._per_user[rest_user(alloc.username)] += 1
        self._per_source[address_block(alloc.client[0])] += 1
        self.schedule(alloc)

    def remove(self, client: Address) -> Allocation | None:
        alloc = self.by_client.pop(client, None)
        if alloc is None:
            return None
        self._expiries.discard(client)
        self.routes.drop_client(client)
        for relayed in alloc.relayed_all:
            self.by_relayed.pop(relayed, None)
            self.relayed_ips[relayed[0]] -= 1
            if self.relayed_ips[relayed[0]] <= 0:
                del self.relayed_ips[relayed[0]]
        for table, key in (
            (self._per_user, rest_user(alloc.username)),
            (self._per_source, address_block(client[0])),
        ):
            table[key] -= 1
            if table[key] <= 0:
                del table[key]
        return alloc

    def schedule(self, alloc: Allocation) -> None:
        """After a new expiry (a refresh)."""
        self._expiries.set(alloc.client, alloc.expires)

    def next_expiry(self) -> float | None:
        """The next allocation or channel route to expire."""
        times = (self._expiries.next(), self.routes.next_expiry())
        return min((t for t in times if t is not None), default=None)

    def expired(self, now: float) -> list[Address]:
        """The clients whose allocations have expired by `now` (still in the table); expired
        routes are dropped."""
        self.routes.expire(now)
        return self._expiries.due(now)
