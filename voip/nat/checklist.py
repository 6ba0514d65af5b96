"""The check list: every candidate pair, and which one to check next (RFC 8445 §6.1.2, §7.2.5.4).

Pairs are formed from our bases and the peer's candidates, and learned as peer-reflexive when
a check arrives from an address nobody told us. The next pair to check is of the kind the
nominator would rather use, then a triggered one (a peer's check answered with ours at once),
then by priority. Checks are paced Ta apart, so a peer's triggered relayed checks queued ahead
of a direct pair would hold the direct decision back by Ta each.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from collections.abc import Iterator

from voip.nat.nominator import Nominator
from voip.nat.pairs import Base
from voip.nat.pairs import Pair
from voip.nat.pairs import PairState
from voip.nat.pairs import PathKind
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.stun import Address

Key = tuple[Base, Address]
TA = 0.05  # RFC 8445 §14.2: pace new checks 50 ms apart
IPV4_ONLY = frozenset({4})


def through_relay(cand: Candidate, families: Iterable[int]) -> bool:
    """Whether our relay may reach `cand`: a candidate of a family our allocation relays to
    (a relay answers 443 for another), and a public one (it refuses private peers anyway): not
    a host candidate, unless an IPv6 one beyond the link and the site (IPv6 has no NAT: a
    host's global address is where it is reached)."""
    ip = cand.address[0]
    if (6 if ":" in ip else 4) not in families:
        return False
    if cand.kind != CandidateType.HOST:
        return True
    if ":" not in ip:
        return False
    addr = ipaddress.IPv6Address(ip.split("%")[0])
    local = addr.is_link_local or addr.is_loopback or addr.is_multicast or addr.is_site_local
    return not (local or addr in ULA or addr.ipv4_mapped is not None)


ULA = ipaddress.IPv6Network("fc00::/7")  # unique local addresses (RFC 4193)


class Checklist:
    def __init__(
        self,
        nominator: Nominator,
        controlling: bool,
        now: float,
        relay_families: Iterable[int] = IPV4_ONLY,  # those our allocation relays to
    ):
        self.nominator = nominator
        self.relay_families = frozenset(relay_families)
        self.next_tick = now  # when pacing allows the next new check
        self.controlling = controlling  # priorities are computed from our role when formed
        self.pairs: dict[Key, Pair] = {}
        self._triggered: list[Key] = []

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs.values())

    def get(self, key: Key) -> Pair | None:
        return self.pairs.get(key)

    def form(self, candidates: Iterable[Candidate], bases: Iterable[Base]) -> None:
        for cand in sorted(candidates, key=lambda c: -c.priority):
            for base in bases:
                self.add(base, cand)

    def add(self, base: Base, cand: Candidate) -> Pair | None:
        """The pair of `base` and `cand`, formed if new; None for a pair this call won't use."""
        if base == Base.RELAY and not through_relay(cand, self.relay_families):
            return None
        if (base, cand.address) in self.pairs:  # a public host is both host and srflx: one pair
            return self.pairs[(base, cand.address)]
        pair = Pair.make(base, cand, self.controlling)
        if not self.nominator.wanted(pair.kind):
            return None
        self.pairs[pair.key] = pair
        return pair

    def learn(self, base: Base, src: Address, priority: int) -> Pair | None:
        """A peer-reflexive candidate: the peer's NAT mapped a check to an address nobody told
        us. Through our relay its public address was permitted, so it is reachable there."""
        cand = Candidate(CandidateType.PRFLX, src, priority)
        if base != Base.RELAY:
            return self.add(base, cand)
        pair = Pair.make(Base.RELAY, cand, self.controlling)
        if not self.nominator.wanted(pair.kind):
            return None
        self.pairs[pair.key] = pair
        return pair

    def trigger(self, key: Key) -> bool:
        """Queue a triggered check on `key` (answer a punch with a punch); False if queued."""
        if key in self._triggered:
            return False
        self._triggered.append(key)
        return True

    def untrigger(self, kind: PathKind) -> None:
        self._triggered = [k for k in self._triggered if self.pairs[k].kind != kind]

    def waiting(self, besides: PathKind | None) -> bool:
        """Whether a pair of a kind other than `besides` still waits for its first check."""
        return any(p.state == PairState.WAITING and p.kind != besides for p in self)

    def paced(self, now: float, besides: PathKind | None) -> Pair | None:
        """The next pair to check, if pacing (Ta) allows a check now."""
        if now < self.next_tick:
            return None
        self.next_tick = now + TA
        return self.next(besides)

    def next(self, besides: PathKind | None) -> Pair | None:
        """The pair to check next, of a kind other than `besides` (the selected path's)."""
        retry = (PairState.WAITING, PairState.FAILED)
        self._triggered = [k for k in self._triggered if self.pairs[k].state in retry]
        triggered = set(self._triggered)
        candidates = [self.pairs[k] for k in self._triggered] + [
            p
            for p in self
            if p.state == PairState.WAITING and p.key not in triggered and p.kind != besides
        ]
        if not candidates:
            return None
        pair = max(
            candidates, key=lambda p: (self.nominator.preferred(p), *self._order(p, triggered))
        )
        if pair.key in triggered:
            self._triggered.remove(pair.key)
        return pair

    @staticmethod
    def _order(pair: Pair, triggered: set[Key]) -> tuple[bool, bool, int]:
        """Among pairs of the preferred kind: checks to the peer's predicted ports first, in
        order, since each new destination takes our NAT's next port if ours maps in sequence
        too (both sides then meet port for port); then triggered ones; then by priority."""
        predicted = pair.remote.kind == CandidateType.PREDICTED and pair.base == Base.HOST
        return predicted, pair.key in triggered, pair.priority

    def unreached(self, kind: PathKind) -> str:
        """Why no pair of `kind` works, for the report."""
        tried = [p.describe() for p in self if p.kind == kind]
        if not tried:
            return "no candidates of this kind"
        return f"no answer from {', '.join(tried)}"
