"""Presence registry: who is online, at which addresses, and whom they want to call (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from voip.nat.candidates import Candidate
from voip.wire.stun import Address


@dataclass
class Entry:
    name: str
    reflexive: Address  # the source address the server observed: the client's public mapping
    host_candidates: tuple[Candidate, ...]
    expires: float
    since: float  # first registration; the earlier caller gets the controlling role
    wants: str | None = None
    mapping: str | None = None  # its NAT's mapping behaviour, if the client found out


class NameTaken(Exception):
    """The name is held by a live client at another address."""

    def __init__(self, name: str, holder: Address):
        super().__init__(f"name {name!r} is in use by another client")
        self.name = name
        self.holder = holder


class Registry:
    def __init__(self, lifetime: float = 30.0):
        self.lifetime = lifetime
        self._entries: dict[str, Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, now: float) -> Entry | None:
        entry = self._entries.get(name)
        if entry is not None and entry.expires <= now:
            del self._entries[name]
            return None
        return entry

    def register(
        self,
        name: str,
        reflexive: Address,
        host_candidates: tuple[Candidate, ...],
        wants: str | None,
        now: float,
        *,
        mapping: str | None = None,
    ) -> Entry:
        """Add or refresh `name`. A live name held from another address raises NameTaken."""
        entry = self.get(name, now)
        if entry is not None and entry.reflexive != reflexive:
            raise NameTaken(name, entry.reflexive)
        if entry is None:
            entry = Entry(name, reflexive, host_candidates, now + self.lifetime, now, wants)
            self._entries[name] = entry
        else:
            entry.host_candidates = host_candidates
            entry.expires = now + self.lifetime
            if wants is not None and entry.wants != wants:
                entry.since = now  # a new call request waits from now
            entry.wants = wants
        if mapping is not None:
            entry.mapping = mapping
        return entry

    def remove(self, name: str, reflexive: Address) -> bool:
        """Release a name, only at the request of the address that holds it."""
        entry = self._entries.get(name)
        if entry is None or entry.reflexive != reflexive:
            return False
        del self._entries[name]
        return True

    def match(self, name: str, now: float) -> Entry | None:
        """The peer of `name` if each has asked for the other, else None."""
        me = self.get(name, now)
        if me is None or me.wants is None:
            return None
        peer = self.get(me.wants, now)
        if peer is None or peer.wants != name:
            return None
        return peer

    def expire(self, now: float) -> list[str]:
        gone = [n for n, e in self._entries.items() if e.expires <= now]
        for n in gone:
            del self._entries[n]
        return gone

    def next_expiry(self) -> float | None:
        return min((e.expires for e in self._entries.values()), default=None)
