"""How many new names one public IP may claim per window, so no source fills the name store.

A claimed name stays bound for a year unseen (rendezvous/name_store.py), so the cap on names
online from one IP is not enough: a source could claim, leave and claim again. This counts the
claims of each address block (an IPv4 address, an IPv6 /64) in a fixed window, and forgets
every count when the window ends. The table only grows by a successful claim from a source that
proved it receives at its address, and is capped besides.
"""

from __future__ import annotations

from collections import Counter

from rendezvous.limits import address_block

WINDOW = 3600.0  # s


class ClaimRate:
    def __init__(
        self,
        per_source: int,
        max_sources: int = 100_000,
        window: float = WINDOW,
        in_all: int | None = None,
    ):
        """`in_all`: new names from every source together per window (None: no such cap). An
        IPv6 attacker has 65,536 /64s in a /48; with names on probation for a week
        (rendezvous/name_store.py), this bounds what strangers can hold in the store at once."""
        self.per_source = per_source
        self.in_all = in_all
        self._total = 0
        self.max_sources = max_sources
        self.window = window
        self._counts: Counter[str] = Counter()
        self._window_end = 0.0

    def __len__(self) -> int:
        return len(self._counts)

    def allowed(self, ip: str, now: float) -> bool:
        """Whether `ip` may claim one more name now."""
        self._roll(now)
        if self.in_all is not None and self._total >= self.in_all:
            return False
        block = address_block(ip)
        if block not in self._counts and len(self._counts) >= self.max_sources:
            return False  # too many sources claiming at once: the newest waits for the window
        return self._counts[block] < self.per_source

    def claimed(self, ip: str, now: float) -> None:
        self._roll(now)
        self._counts[address_block(ip)] += 1
        self._total += 1

    def _roll(self, now: float) -> None:
        if now >= self._window_end:
            self._counts.clear()
            self._total = 0
            self._window_end = now + self.window
