"""After a path is chosen: the active pair and the standby, kept alive and measured, sans-IO.

Consent (RFC 7675): the active pair is checked every CONSENT_INTERVAL; no answer for
CONSENT_TIMEOUT and consent has expired. The standby, the best valid pair of the other kind, is
probed once a second, so both paths are measured side by side on the same call; a probe is
never retransmitted (an unanswered one is a lost packet, not a slow one). `standby_streak`
counts consecutive answered probes, which the path manager reads before moving audio there.

When the audio stops and there is nowhere to move it, the path manager asks for both pairs to be
checked at once (`hurry`) rather than at their times; when neither answers (`gone`), the peer is
out of reach on every path this call has, and waiting out the consent timeout would only prolong
the silence.
"""

from __future__ import annotations

from voip.nat.pairs import Pair
from voip.wire.sans_io import earliest

CONSENT_INTERVAL = 2.0  # RFC 7675 says 5 s +-20 %; checks also give the path's RTT, so more often
CONSENT_TIMEOUT = 30.0  # RFC 7675 §5.1: no answer for 30 s and consent has expired
PROBE_INTERVAL = 1.0  # the standby path: one probe a second
PROBE_TIMEOUT = 2.0  # a probe unanswered this long is lost (probes are never retransmitted)


class Liveness:
    def __init__(self) -> None:
        self.selected: Pair | None = None
        self.standby: Pair | None = None
        self.standby_streak = 0  # consecutive answered probes on the standby pair
        self.active_lost = 0  # consecutive consent checks on the active pair left unanswered
        self.standby_lost = 0  # consecutive probes of the standby left unanswered
        self._last_consent = 0.0
        self._next_consent: float | None = None
        self._next_probe: float | None = None

    def next_deadline(self) -> float | None:
        return earliest(self._next_consent, self._next_probe)

    def select(self, pair: Pair, now: float) -> None:
        self.selected = pair
        self._last_consent = now
        self._next_consent = now + CONSENT_INTERVAL

    def offer_standby(self, best: Pair | None, now: float) -> bool:
        """Make `best` the standby if it is a new one; True when it is."""
        if best is None or best is self.standby:
            return False
        self.standby = best
        self.standby_lost = 0
        self._next_probe = now + PROBE_INTERVAL
        return True

    def switch(self, to: Pair | None, now: float) -> Pair | None:
        """`to` becomes active and the active pair the standby; None if it cannot (no path
        yet, or `to` not proved both ways, or already active)."""
        if self.selected is None or to is None or not to.valid or to is self.selected:
            return None
        self.selected, self.standby = to, self.selected
        self.standby_streak = self.active_lost = self.standby_lost = 0
        self.select(to, now)
        self._next_probe = now + PROBE_INTERVAL / 4  # learn soon whether the old path lives
        return to

    def due(self, now: float) -> tuple[list[Pair], bool]:
        """(pairs to check now, whether consent on the active pair has just expired)."""
        pairs, expired = [], False
        consent_due = self._next_consent is not None and now >= self._next_consent
        if self.selected is not None and consent_due:
            self._next_consent = now + CONSENT_INTERVAL
            pairs.append(self.selected)
            if now - self._last_consent > CONSENT_TIMEOUT:
                self._next_consent = None
                expired = True
        if self.standby is not None and self._next_probe is not None and now >= self._next_probe:
            self._next_probe = now + PROBE_INTERVAL
            pairs.append(self.standby)
        return pairs, expired

    def hurry(self, now: float) -> None:
        """Check the active pair and the standby now rather than at their times (the audio
        stopped and cannot move: do they still answer?)."""
        if self._next_consent is not None:
            self._next_consent = now
        if self.standby is not None and self._next_probe is not None:
            self._next_probe = now

    @property
    def active_heard(self) -> float:
        """When the peer last answered, or checked us, on the active pair (or it became so)."""
        return self._last_consent

    @property
    def gone(self) -> bool:
        """The last check on the active pair went unanswered, and so did the last probe of the
        standby if there is one: the peer answers on no path this call has."""
        return self.active_lost > 0 and (self.standby is None or self.standby_lost > 0)

    def heard(self, pair: Pair, now: float) -> None:
        """An authenticated check from the peer, or an answer to ours, on `pair`."""
        if pair is self.selected:
            self._last_consent = now
            self.active_lost = 0
        elif pair is self.standby:
            self.standby_lost = 0

    def answered(self, pair: Pair, now: float) -> None:
        """A probe on `pair` was answered."""
        if pair is self.selected:
            self.heard(pair, now)
        elif pair is self.standby:
            self.standby_streak += 1
            self.standby_lost = 0

    def lost(self, pair: Pair) -> bool:
        """A probe on `pair` went unanswered; True when it counts as a loss (not the active)."""
        if self.selected is None:
            return False
        if pair is self.selected:
            self.active_lost += 1
            return False
        if pair is self.standby:
            self.standby_streak = 0
            self.standby_lost += 1
        return True
