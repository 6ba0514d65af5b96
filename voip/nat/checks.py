"""Simultaneous hole punching as ICE connectivity checks, sans-IO (RFC 8445 §7, RFC 7675).

Both sides start at the moment the rendezvous introduces them; each sends paced,
authenticated Binding checks on every candidate pair. The first check through a NAT opens its
mapping for the other side's checks, and a check received triggers one back at once (RFC 8445
§7.3.1.4), so a path usually opens one round trip after the slower side starts.

One socket gives one host base; a TURN allocation on it gives a second, relayed base. A pair
is (base, remote candidate). Pairs are of two kinds: *direct* (host base, remote not relayed)
and *relay* (anything through a relay). The controlling side nominates the active pair: the
lowest-RTT direct pair, or with the relay forced, or when no direct pair answers, the best
relay pair. The best valid pair of the other kind stays the *standby* and is probed all call
long, so both paths are measured side by side on the same call.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from dataclasses import field

from voip.nat.check_messages import Credentials
from voip.nat.check_messages import authentic
from voip.nat.checklist import Checklist
from voip.nat.checklist import Key
from voip.nat.liveness import PROBE_TIMEOUT
from voip.nat.liveness import Liveness
from voip.nat.nominator import RELAY_GRACE
from voip.nat.nominator import Nominator
from voip.nat.pairs import Base
from voip.nat.pairs import Pair
from voip.nat.pairs import PairState
from voip.nat.pairs import PathKind
from voip.nat.pairs import RelayMode
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.candidates import candidate_priority
from voip.wire.sans_io import EventQueue
from voip.wire.sans_io import earliest
from voip.wire.stun import Address
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.transactions import Transaction
from voip.wire.transactions import TransactionTable

HOST, RELAY, BIRTHDAY = Base.HOST, Base.RELAY, Base.BIRTHDAY  # local bases
DIRECT, RELAYED = PathKind.DIRECT, PathKind.RELAYED  # kinds of path
Send = tuple[bytes, Address, Base]  # datagram, destination, base to send it from

CHECK_RTO = 0.2  # lower than RFC 8445's 500 ms floor: a handful of pairs, not hundreds
CHECK_RC = 7
CHECK_RM = 8

__all__ = [
    "BIRTHDAY",
    "DIRECT",
    "HOST",
    "RELAY",
    "RELAYED",
    "Base",
    "Pair",
    "PairState",
    "PathKind",
    "RelayMode",
]


@dataclass(frozen=True)
class PairEvent:
    """News of one pair: the three kinds below, told apart by type."""

    pair: Pair


class PairValid(PairEvent):
    """The pair became valid (a check on it was answered): it can carry media."""


class PathSelected(PairEvent):
    """The pair was chosen (nominated, by us or the peer): the audio goes there."""


class StandbyChanged(PairEvent):
    """The pair is the new standby: the best valid one of the other kind, kept for failover."""


@dataclass(frozen=True)
class ChecksFailed:
    reason: str
    tried: tuple[str, ...]


@dataclass(frozen=True)
class RttSample:
    kind: PathKind
    rtt: float
    active: bool  # on the path carrying audio, or on the standby


@dataclass(frozen=True)
class ProbeLost:
    kind: PathKind


@dataclass(frozen=True)
class ConsentLost:
    remote: Address


@dataclass(frozen=True)
class PathSwitched:
    """The active and standby pairs traded places (failover, or the way back)."""

    active: Pair
    standby: Pair


CheckEvent = (
    PairValid
    | PathSelected
    | StandbyChanged
    | ChecksFailed
    | RttSample
    | ProbeLost
    | ConsentLost
    | PathSwitched
)


@dataclass(frozen=True)
class _CheckCtx:
    key: Key
    nominate: bool = False
    probe: bool = False  # consent on the active pair, or a probe of the standby


@dataclass
class ConnectivityChecks(EventQueue[CheckEvent]):
    local_ufrag: str
    local_pwd: str
    remote_ufrag: str
    remote_pwd: str
    controlling: bool
    remote_candidates: tuple[Candidate, ...]
    now: float
    timeout: float = 10.0
    relay_mode: RelayMode = RelayMode.AUTO
    bases: tuple[Base, ...] = (Base.HOST,)
    punch_hopeless: bool = False  # both NATs map per destination (see the Nominator)
    relay_grace: float = RELAY_GRACE  # wait for a direct pair before nominating a relayed one
    relay_families: frozenset[int] = frozenset({4})  # those our relay allocation relays to
    tiebreaker: int = field(default_factory=lambda: struct.unpack("!Q", os.urandom(8))[0])
    ignored: int = 0  # checks dropped for bad credentials or a bad fingerprint

    def __post_init__(self) -> None:
        super().__init__()
        self.credentials = Credentials(
            self.local_ufrag, self.local_pwd, self.remote_ufrag, self.remote_pwd
        )
        mode, hopeless = RelayMode(self.relay_mode), self.punch_hopeless
        self.nominator = Nominator(mode, hopeless, self.relay_grace)
        self.checklist = Checklist(self.nominator, self.controlling, self.now, self.relay_families)
        self.checklist.form(self.remote_candidates, self.bases)
        self.pairs = self.checklist.pairs
        self.liveness = Liveness()
        self._txns: TransactionTable[_CheckCtx] = TransactionTable()
        self._started, self._failed = self.now, False
        self._nominating: Key | None = None

    @property
    def selected(self) -> Pair | None:
        return self.liveness.selected

    standby = property(lambda self: self.liveness.standby)

    def next_deadline(self) -> float | None:
        if self._failed:
            return None
        return earliest(
            self._txns.next_deadline(),
            self.liveness.next_deadline(),
            self.nominator.when(self.checklist) if self._nominates() else None,
            self.checklist.next_tick if self._still_checking() else None,
        )

    def poll(self, now: float) -> list[Send]:
        if self._failed:
            return []
        out: list[Send] = []
        resend, failed = self._txns.poll(now)
        out += [(t.data, t.dest, t.context.key[0]) for t in resend]
        for txn in failed:
            self._on_check_timeout(txn.context, now)
        out += self._paced_check(now)
        if self.selected is None:
            self._maybe_nominate(now, out)
            if self.selected is None and now - self._started > self.timeout and not self._failed:
                self._fail(f"no path answered within {self.timeout:.0f} s")
            return out
        probes, expired = self.liveness.due(now)
        out += [self._check(pair.key, now, probe=True) for pair in probes]
        if expired:
            self._events.append(ConsentLost(self.selected.remote.address))
        return out

    def handle(
        self, msg: Message, src: Address, now: float, base: Base = Base.HOST
    ) -> list[Send] | None:
        """Handle a Binding check or its answer arriving on `base`; None when not ours."""
        if msg.method != Method.BINDING:
            return None
        if msg.cls == Class.REQUEST and msg.has(Attr.USERNAME):
            try:
                return self._on_request(msg, src, now, base)
            except StunError:  # a USERNAME that is not UTF-8, a PRIORITY of the wrong size
                self.ignored += 1
                return []
        if msg.cls in (Class.SUCCESS, Class.ERROR) and (txn := self._txns.match(msg)):
            self._on_response(msg, src, txn, now)
            out: list[Send] = []
            if self.selected is None:
                self._maybe_nominate(now, out)
            return out
        return None

    def _still_checking(self) -> bool:
        """Whether there are pairs worth a new check: before selection, or for the standby."""
        if self._failed or self.selected is None:
            return not self._failed
        return self.standby is None and self.checklist.waiting(besides=self.selected.kind)

    def _paced_check(self, now: float) -> list[Send]:
        """The next check, if pacing (Ta) allows one now."""
        besides = self.selected.kind if self.selected is not None else None
        pair = self.checklist.paced(now, besides) if self._still_checking() else None
        return [] if pair is None else [self._check(pair.key, now)]

    def _check(self, key: Key, now: float, *, nominate: bool = False, probe: bool = False) -> Send:
        base, remote = key
        tid, data = self.credentials.check(self.controlling, self.tiebreaker, nominate)
        ctx = _CheckCtx(key, nominate, probe)
        # Probes are never retransmitted: an unanswered one is a lost packet, not a slow one.
        schedule = (PROBE_TIMEOUT, 1, 1) if probe else (CHECK_RTO, CHECK_RC, CHECK_RM)
        txn = Transaction(tid, data, remote, ctx, *schedule)
        if not probe:
            pair = self.pairs[key]
            pair.state = PairState.IN_PROGRESS
            pair.first_check_at = now if pair.first_check_at is None else pair.first_check_at
        return self._txns.start(now, txn), remote, base

    def _on_request(self, msg: Message, src: Address, now: float, base: Base) -> list[Send]:
        if not self.credentials.is_for_us(msg):
            self.ignored += 1  # a stranger, or a stale call: never answer, never learn from it
            return []
        # RFC 8445 §7.3.1.1 role conflict: the larger tie-breaker stays controlling.
        peer_controlling = msg.u64(Attr.ICE_CONTROLLING)
        if peer_controlling is not None and self.controlling:
            if self.tiebreaker >= peer_controlling:
                return [(self.credentials.role_conflict(msg), src, base)]
            self.controlling = False
        pair = self.pairs.get((base, src))
        if pair is None:  # peer-reflexive: the peer's NAT mapped it to an address nobody told us
            prio = msg.u32(Attr.PRIORITY) or candidate_priority(CandidateType.PRFLX)
            pair = self.checklist.learn(base, src, prio)
        out: list[Send] = [(self.credentials.answer(msg, src), src, base)]
        if pair is None:
            return out  # answered, but a kind of path this call does not use
        self.liveness.heard(pair, now)
        pair.peer_checked = True
        if msg.has(Attr.USE_CANDIDATE) and not self.controlling:
            pair.peer_nominated = True
        # A punch for a punch; at once, unpaced, if in progress: ours met a shut NAT (§7.3.1.4)?
        if pair.state == PairState.IN_PROGRESS:
            out.append(self._check(pair.key, now))
        elif pair.state != PairState.SUCCEEDED and self.checklist.trigger(pair.key):
            out += self._paced_check(now)
        self._note_valid(pair, now)
        if self.selected is None:
            self._maybe_nominate(now, out)
        return out

    def _on_response(
        self, msg: Message, src: Address, txn: Transaction[_CheckCtx], now: float
    ) -> None:
        ctx = txn.context
        pair = self.pairs[ctx.key]
        if not authentic(msg, self.remote_pwd):
            self.ignored += 1
            self._txns.restore(txn)  # a forged answer must not end the real transaction
            return
        if src != ctx.key[1]:  # RFC 8445 §7.2.5.2.1: responses must come back symmetrically
            pair.state = PairState.FAILED
            return
        rtt = now - txn.last_sent
        if ctx.probe:
            self.liveness.answered(pair, now)
            self._events.append(RttSample(pair.kind, rtt, self.selected is pair))
            return
        if msg.cls == Class.ERROR:
            err = msg.error()
            if err and err[0] == 487:  # role conflict: switch role and try again
                self.controlling = not self.controlling
                self.checklist.trigger(ctx.key)
            pair.state = PairState.FAILED
            return
        pair.state = PairState.SUCCEEDED
        pair.rtt = rtt if pair.rtt is None else min(pair.rtt, rtt)
        pair.mapped = msg.xor_address()
        self._events.append(RttSample(pair.kind, rtt, self.selected is pair))
        if ctx.nominate:
            self._select(pair, now)
            return
        self._note_valid(pair, now)

    def _note_valid(self, pair: Pair, now: float) -> None:
        if not pair.valid:
            return
        self.nominator.valid(pair, now)
        self._events.append(PairValid(pair))
        if self.selected is None:
            if not self.controlling and pair.peer_nominated:
                self._select(pair, now)
        elif pair.kind != self.selected.kind:
            self._update_standby(now)

    def _nominates(self) -> bool:
        """Whether a nomination is ours to make now: controlling, none chosen or under way."""
        return self.controlling and self._nominating is None and self.selected is None

    def _maybe_nominate(self, now: float, out: list[Send]) -> None:
        best = self.nominator.due(self.checklist, now) if self._nominates() else None
        if best is not None:
            self._nominating = best.key
            out.append(self._check(best.key, now, nominate=True))

    def _select(self, pair: Pair, now: float) -> None:
        if self.selected is not None:
            return
        self.liveness.select(pair, now)
        self.checklist.untrigger(pair.kind)
        # Unanswered checks on other pairs of the same kind are moot once a path is chosen.
        moot = [t for t in self._txns.pending() if t.context.key != pair.key]
        for txn in (t for t in moot if self.pairs[t.context.key].kind == pair.kind):
            self._txns.cancel(txn.transaction_id)
        self._events.append(PathSelected(pair))
        self._update_standby(now)

    def switch(self, now: float, to: Pair | None = None) -> Pair | None:
        """Make `to` (by default the standby) active, and the active pair the standby.

        `to` may be any valid pair: the peer may have moved to a relayed pair other than the
        one we would have picked (each side relays through its own allocation)."""
        old = self.selected
        if (to := self.liveness.switch(to or self.standby, now)) is not None and old is not None:
            self._events.append(PathSwitched(to, old))
        return to

    def _update_standby(self, now: float) -> None:
        assert self.selected is not None
        other = RELAYED if self.selected.kind == DIRECT else DIRECT
        best = self.nominator.best(self.checklist, other)
        if self.liveness.offer_standby(best, now):
            assert best is not None
            self._events.append(StandbyChanged(best))

    def _on_check_timeout(self, ctx: _CheckCtx, now: float) -> None:
        pair = self.pairs[ctx.key]
        if ctx.probe:
            if self.liveness.lost(pair):
                self._events.append(ProbeLost(pair.kind))
            return
        if ctx.nominate or pair.state != PairState.SUCCEEDED:  # not a stale check's timeout
            pair.state = PairState.FAILED
        if ctx.nominate:
            self._nominating = None  # nominate the next best
        if self.selected is None and all(p.state == PairState.FAILED for p in self.checklist):
            self._fail("every candidate was tried and none answered")

    def _fail(self, reason: str) -> None:
        self._failed = True
        self._txns.cancel_all()
        self._events.append(ChecksFailed(reason, tuple(p.describe() for p in self.checklist)))
