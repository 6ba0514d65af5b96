"""Whether a key may use a name: its binding in the store, and the caps on new claims.

The logic asks here only after the sender has shown it receives at its address (the cookie) and
holds the key it names (MESSAGE-INTEGRITY under the key agreed from it). A name bound to another
key is refused 409 whatever its owner is doing, online or not, so the answer never says whether
the owner is there. A free name is claimed after the registry has taken the registration, and
only within the caps: bindings in all (508), new claims per source and hour (486).
"""

from __future__ import annotations

from collections import Counter

from rendezvous.claim_rate import ClaimRate
from rendezvous.limits import Limits
from rendezvous.name_store import Binding
from rendezvous.name_store import NameStore
from rendezvous.name_store import NameStoreError
from voip.wire.signal import ERR_CAPACITY
from voip.wire.signal import ERR_NAME_TAKEN
from voip.wire.signal import ERR_QUOTA

PURGE_INTERVAL = 3600.0  # s between sweeps for bindings unseen too long


class NameOwnership:
    def __init__(self, store: NameStore, limits: Limits, stats: Counter[str]):
        self.store = store
        self.limits = limits
        self.stats = stats
        self.claims = ClaimRate(limits.claims_per_ip, in_all=limits.claims_per_hour)
        self._next_purge = float("-inf")  # the first poll sweeps what aged while we were down

    def admit(
        self, name: str, key: bytes, ip: str, wall: float
    ) -> tuple[int | None, Binding | None]:
        """(code, None) to refuse; (None, binding) for the owner; (None, None) when the name is
        free and `key` may claim it."""
        try:
            binding = self.store.lookup(name, wall)
        except NameStoreError:
            self.stats["store_error"] += 1
            return ERR_CAPACITY, None
        if binding is not None:
            if binding.key != key:
                self.stats["name_taken"] += 1
                return ERR_NAME_TAKEN, None
            return None, binding
        if len(self.store) >= self.limits.bindings:
            self.sweep(wall)
            if len(self.store) >= self.limits.bindings:
                self.stats["store_full"] += 1
                return ERR_CAPACITY, None
        if not self.claims.allowed(ip, wall):
            self.stats["claims_per_ip"] += 1
            return ERR_QUOTA, None
        return None, None

    def claim(self, name: str, key: bytes, ip: str, wall: float) -> int | None:
        """Bind a name `admit` found free: None once it is `key`'s, else the code to answer."""
        try:
            if not self.store.claim(name, key, wall):
                self.stats["name_taken"] += 1  # another process sharing the store came first
                return ERR_NAME_TAKEN
        except NameStoreError:
            self.stats["store_error"] += 1
            return ERR_CAPACITY
        self.claims.claimed(ip, wall)
        self.stats["claimed"] += 1
        return None

    def seen(self, binding: Binding, wall: float) -> None:
        """The owner registered again: keep the binding from ageing out (a write an hour)."""
        try:
            self.store.touch(binding, wall)
        except NameStoreError:
            self.stats["store_error"] += 1  # the name stays its owner's; the next touch retries

    def sweep(self, wall: float) -> None:
        """Release bindings unseen for too long, at most once per PURGE_INTERVAL."""
        if wall < self._next_purge:
            return
        self._next_purge = wall + PURGE_INTERVAL
        try:
            self.stats["released"] += self.store.purge(wall)
        except NameStoreError:
            self.stats["store_error"] += 1
