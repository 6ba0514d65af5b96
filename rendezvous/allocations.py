"""The relay's allocations: found by client and by relayed address, counted per user and per
source against the quotas, and due to expire from a heap (O(log n) however many there are)."""

from __future__ import annotations

import heapq
from collections import Counter

from rendezvous.allocation import Allocation
from rendezvous.limits import Limits, address_block
from voip.wire.stun import Address
from voip.wire.turn import rest_user


class AllocationTable:
    def __init__(self, limits: Limits):
        self.limits = limits
        self.by_client: dict[Address, Allocation] = {}  # by client 5-tuple (UDP: address)
        self.by_relayed: dict[Address, Allocation] = {}
        self._per_user: Counter[str] = Counter()  # by the name in a REST username
        self._per_source: Counter[str] = Counter()  # by IPv4 address, or IPv6 /64
        self._expiries: list[tuple[float, Address]] = []  # (expires, client), stale ones skipped

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
        self.by_relayed[alloc.relayed] = alloc
        self._per_user[rest_user(alloc.username)] += 1
        self._per_source[address_block(alloc.client[0])] += 1
        self.schedule(alloc)

    def remove(self, client: Address) -> Allocation | None:
        alloc = self.by_client.pop(client, None)
        if alloc is None:
            return None
        self.by_relayed.pop(alloc.relayed, None)
        for table, key in (
            (self._per_user, rest_user(alloc.username)),
            (self._per_source, address_block(client[0])),
        ):
            table[key] -= 1
            if table[key] <= 0:
                del table[key]
        return alloc

    def schedule(self, alloc: Allocation) -> None:
        """After a new expiry: every refresh leaves a stale heap item, rebuilt away now and then."""
        heapq.heappush(self._expiries, (alloc.expires, alloc.client))
        if len(self._expiries) > 2 * len(self.by_client) + 1024:
            self._expiries = [(a.expires, c) for c, a in self.by_client.items()]
            heapq.heapify(self._expiries)

    def next_expiry(self) -> float | None:
        while self._expiries:
            expires, client = self._expiries[0]
            alloc = self.by_client.get(client)
            if alloc is not None and alloc.expires == expires:
                return expires
            heapq.heappop(self._expiries)  # refreshed or released since
        return None

    def expired(self, now: float) -> list[Address]:
        """The clients whose allocations have expired by `now` (still in the table)."""
        gone = []
        while self._expiries and self._expiries[0][0] <= now:
            expires, client = heapq.heappop(self._expiries)
            alloc = self.by_client.get(client)
            if alloc is not None and alloc.expires == expires:
                gone.append(client)
        return gone
