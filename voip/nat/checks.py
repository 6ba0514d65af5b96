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
from dataclasses import dataclass, field
from enum import Enum

from voip.wire.candidates import Candidate, CandidateType, candidate_priority, pair_priority
from voip.wire.stun import (
    Address,
    Attr,
    Class,
    Message,
    Method,
    StunError,
    check_fingerprint,
    check_integrity,
    encode,
    encode_error_code,
    encode_xor_address,
    text,
    u32,
    u64,
)
from voip.wire.transactions import Transaction, TransactionTable

HOST, RELAY = "host", "relay"  # local bases
DIRECT, RELAYED = "direct", "relay"  # kinds of path
Send = tuple[bytes, Address, str]  # datagram, destination, base to send it from

TA = 0.05  # RFC 8445 §14.2: pace new checks 50 ms apart
CHECK_RTO = 0.2  # lower than RFC 8445's 500 ms floor: a handful of pairs, not hundreds
CHECK_RC = 7
CHECK_RM = 8
NOMINATE_AFTER = 0.2  # longest wait, after the first valid pair, for a faster one to prove itself
# A pair still unanswered this long after its first check, relative to the best RTT seen, cannot
# beat the best: 1.5 x RTT plus a little for the peer's scheduling.
HOPELESS_FACTOR = 1.5
HOPELESS_MARGIN = 0.005
RELAY_GRACE = 1.5  # with a relay pair valid, how long to wait for a direct one before using it
CONSENT_INTERVAL = 2.0  # RFC 7675 says 5 s +-20 %; checks also give the path's RTT, so more often
CONSENT_TIMEOUT = 30.0  # RFC 7675 §5.1: no answer for 30 s and consent has expired
PROBE_INTERVAL = 1.0  # the standby path: one probe a second
PROBE_TIMEOUT = 2.0  # a probe unanswered this long is lost (probes are never retransmitted)


class PairState(Enum):
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass
class Pair:
    base: str
    remote: Candidate
    priority: int
    state: PairState = PairState.WAITING
    peer_checked: bool = False  # an authenticated check from the peer arrived on this pair
    peer_nominated: bool = False  # that check carried USE-CANDIDATE
    rtt: float | None = None
    mapped: Address | None = None  # our address as the peer saw it
    first_check_at: float | None = None

    @property
    def key(self) -> tuple[str, Address]:
        return self.base, self.remote.address

    @property
    def kind(self) -> str:
        relayed = self.base == RELAY or self.remote.kind == CandidateType.RELAY
        return RELAYED if relayed else DIRECT

    @property
    def valid(self) -> bool:
        """Usable both ways: our check was answered and the peer's check reached us."""
        return self.state == PairState.SUCCEEDED and self.peer_checked

    def describe(self) -> str:
        via = " via our relay" if self.base == RELAY else ""
        return f"{self.remote}{via}"


@dataclass(frozen=True)
class PairValid:
    pair: Pair


@dataclass(frozen=True)
class PathSelected:
    pair: Pair


@dataclass(frozen=True)
class StandbyChanged:
    pair: Pair


@dataclass(frozen=True)
class ChecksFailed:
    reason: str
    tried: tuple[str, ...]


@dataclass(frozen=True)
class RttSample:
    kind: str  # DIRECT or RELAYED
    rtt: float
    active: bool  # on the path carrying audio, or on the standby


@dataclass(frozen=True)
class ProbeLost:
    kind: str


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
    key: tuple[str, Address]
    nominate: bool = False
    probe: bool = False  # consent on the active pair, or a probe of the standby


@dataclass
class ConnectivityChecks:
    local_ufrag: str
    local_pwd: str
    remote_ufrag: str
    remote_pwd: str
    controlling: bool
    remote_candidates: tuple[Candidate, ...]
    now: float
    timeout: float = 10.0
    relay_mode: str = "auto"  # auto: direct if it works; force: audio over the relay; off
    bases: tuple[str, ...] = (HOST,)
    # Both NATs map per destination (learned at registration): no server-reflexive pair can
    # work, so the relay is used as soon as it answers instead of after RELAY_GRACE. Host pairs
    # (a shared LAN) are still checked first, and a direct pair proven later still wins.
    punch_hopeless: bool = False
    tiebreaker: int = field(default_factory=lambda: struct.unpack("!Q", os.urandom(8))[0])
    ignored: int = 0  # checks dropped for bad credentials or a bad fingerprint

    def __post_init__(self) -> None:
        self.pairs: dict[tuple[str, Address], Pair] = {}
        for cand in sorted(self.remote_candidates, key=lambda c: -c.priority):
            for base in self.bases:
                self._add_pair(base, cand)
        self.selected: Pair | None = None
        self.standby: Pair | None = None
        self._txns: TransactionTable[_CheckCtx] = TransactionTable()
        self._triggered: list[tuple[str, Address]] = []
        self._events: list[CheckEvent] = []
        self._started = self.now
        self._next_tick = self.now
        self._first_valid_at: dict[str, float] = {}
        self._nominating: tuple[str, Address] | None = None
        self._failed = False
        self._next_consent: float | None = None
        self._next_probe: float | None = None
        self._last_consent: float = self.now
        self.standby_streak = 0  # consecutive answered probes on the standby pair

    # -- outputs --------------------------------------------------------------------------
    def pop_events(self) -> list[CheckEvent]:
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        if self._failed:
            return None
        times = [
            self._txns.next_deadline(),
            self._next_consent,
            self._next_probe,
            self._nomination_time(),
        ]
        if self._still_checking():
            times.append(self._next_tick)
        return min((t for t in times if t is not None), default=None)

    # -- inputs ---------------------------------------------------------------------------
    def poll(self, now: float) -> list[Send]:
        if self._failed:
            return []
        out: list[Send] = []
        resend, failed = self._txns.poll(now)
        out += [(t.data, t.dest, t.context.key[0]) for t in resend]
        for txn in failed:
            self._on_check_timeout(txn.context, now)
        if self._still_checking() and now >= self._next_tick:
            self._next_tick = now + TA
            out += self._send_next_check(now)
        if self.selected is None:
            self._maybe_nominate(now, out)
            if self.selected is None and now - self._started > self.timeout and not self._failed:
                self._fail(f"no path answered within {self.timeout:.0f} s")
        else:
            if self._next_consent is not None and now >= self._next_consent:
                self._next_consent = now + CONSENT_INTERVAL
                out.append(self._check(self.selected.key, now, probe=True))
                if now - self._last_consent > CONSENT_TIMEOUT:
                    self._next_consent = None
                    self._events.append(ConsentLost(self.selected.remote.address))
            if (
                self.standby is not None
                and self._next_probe is not None
                and now >= self._next_probe
            ):
                self._next_probe = now + PROBE_INTERVAL
                out.append(self._check(self.standby.key, now, probe=True))
        return out

    def handle(self, msg: Message, src: Address, now: float, base: str = HOST) -> list[Send] | None:
        """Handle a Binding check or its answer arriving on `base`; None when not ours."""
        if msg.method != Method.BINDING:
            return None
        if msg.cls == Class.REQUEST and msg.has(Attr.USERNAME):
            try:
                return self._on_request(msg, src, now, base)
            except StunError:  # a USERNAME that is not UTF-8, a PRIORITY of the wrong size
                self.ignored += 1
                return []
        if msg.cls in (Class.SUCCESS, Class.ERROR) and msg.transaction_id in self._txns:
            txn = self._txns.match(msg)
            assert txn is not None
            self._on_response(msg, src, txn, now)
            out: list[Send] = []
            if self.selected is None:
                self._maybe_nominate(now, out)
            return out
        return None

    # -- sending checks -------------------------------------------------------------------
    def _wanted(self, kind: str) -> bool:
        return not (kind == RELAYED and self.relay_mode == "off")

    def _add_pair(self, base: str, cand: Candidate) -> Pair | None:
        # Through our relay, only public candidates: the relay refuses private peers anyway.
        if base == RELAY and cand.kind == CandidateType.HOST:
            return None
        if (base, cand.address) in self.pairs:  # a public host is both host and srflx: one pair
            return self.pairs[(base, cand.address)]
        local = candidate_priority(CandidateType.HOST if base == HOST else CandidateType.RELAY)
        prio = (
            pair_priority(local, cand.priority)
            if self.controlling
            else pair_priority(cand.priority, local)
        )
        pair = Pair(base, cand, prio)
        if not self._wanted(pair.kind):
            return None
        self.pairs[pair.key] = pair
        return pair

    def _still_checking(self) -> bool:
        """Whether there are pairs worth a new check: before selection, or for the standby."""
        if self._failed:
            return False
        if self.selected is None:
            return True
        return self.standby is None and any(
            p.state == PairState.WAITING and p.kind != self.selected.kind
            for p in self.pairs.values()
        )

    def _send_next_check(self, now: float) -> list[Send]:
        self._triggered = [
            k
            for k in self._triggered
            if self.pairs[k].state in (PairState.WAITING, PairState.FAILED)
        ]
        triggered = set(self._triggered)
        candidates = [self.pairs[k] for k in self._triggered] + [
            p
            for p in self.pairs.values()
            if p.state == PairState.WAITING
            and p.key not in triggered
            and (self.selected is None or p.kind != self.selected.kind)
        ]
        if not candidates:
            return []
        # The kind we would rather use goes first, then triggered checks (RFC 8445 §7.2.5.4),
        # then priority. Checks are paced Ta apart, so a peer's triggered relayed checks queued
        # ahead of a direct pair would hold the direct decision back by Ta each.
        pair = max(candidates, key=lambda p: (self._preferred(p), p.key in triggered, p.priority))
        if pair.key in triggered:
            self._triggered.remove(pair.key)
        return [self._check(pair.key, now)]

    def _preferred(self, pair: Pair) -> bool:
        if self.relay_mode == "force":
            return pair.kind == RELAYED
        if self.punch_hopeless:  # the peer's public addresses cannot work: relay and LAN first
            return pair.kind == RELAYED or pair.remote.kind == CandidateType.HOST
        return pair.kind == DIRECT

    def _check(
        self, key: tuple[str, Address], now: float, *, nominate: bool = False, probe: bool = False
    ) -> Send:
        base, remote = key
        role_attr = Attr.ICE_CONTROLLING if self.controlling else Attr.ICE_CONTROLLED
        attrs = [
            (Attr.USERNAME, text(f"{self.remote_ufrag}:{self.local_ufrag}")),
            (Attr.PRIORITY, u32(candidate_priority(CandidateType.PRFLX))),
            (role_attr, u64(self.tiebreaker)),
        ]
        if nominate:
            attrs.append((Attr.USE_CANDIDATE, b""))
        req = Message(Method.BINDING, Class.REQUEST, attributes=tuple(attrs))
        data = encode(req, integrity_key=self.remote_pwd.encode(), fingerprint=True)
        ctx = _CheckCtx(key, nominate, probe)
        # Probes are never retransmitted: an unanswered one is a lost packet, not a slow one.
        txn = (
            Transaction(req.transaction_id, data, remote, ctx, rto=PROBE_TIMEOUT, rc=1, rm=1)
            if probe
            else Transaction(
                req.transaction_id, data, remote, ctx, rto=CHECK_RTO, rc=CHECK_RC, rm=CHECK_RM
            )
        )
        if not probe:
            pair = self.pairs[key]
            pair.state = PairState.IN_PROGRESS
            if pair.first_check_at is None:
                pair.first_check_at = now
        return self._txns.start(now, txn), remote, base

    # -- receiving ------------------------------------------------------------------------
    def _authentic(self, msg: Message, key: str) -> bool:
        return check_fingerprint(msg) and check_integrity(msg, key.encode())

    def _on_request(self, msg: Message, src: Address, now: float, base: str) -> list[Send]:
        username = msg.text(Attr.USERNAME) or ""
        if username != f"{self.local_ufrag}:{self.remote_ufrag}" or not self._authentic(
            msg, self.local_pwd
        ):
            self.ignored += 1  # a stranger, or a stale call: never answer, never learn from it
            return []
        # RFC 8445 §7.3.1.1 role conflict: the larger tie-breaker stays controlling.
        peer_controlling = msg.u64(Attr.ICE_CONTROLLING)
        if peer_controlling is not None and self.controlling:
            if self.tiebreaker >= peer_controlling:
                reply = msg.reply(
                    Class.ERROR, [(Attr.ERROR_CODE, encode_error_code(487, "Role Conflict"))]
                )
                return [
                    (
                        encode(reply, integrity_key=self.local_pwd.encode(), fingerprint=True),
                        src,
                        base,
                    )
                ]
            self.controlling = False
        pair = self.pairs.get((base, src))
        if pair is None:  # peer-reflexive: the peer's NAT mapped it to an address nobody told us
            prio = msg.u32(Attr.PRIORITY) or candidate_priority(CandidateType.PRFLX)
            cand = Candidate(CandidateType.PRFLX, src, prio)
            pair = self._add_pair(base, cand) if base == HOST else self._add_relay_prflx(cand)
        reply = msg.reply(
            Class.SUCCESS, [(Attr.XOR_MAPPED_ADDRESS, encode_xor_address(src, msg.transaction_id))]
        )
        out: list[Send] = [
            (encode(reply, integrity_key=self.local_pwd.encode(), fingerprint=True), src, base)
        ]
        if pair is None:
            return out  # answered, but a kind of path this call does not use
        if self.selected is not None and self.selected.key == pair.key:
            self._last_consent = now
        pair.peer_checked = True
        if msg.has(Attr.USE_CANDIDATE) and not self.controlling:
            pair.peer_nominated = True
        if pair.state in (PairState.WAITING, PairState.FAILED) and pair.key not in self._triggered:
            self._triggered.append(pair.key)  # triggered check: answer the punch with a punch
            if self._still_checking() and now >= self._next_tick:  # pacing allows it right now
                self._next_tick = now + TA
                out += self._send_next_check(now)
        self._note_valid(pair, now)
        if self.selected is None:
            self._maybe_nominate(now, out)
        return out

    def _add_relay_prflx(self, cand: Candidate) -> Pair | None:
        # Learned through our relay: its public address was permitted, so it is reachable there.
        local = candidate_priority(CandidateType.RELAY)
        prio = (
            pair_priority(local, cand.priority)
            if self.controlling
            else pair_priority(cand.priority, local)
        )
        pair = Pair(RELAY, cand, prio)
        if not self._wanted(pair.kind):
            return None
        self.pairs[pair.key] = pair
        return pair

    def _on_response(
        self, msg: Message, src: Address, txn: Transaction[_CheckCtx], now: float
    ) -> None:
        ctx = txn.context
        pair = self.pairs[ctx.key]
        if not self._authentic(msg, self.remote_pwd):
            self.ignored += 1
            self._txns.restore(txn)  # a forged answer must not end the real transaction
            return
        if src != ctx.key[1]:  # RFC 8445 §7.2.5.2.1: responses must come back symmetrically
            pair.state = PairState.FAILED
            return
        rtt = now - txn.last_sent
        if ctx.probe:
            if self.selected is not None and pair.key == self.selected.key:
                self._last_consent = now
            elif self.standby is not None and pair.key == self.standby.key:
                self.standby_streak += 1
            self._events.append(RttSample(pair.kind, rtt, self.selected is pair))
            return
        if msg.cls == Class.ERROR:
            err = msg.error()
            if err and err[0] == 487:  # role conflict: switch role and try again
                self.controlling = not self.controlling
                self._triggered.append(ctx.key)
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
        self._first_valid_at.setdefault(pair.kind, now)
        self._events.append(PairValid(pair))
        if self.selected is None:
            if not self.controlling and pair.peer_nominated:
                self._select(pair, now)
        elif pair.kind != self.selected.kind:
            self._update_standby(now)

    # -- choosing -------------------------------------------------------------------------
    def _valid(self, kind: str) -> list[Pair]:
        return [p for p in self.pairs.values() if p.valid and p.kind == kind and p.rtt is not None]

    def _best(self, kind: str) -> Pair | None:
        return min(self._valid(kind), key=lambda p: (p.rtt or 0.0, -p.priority), default=None)

    def _settled_time(self, kind: str) -> float | None:
        """When no pair of `kind` left could beat the best valid one of that kind."""
        valid = self._valid(kind)
        if not valid:
            return None
        first = self._first_valid_at[kind]
        latest = first + NOMINATE_AFTER
        pending = [
            p
            for p in self.pairs.values()
            if p.kind == kind and p.state in (PairState.WAITING, PairState.IN_PROGRESS)
        ]
        if any(p.state == PairState.WAITING for p in pending):
            return latest
        patience = HOPELESS_FACTOR * min(p.rtt or 0.0 for p in valid) + HOPELESS_MARGIN
        hopeless_at = [p.first_check_at + patience for p in pending if p.first_check_at is not None]
        return min(latest, max(hopeless_at, default=first))

    def _nomination_choice(self) -> tuple[float, str] | None:
        """(when, kind) the controlling side should nominate, or None for not yet."""
        if not self.controlling or self._nominating is not None or self.selected is not None:
            return None
        direct = self._settled_time(DIRECT)
        relayed = self._settled_time(RELAYED)
        if self.relay_mode == "force":
            return None if relayed is None else (relayed, RELAYED)
        if direct is not None:
            return direct, DIRECT
        if relayed is not None:
            direct_hopeless = all(
                p.state == PairState.FAILED for p in self.pairs.values() if p.kind == DIRECT
            )
            if direct_hopeless or self.punch_hopeless:
                grace = relayed
            else:
                grace = self._first_valid_at[RELAYED] + RELAY_GRACE
            return max(relayed, grace), RELAYED
        return None

    def _nomination_time(self) -> float | None:
        choice = self._nomination_choice()
        return None if choice is None else choice[0]

    def _maybe_nominate(self, now: float, out: list[Send]) -> None:
        choice = self._nomination_choice()
        if choice is None or now < choice[0]:
            return
        best = self._best(choice[1])
        assert best is not None
        self._nominating = best.key
        out.append(self._check(best.key, now, nominate=True))

    def _select(self, pair: Pair, now: float) -> None:
        if self.selected is not None:
            return
        self.selected = pair
        self._last_consent = now
        self._next_consent = now + CONSENT_INTERVAL
        self._triggered = [k for k in self._triggered if self.pairs[k].kind != pair.kind]
        # Unanswered checks on other pairs of the same kind are moot once a path is chosen.
        for txn in self._txns.pending():
            other = self.pairs[txn.context.key]
            if other.key != pair.key and other.kind == pair.kind:
                self._txns.cancel(txn.transaction_id)
        self._events.append(PathSelected(pair))
        self._update_standby(now)

    def switch(self, now: float, to: Pair | None = None) -> Pair | None:
        """Make `to` (by default the standby) active, and the active pair the standby.

        `to` may be any valid pair: the peer may have moved to a relayed pair other than the
        one we would have picked (each side relays through its own allocation)."""
        to = to or self.standby
        if self.selected is None or to is None or not to.valid or to is self.selected:
            return None
        self.selected, self.standby = to, self.selected
        self.standby_streak = 0
        self._last_consent = now
        self._next_consent = now + CONSENT_INTERVAL
        self._next_probe = now + PROBE_INTERVAL / 4  # learn soon whether the old path lives
        self._events.append(PathSwitched(self.selected, self.standby))
        return self.selected

    def _update_standby(self, now: float) -> None:
        assert self.selected is not None
        other = RELAYED if self.selected.kind == DIRECT else DIRECT
        best = self._best(other)
        if best is not None and best is not self.standby:
            self.standby = best
            self._next_probe = now + PROBE_INTERVAL
            self._events.append(StandbyChanged(best))

    def _on_check_timeout(self, ctx: _CheckCtx, now: float) -> None:
        pair = self.pairs[ctx.key]
        if ctx.probe:
            if self.selected is not None and pair is not self.selected:
                self._events.append(ProbeLost(pair.kind))
                if pair is self.standby:
                    self.standby_streak = 0
            return
        pair.state = PairState.FAILED
        if ctx.nominate:
            self._nominating = None  # nominate the next best
        if self.selected is None and all(p.state == PairState.FAILED for p in self.pairs.values()):
            self._fail("every candidate was tried and none answered")

    def _fail(self, reason: str) -> None:
        self._failed = True
        self._txns.cancel_all()
        self._events.append(ChecksFailed(reason, tuple(p.describe() for p in self.pairs.values())))

    def unreached(self, kind: str) -> str:
        """Why no pair of `kind` works, for the report."""
        tried = [p.describe() for p in self.pairs.values() if p.kind == kind]
        if not tried:
            return "no candidates of this kind"
        return f"no answer from {', '.join(tried)}"
