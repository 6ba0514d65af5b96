"""callpeer's choice among valid pairs: which kind to check first, what to nominate and when.

The RFC 8445 engine (voip/nat/checks.py) finds which pairs work; this says which one carries the
call, the way pion/ice keeps its selectors apart from its agent:

- the kind we would rather use is checked first: direct, unless the relay is forced or both
  NATs are known to map per destination (then the relay, and host pairs on a shared LAN);
- the controlling side nominates the lowest-RTT valid pair of the preferred kind (of pairs
  about as fast, an IPv6 one, RFC 8421, then the highest priority) as soon as no pair of that
  kind left could beat it (every pair checked, each unanswered one given 1.5 times the best
  RTT), and at most 200 ms after the first valid pair;
- a relayed pair is nominated when no direct pair can work, or RELAY_GRACE after the first
  valid relayed pair if direct pairs are still being tried (NOMINATE_AFTER in an ICE restart,
  where the audio has already stopped: it goes back to direct once a direct pair proves itself,
  voip/nat/path_manager.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from voip.nat.pairs import Pair
from voip.nat.pairs import PairState
from voip.nat.pairs import PathKind
from voip.nat.pairs import RelayMode
from voip.wire.candidates import CandidateType

NOMINATE_AFTER = 0.2  # longest wait, after the first valid pair, for a faster one to prove itself
# A pair still unanswered this long after its first check, relative to the best RTT seen, cannot
# beat the best: 1.5 x RTT plus a little for the peer's scheduling.
HOPELESS_FACTOR = 1.5
HOPELESS_MARGIN = 0.005
RELAY_GRACE = 1.5  # with a relay pair valid, how long to wait for a direct one before using it
# Valid pairs within this of the fastest count as fast as it (x the fastest's RTT, + margin).
SAME_RTT_FACTOR = 1.25
SAME_RTT_MARGIN = 0.002
IPV6_HEAD_START = 0.010  # s an IPv6 pair's RTT counts less when compared (see best)


# Remote candidates that need no punching: the peer's LAN, and a port its router opened for us.
NOT_PUNCHED = frozenset({CandidateType.HOST, CandidateType.MAPPED})


class Nominator:
    def __init__(
        self, relay_mode: RelayMode, punch_hopeless: bool, relay_grace: float = RELAY_GRACE
    ):
        self.relay_mode = relay_mode
        self.relay_grace = relay_grace
        # Both NATs map per destination (learned at registration): no server-reflexive pair
        # can work, so the relay is used as soon as it answers instead of after RELAY_GRACE.
        self.punch_hopeless = punch_hopeless
        self.first_valid_at: dict[PathKind, float] = {}

    def wanted(self, kind: PathKind) -> bool:
        """Whether pairs of this kind are checked at all."""
        return not (kind == PathKind.RELAYED and self.relay_mode == RelayMode.OFF)

    def preferred(self, pair: Pair) -> bool:
        """Whether to check this pair before the others."""
        if self.relay_mode == RelayMode.FORCE:
            return pair.kind == PathKind.RELAYED
        if self.punch_hopeless:  # the peer's public addresses cannot work: relay and LAN first
            return pair.kind == PathKind.RELAYED or pair.remote.kind in NOT_PUNCHED
        return pair.kind == PathKind.DIRECT

    def valid(self, pair: Pair, now: float) -> None:
        self.first_valid_at.setdefault(pair.kind, now)

    @staticmethod
    def best(pairs: Iterable[Pair], kind: PathKind) -> Pair | None:
        """The valid pair of `kind` to use: of those about as fast as the fastest, an IPv6 one
        (RFC 8421: IPv6 where it works), then the highest priority. One RTT sample apart is
        noise, not a reason to pick IPv4 over IPv6, or a relayed LAN peer over its host; and an
        IPv6 pair, checked first, often has one sample only, taken while both ends were still
        busy with the introduction: it is held IPV6_HEAD_START faster than it measured."""
        valid = [p for p in pairs if p.valid and p.kind == kind and p.rtt is not None]
        if not valid:
            return None

        def rtt(p: Pair) -> float:
            six = ":" in p.remote.address[0]
            return max(0.0, (p.rtt or 0.0) - (IPV6_HEAD_START if six else 0.0))

        near = min(rtt(p) for p in valid) * SAME_RTT_FACTOR + SAME_RTT_MARGIN
        return max(
            (p for p in valid if rtt(p) <= near),
            key=lambda p: (":" in p.remote.address[0], p.priority, -rtt(p)),
        )

    def _settled_time(self, pairs: list[Pair], kind: PathKind) -> float | None:
        """When no pair of `kind` left could beat the best valid one of that kind."""
        valid = [p for p in pairs if p.valid and p.kind == kind and p.rtt is not None]
        if not valid:
            return None
        first = self.first_valid_at[kind]
        latest = first + NOMINATE_AFTER
        pending = [p for p in pairs if p.kind == kind and p.pending]
        if any(p.state == PairState.WAITING for p in pending):
            return latest
        patience = HOPELESS_FACTOR * min(p.rtt or 0.0 for p in valid) + HOPELESS_MARGIN
        hopeless_at = [p.first_check_at + patience for p in pending if p.first_check_at is not None]
        return min(latest, max(hopeless_at, default=first))

    def when(self, pairs: Iterable[Pair]) -> float | None:
        """When the controlling side should nominate, or None for not yet."""
        choice = self.choice(list(pairs))
        return None if choice is None else choice[0]

    def due(self, pairs: Iterable[Pair], now: float) -> Pair | None:
        """The pair to nominate now, if it is time."""
        pairs = list(pairs)
        choice = self.choice(pairs)
        if choice is None or now < choice[0]:
            return None
        return self.best(pairs, choice[1])

    def choice(self, pairs: list[Pair]) -> tuple[float, PathKind] | None:
        """(when, kind) to nominate, or None for not yet. Only the controlling side asks."""
        direct = self._settled_time(pairs, PathKind.DIRECT)
        relayed = self._settled_time(pairs, PathKind.RELAYED)
        if self.relay_mode == RelayMode.FORCE:
            return None if relayed is None else (relayed, PathKind.RELAYED)
        if direct is not None:
            return direct, PathKind.DIRECT
        if relayed is None:
            return None
        direct_hopeless = all(
            p.state == PairState.FAILED for p in pairs if p.kind == PathKind.DIRECT
        )
        if direct_hopeless or self.punch_hopeless:
            return relayed, PathKind.RELAYED
        grace = self.first_valid_at[PathKind.RELAYED] + self.relay_grace
        return max(relayed, grace), PathKind.RELAYED
