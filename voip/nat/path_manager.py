"""Which path carries the audio, sans-IO: failover, following the peer, and the way back.

The checks keep two proved pairs: the active one and the standby of the other kind, probed once
a second. This decides when the audio moves between them:

- *failover*: no audio on the active path for 200 ms (1 s in DTX silence, where a packet comes
  every 400 ms) moves it to the standby, if the standby answered its last probe, once until
  audio comes again (two dead paths, or two live ones from a peer that sends nothing, are not
  swapped back and forth);
- *following*: the controlled side moves to whichever proved pair the controlling side's audio
  now arrives on (the controlling side does not follow, or two sides that picked different
  relayed pairs would chase each other forever);
- *return*: after a failover to the relay, the controlling side goes back once the direct path
  has answered two probes in a row; when the relay was the first path (direct was still being
  punched, as birthday punching takes seconds), at once when a direct pair proves itself;
- *giving up*: when the audio stops and cannot move, both pairs are checked at once; if neither
  answers (2 s, the probe timeout), the peer is out of reach on every path and the call ends
  saying so, rather than after the media timeout (10 s) or consent's (RFC 7675: 30 s). A peer
  that answers but sends no audio still gets the media timeout. The price: an outage of every
  path longer than GIVE_UP_AFTER (a network that would have come back) ends the call too;
- *restart*: when the audio stops, cannot move, and the active pair does not answer the check
  sent at once (within three round trips), the call asks the rendezvous to introduce both sides
  again (`Restart`; an ICE restart, voip/nat/connector.py): our NAT may have forgotten its
  mappings, or our host moved. Once per silence: a peer that answers but sends nothing is not
  helped by meeting again. The fresh checks replace the old (`rejoined`), the old active
  pair carries on until they choose a path (`restarted`), and the give-up rule holds for them
  too: no answer from any of their pairs by GIVE_UP_AFTER and the call ends.

Media is accepted only from pairs the checks proved both ways; anything else is a stranger.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from voip.nat.checks import ConnectivityChecks
from voip.nat.pairs import Base
from voip.nat.pairs import Pair
from voip.nat.pairs import PairState
from voip.nat.pairs import PathKind
from voip.wire.stun import Address

# At 50 packets a second, 200 ms without one on the active path is not jitter. The goal is an
# audible gap under 300 ms, detection included.
FAILOVER_AFTER = 0.2
FAILOVER_AFTER_DTX = 1.0  # in DTX silence a packet comes only every 400 ms: allow two missing
FOLLOW_AFTER = 0.06  # audio on another pair while the active is this quiet: the peer moved
RETURN_AFTER_PROBES = 2  # consecutive answered probes before going back to direct
SWITCH_HOLDOFF = 1.0  # no second switch within this long of the last
# No audio for this long and no answer on any path: the call is over (it takes a lost check on
# each path as well, so in practice the probe timeout after the audio stopped: 2.2 s).
GIVE_UP_AFTER = 2.0
RESTART_WAIT = 0.3  # s at least, after the check sent at once, before meeting again
WAYS = {PathKind.DIRECT: "directly", PathKind.RELAYED: "through the relay"}  # a path, in words


class Media(Enum):
    """What to do with a media datagram, by the pair it came on."""

    DROP = "drop"  # not from a proved pair: a stranger
    ACTIVE = "active"  # on the active path (perhaps just moved to, following the peer)
    ASIDE = "aside"  # a proved pair that is not active: a straggler from before a switch


@dataclass(frozen=True)
class Switched:
    pair: Pair  # now active
    why: str
    stopped: bool = False  # a failover: the audio stopped on the old path


@dataclass(frozen=True)
class Checking:
    """No audio and nowhere to move it: both pairs are being checked now, ahead of time."""


@dataclass(frozen=True)
class Restart:
    """No audio, nowhere to move it, and no answer on the active pair: meet the peer again."""


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
        self._relay_first = False  # on the relay since the start: go direct once it proves itself
        self._checked: float | None = None  # when both pairs were checked in this silence
        self._restarted = False  # asked to meet again in this silence
        self._moved_in_silence = False  # failed over, and no audio has come since
        self._rejoining = False  # fresh checks from a restart, which have chosen no path yet

    def select(self, pair: Pair, now: float) -> None:
        """The checks chose the first path."""
        self.active = pair
        self.last_audio = self.last_heard = now
        self._relay_first = self.return_to_direct and pair.kind == PathKind.RELAYED

    def rejoined(self, checks: ConnectivityChecks) -> None:
        """An ICE restart brought fresh checks; the active pair stays until they choose."""
        self.checks = checks
        # Met again: the fresh checks' liveness has heard nothing yet, which is no reason to
        # ask for another restart in this silence.
        self._rejoining = self._restarted = True

    def restarted(self, pair: Pair, now: float) -> Switched:
        """The fresh checks chose `pair`: the audio goes there."""
        self._rejoining = self._moved_in_silence = False
        return self._became(pair, now, "the paths went quiet and the call met again")

    def heard(self, now: float, comfort_noise: bool) -> None:
        """Audio arrived on the active path (a comfort-noise update, in DTX)."""
        self.last_audio = self.last_heard = now
        self._peer_in_dtx = comfort_noise
        self._heard_any = True
        self._checked, self._restarted, self._moved_in_silence = None, False, False

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

    def tick(self, now: float) -> Switched | Checking | Restart | None:
        """Fail over when the active path goes quiet; come back when direct lives again; when
        the audio stops and cannot move, check both pairs now (`Checking`), and meet again if
        the active one does not answer (`Restart`)."""
        if not self._heard_any:
            return None  # the peer has not started sending yet
        quiet = now - self.last_audio
        limit = FAILOVER_AFTER_DTX if self._peer_in_dtx else FAILOVER_AFTER
        if (moved := self._move(now, quiet, limit)) is not None:
            return moved
        if quiet > limit and self._checked is None:
            self._checked = now
            self.checks.liveness.hurry(now)
            return Checking()
        if self._checked is not None and not self._restarted and self.active is not None:
            wait = max(RESTART_WAIT, 3 * (self.active.rtt or 0.0))
            if now > self._checked + wait and self.checks.liveness.active_heard < self._checked:
                self._restarted = True
                return Restart()
        return None

    def gone(self, now: float, peer: str, media_timeout: float) -> str | None:
        """Why the call is over, in a user's words: no audio for `media_timeout`, or none for
        a moment and no answer on any path; None while it is not."""
        quiet = now - self.last_heard
        liveness = self.checks.liveness
        unanswered = self._rejoining and not any(
            p.peer_checked or p.state == PairState.SUCCEEDED for p in self.checks.pairs.values()
        )
        if quiet > GIVE_UP_AFTER and (liveness.gone or unanswered):
            ways = dict.fromkeys(WAYS[p.kind] for p in (self.active, liveness.standby) if p)
            answer = (
                "on any path, even after meeting again through the rendezvous"
                if unanswered
                else " or ".join(ways)
            )
            return (
                f"no audio from {peer} for {quiet:.0f} s, and no answer {answer}: "
                f"the network between you and {peer} went away, or {peer} did"
            )
        if quiet > media_timeout:
            return f"no audio from {peer} for {media_timeout:.0f} s"
        return None

    def _move(self, now: float, quiet: float, limit: float) -> Switched | None:
        standby = self.checks.standby
        if standby is None or now - self._last_switch < SWITCH_HOLDOFF or self._moved_in_silence:
            return None  # nothing to move to, just moved, or moved and still no audio
        if quiet > limit and self.checks.liveness.standby_streak >= 1:
            moved = self._switch(now, f"no audio on it for {1000 * quiet:.0f} ms", stopped=True)
            self._moved_in_silence = moved is not None
            return moved
        if not self.checks.controlling or standby.kind != PathKind.DIRECT:
            return None
        if self._relay_first:
            return self._switch(now, "the direct path was found")
        if self._failed_over and self.checks.liveness.standby_streak >= RETURN_AFTER_PROBES:
            return self._switch(now, "the direct path answers again")
        return None

    def _switch(
        self, now: float, why: str, to: Pair | None = None, stopped: bool = False
    ) -> Switched | None:
        if self.active is None:
            return None
        new = self.checks.switch(now, to)
        return None if new is None else self._became(new, now, why, stopped)

    def _became(self, new: Pair, now: float, why: str, stopped: bool = False) -> Switched:
        self.active = new
        self.switches += 1
        self._last_switch = self.last_audio = now
        self._checked = None
        self._failed_over = self.return_to_direct and new.kind == PathKind.RELAYED
        self._relay_first = False
        return Switched(new, why, stopped)
