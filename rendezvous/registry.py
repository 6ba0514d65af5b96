"""Presence registry: who is online, at which addresses, and whom they want to call (pure).

Names expire from a heap (O(log n) per registration, however many are online), and the registry
caps how many names it holds in all and from one public IP, so no stranger can grow it without
bound. Who may use a name at all is the name store's business (rendezvous/name_store.py): the
logic checks the key there before it comes here.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from dataclasses import field

from rendezvous.limits import address_block
from voip.wire.candidates import Candidate
from voip.wire.deadlines import Deadlines
from voip.wire.signal import IceCredentials
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
    client_key: bytes = b""  # the caller's identity public key, which owns the name
    key: bytes = b""  # the message-integrity key agreed with that caller
    ice: IceCredentials | None = None  # its credentials for the call it asks for (`wants`)
    # The call it was last introduced to: (peer name, the key that owned it), its own
    # credentials in it and its role. A later ask for that peer, by that key, while the peer
    # still holds the same call, is an ICE restart (rendezvous/introductions.py).
    call: tuple[str, bytes] | None = None
    call_ice: IceCredentials | None = None
    call_controlling: bool = False
    restarts: list[float] = field(default_factory=list)  # when, within RESTART_WINDOW
    # Set on a caller another rendezvous holds (--redis, rendezvous/shared_presence.py): the
    # id of that server, which alone can send to it; its candidates are then complete as it
    # registered them (the server-reflexive one included). None: a caller of ours.
    server: str | None = None
    stored: float = -math.inf  # when the shared store last took its record in full (--redis)
    quick: tuple[Address, bytes] | None = None  # its refresh the quick path knows (its key)


class NameTaken(Exception):
    """The name is held by a live client at another address."""

    def __init__(self, name: str, holder: Address):
        super().__init__(f"name {name!r} is in use by another client")
        self.name = name
        self.holder = holder


class RegistryFull(Exception):
    """No room: `per_ip` when this public IP holds its share of names, else the whole table."""

    def __init__(self, per_ip: bool):
        super().__init__("names per address" if per_ip else "names in all")
        self.per_ip = per_ip


class Registry:
    def __init__(self, lifetime: float = 30.0, capacity: int = 100_000, per_ip: int = 64):
        self.lifetime = lifetime
        self.capacity = capacity
        self.per_ip = per_ip
        self._entries: dict[str, Entry] = {}
        self._by_ip: Counter[str] = Counter()
        self._at: dict[Address, set[str]] = {}  # names by the address they registered from
        self._expiries: Deadlines[str] = Deadlines()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, now: float) -> Entry | None:
        entry = self._entries.get(name)
        if entry is not None and entry.expires <= now:
            self._drop(name)
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
        client_key: bytes = b"",
        key: bytes = b"",
        ice: IceCredentials | None = None,
    ) -> Entry:
        """Add or refresh `name`. The caller has already checked that the request comes from
        the name's holder when `client_key` is the holder's: then the name follows it to a new
        address (a NAT that rebinds). Another key from another address raises NameTaken; one
        from the holder's own address replaces it (a new run on the same socket)."""
        entry = self.get(name, now)
        if entry is not None and entry.client_key != client_key and entry.reflexive != reflexive:
            raise NameTaken(name, entry.reflexive)
        block = address_block(reflexive[0])
        moving = entry is None or address_block(entry.reflexive[0]) != block
        if moving and self._by_ip[block] >= self.per_ip:
            raise RegistryFull(per_ip=True)
        if entry is None:
            if len(self._entries) >= self.capacity:
                raise RegistryFull(per_ip=False)
            entry = Entry(name, reflexive, host_candidates, now + self.lifetime, now, wants)
            self._entries[name] = entry
            self._by_ip[block] += 1
            self._at.setdefault(reflexive, set()).add(name)
        else:
            if moving:
                self._uncount(entry.reflexive[0])
                self._by_ip[block] += 1
            if entry.reflexive != reflexive:
                self._unplace(name, entry.reflexive)
                self._at.setdefault(reflexive, set()).add(name)
            entry.reflexive = reflexive
            entry.host_candidates = host_candidates
            entry.expires = now + self.lifetime
            if wants is not None and entry.wants != wants:
                entry.since = now  # a new call request waits from now
            entry.wants = wants
        self._expiries.set(name, entry.expires)
        if entry.client_key != client_key:
            entry.call = None  # another key, another run: not the call the old one was in
        entry.client_key, entry.key, entry.ice = client_key, key, ice
        if mapping is not None:
            entry.mapping = mapping
        return entry

    def extend(self, entry: Entry, now: float) -> None:
        """A refresh that changes nothing else (rendezvous/refresh_path.py)."""
        entry.expires = now + self.lifetime
        self._expiries.set(entry.name, entry.expires)

    def remove(self, name: str, reflexive: Address) -> bool:
        """Release a name, only at the request of the address that holds it."""
        entry = self._entries.get(name)
        if entry is None or entry.reflexive != reflexive:
            return False
        self._drop(name)
        return True

    def names_at(self, reflexive: Address, now: float) -> list[str]:
        """The live names registered from `reflexive`."""
        return [n for n in self._at.get(reflexive, ()) if self._entries[n].expires > now]

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
        gone = self._expiries.due(now)
        for name in gone:
            self._drop(name)
        return gone

    def next_expiry(self) -> float | None:
        return self._expiries.next()

    def _drop(self, name: str) -> None:
        entry = self._entries.pop(name)
        self._expiries.discard(name)
        self._uncount(entry.reflexive[0])
        self._unplace(name, entry.reflexive)

    def _unplace(self, name: str, reflexive: Address) -> None:
        names = self._at.get(reflexive)
        if names is not None:
            names.discard(name)
            if not names:
                del self._at[reflexive]

    def _uncount(self, ip: str) -> None:
        block = address_block(ip)
        self._by_ip[block] -= 1
        if self._by_ip[block] <= 0:
            del self._by_ip[block]
