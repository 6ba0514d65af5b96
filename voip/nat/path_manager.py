"""Which path carries the audio, sans-IO: failover, following the peer, and the way back.

The checks keep two proved pairs: the active one and the standby of the other kind, probed once
a second. This decides when the audio moves between them:

- *failover*: no audio on the active path for 200 ms (1 s in DTX silence, where a packet comes
  every 400 ms) moves it to the standby, if the standby answered its last probe (two dead
  paths are not swapped back and forth: the call ends when no audio has come for long enough);
- *following*: the controlled side moves to whichever proved pair the controlling side's audio
  now arrives on (the controlling side does not follow, or two sides that picked different
  relayed pairs would chase each other forever);
- *return*: after a failover to the relay, the controlling side goes back once the direct path
  has answered two probes in a row.

Media is accepted only from pairs the checks proved both ways; anything else is a stranger.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from voip.nat.checks import ConnectivityChecks
from voip.nat.pairs import Base, Pair, PathKind
from voip.wire.stun import Address

# At 50 packets a second, 200 ms without one on the active path is not jitter. The goal is an
# audible gap under 300 ms, detection included.
FAILOVER_AFTER = 0.2
FAILOVER_AFTER_DTX = 1.0  # in DTX silence a packet comes only every 400 ms: allow two missing
FOLLOW_AFTER = 0.06  # audio on another pair while the active is this quiet: the peer moved
RETURN_AFTER_PROBES = 2  # consecutive answered probes before going back to direct
SWITCH_HOLDOFF = 1.0  # no second switch within this long of the last


class Media(Enum):
    """What to do with a media datagram, by the pair it came on."""

    DROP = "drop"  # not from a proved pair: a stranger
    ACTIVE = "active"  # on the active path (perhaps just moved to, following the peer)
    ASIDE = "aside"  # a proved pair that is not active: a straggler from before a switch


@dataclass(frozen=True)
class Switched:
    pair: Pair  # now active
    why: str


class PathManager:
    def __init__(self, checks: ConnectivityChecks, *, return_to_direct: bool = True):
        self.checks = checks
        # With the relay forced, a move to the relay is where the audio belongs: no way back.
        self.return_to_direct = return_to_direct
        self.active: Pair | None = None
        self.switches = 0
        self.last_audio = 0.0  # when audio last arrived on the active path (or it became so)
        self.last_heard = 0.0  # when audio last arrived at all
        self._peer_in_dtx = False
        self._heard_any = False
        self._last_switch = 0.0
        self._failed_over = False  # on the relay because direct died: come back when it lives

    def select(self, pair: Pair, now: float) -> None:
        """The checks chose the first path."""
        self.active = pair
        self.last_audio = self.last_heard = now

    def heard(self, now: float, comfort_noise: bool) -> None:
        """Audio arrived on the active path (a comfort-noise update, in DTX)."""
        self.last_audio = self.last_heard = now
        self._peer_in_dtx = comfort_noise
        self._heard_any = True

    def classify(
        self, key: tuple[Base, Address], rtcp: bool, now: float
    ) -> tuple[Media, Switched | None]:
        """Where a media datagram that arrived on pair `key` belongs; a switch if it shows the
        peer has moved."""
        if self.active is None:
            return Media.DROP, None
        if key == self.active.key:
            return Media.ACTIVE, None
        pair = self.checks.pairs.get(key)
        if pair is None or not pair.valid:
            return Media.DROP, None
        if rtcp or self.checks.controlling or now - self.last_audio < FOLLOW_AFTER:
            return Media.ASIDE, None  # played all the same: it came on a proved pair
        return Media.ACTIVE, self._switch(now, "the peer moved to it", to=pair)

    def tick(self, now: float) -> Switched | None:
        """Fail over when the active path goes quiet; come back when direct lives again."""
        standby = self.checks.standby
        if standby is None or not self._heard_any or now - self._last_switch < SWITCH_HOLDOFF:
            return None  # nothing to move to, or the peer has not started sending yet
        quiet = now - self.last_audio
        limit = FAILOVER_AFTER_DTX if self._peer_in_dtx else FAILOVER_AFTER
        if quiet > limit and self.checks.liveness.standby_streak >= 1:
            return self._switch(now, f"no audio on it for {1000 * quiet:.0f} ms")
        if (
            self._failed_over
            and self.checks.controlling
            and standby.kind == PathKind.DIRECT
            and self.checks.liveness.standby_streak >= RETURN_AFTER_PROBES
        ):
            return self._switch(now, "the direct path answers again")
        return None

    def _switch(self, now: float, why: str, to: Pair | None = None) -> Switched | None:
        if self.active is None:
            return None
        new = self.checks.switch(now, to)
        if new is None:
            return None
        self.active = new
        self.switches += 1
        self._last_switch = self.last_audio = now
        self._failed_over = self.return_to_direct and new.kind == PathKind.RELAYED
        return Switched(new, why)
