"""Simultaneous hole punching as ICE connectivity checks, sans-IO (RFC 8445 §7, RFC 7675).

One socket means one local base, so a check list is one pair per remote candidate. Both sides
start at the moment the rendezvous introduces them; each sends paced, authenticated Binding
checks to every remote candidate. The first check through a NAT opens its mapping for the
other side's checks, and a check received triggers one back at once (RFC 8445 §7.3.1.4), so
the path usually opens in one round trip after the slower side starts.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from enum import Enum

from voip.nat.candidates import Candidate, CandidateType, candidate_priority, pair_priority
from voip.wire.stun import (
    Address,
    Attr,
    Class,
    Message,
    Method,
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

Transmit = tuple[bytes, Address]

TA = 0.05  # RFC 8445 §14.2: pace new checks 50 ms apart
CHECK_RTO = 0.2  # lower than RFC 8445's 500 ms floor: one pair per candidate, a handful in all
CHECK_RC = 7
CHECK_RM = 8
NOMINATE_AFTER = 0.2  # longest wait, after the first valid pair, for a faster one to prove itself
# A pair still unanswered this long after its first check, relative to the best RTT seen, cannot
# beat the best: 1.5 x RTT plus a little for the peer's scheduling.
HOPELESS_FACTOR = 1.5
HOPELESS_MARGIN = 0.005
CONSENT_INTERVAL = 2.0  # RFC 7675 says 5 s +-20 %; checks also give the path's RTT, so more often
CONSENT_TIMEOUT = 30.0  # RFC 7675 §5.1: no answer for 30 s and consent has expired


class PairState(Enum):
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass
class Pair:
    remote: Candidate
    priority: int
    state: PairState = PairState.WAITING
    peer_checked: bool = False  # an authenticated check from the peer arrived on this pair
    peer_nominated: bool = False  # that check carried USE-CANDIDATE
    rtt: float | None = None
    mapped: Address | None = None  # our address as the peer saw it
    first_check_at: float | None = None

    @property
    def valid(self) -> bool:
        """Usable both ways: our check was answered and the peer's check reached us."""
        return self.state == PairState.SUCCEEDED and self.peer_checked


@dataclass(frozen=True)
class PairValid:
    remote: Address
    rtt: float


@dataclass(frozen=True)
class PathSelected:
    remote: Candidate
    rtt: float | None


@dataclass(frozen=True)
class ChecksFailed:
    reason: str
    tried: tuple[Candidate, ...]


@dataclass(frozen=True)
class RttSample:
    remote: Address
    rtt: float


@dataclass(frozen=True)
class ConsentLost:
    remote: Address


CheckEvent = PairValid | PathSelected | ChecksFailed | RttSample | ConsentLost


@dataclass(frozen=True)
class _CheckCtx:
    remote: Address
    nominate: bool
    consent: bool


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
    tiebreaker: int = field(default_factory=lambda: struct.unpack("!Q", os.urandom(8))[0])
    ignored: int = 0  # checks dropped for bad credentials or a bad fingerprint

    def __post_init__(self) -> None:
        self.pairs: dict[Address, Pair] = {}
        for cand in sorted(self.remote_candidates, key=lambda c: -c.priority):
            if cand.address not in self.pairs:  # a public host is both host and srflx: one pair
                self._add_pair(cand)
        self.selected: Pair | None = None
        self._txns: TransactionTable[_CheckCtx] = TransactionTable()
        self._triggered: list[Address] = []
        self._events: list[CheckEvent] = []
        self._started = self.now
        self._next_tick = self.now
        self._first_valid_at: float | None = None
        self._nominating: Address | None = None
        self._failed = False
        self._next_consent: float | None = None
        self._last_consent: float = self.now
        self._local_prflx_priority = candidate_priority(CandidateType.PRFLX)

    # -- outputs --------------------------------------------------------------------------
    def pop_events(self) -> list[CheckEvent]:
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        if self._failed:
            return None
        # The pacing tick matters only while checking; after selection it would be stale.
        times = [self._next_tick] if self.selected is None else []
        if (t := self._txns.next_deadline()) is not None:
            times.append(t)
        if self._next_consent is not None:
            times.append(self._next_consent)
        if (t := self._nomination_time()) is not None:
            times.append(t)
        return min(times)

    def owns(self, transaction_id: bytes) -> bool:
        return transaction_id in self._txns

    # -- inputs ---------------------------------------------------------------------------
    def poll(self, now: float) -> list[Transmit]:
        if self._failed:
            return []
        out: list[Transmit] = []
        resend, failed = self._txns.poll(now)
        out += resend
        for txn in failed:
            self._on_check_timeout(txn.context, now)
        if self.selected is None:
            if now >= self._next_tick:
                self._next_tick = now + TA
                out += self._send_next_check(now)
            self._maybe_nominate(now, out)
            if self.selected is None and now - self._started > self.timeout and not self._failed:
                self._fail(f"no path answered within {self.timeout:.0f} s")
        elif self._next_consent is not None and now >= self._next_consent:
            self._next_consent = now + CONSENT_INTERVAL
            out.append(self._check(self.selected.remote.address, now, nominate=False, consent=True))
            if now - self._last_consent > CONSENT_TIMEOUT:
                self._next_consent = None
                self._events.append(ConsentLost(self.selected.remote.address))
        return out

    def handle(self, msg: Message, src: Address, now: float) -> list[Transmit] | None:
        """Handle a Binding check or check response; None when the message is not ours."""
        if msg.method != Method.BINDING:
            return None
        if msg.cls == Class.REQUEST and msg.has(Attr.USERNAME):
            return self._on_request(msg, src, now)
        if msg.cls in (Class.SUCCESS, Class.ERROR) and msg.transaction_id in self._txns:
            txn = self._txns.match(msg)
            assert txn is not None
            self._on_response(msg, src, txn, now)
            out: list[Transmit] = []
            if self.selected is None:
                self._maybe_nominate(now, out)
            return out
        return None

    # -- sending checks -------------------------------------------------------------------
    def _add_pair(self, cand: Candidate) -> Pair:
        g, d = (self._local_priority(), cand.priority)
        prio = pair_priority(g, d) if self.controlling else pair_priority(d, g)
        pair = Pair(cand, prio)
        self.pairs[cand.address] = pair
        return pair

    def _local_priority(self) -> int:
        return candidate_priority(CandidateType.HOST)

    def _send_next_check(self, now: float) -> list[Transmit]:
        while self._triggered:
            addr = self._triggered.pop(0)
            pair = self.pairs[addr]
            if pair.state in (PairState.WAITING, PairState.FAILED):
                return [self._check(addr, now, nominate=False)]
        waiting = [p for p in self.pairs.values() if p.state == PairState.WAITING]
        if not waiting:
            return []
        pair = max(waiting, key=lambda p: p.priority)
        return [self._check(pair.remote.address, now, nominate=False)]

    def _check(
        self, remote: Address, now: float, *, nominate: bool, consent: bool = False
    ) -> Transmit:
        role_attr = Attr.ICE_CONTROLLING if self.controlling else Attr.ICE_CONTROLLED
        attrs = [
            (Attr.USERNAME, text(f"{self.remote_ufrag}:{self.local_ufrag}")),
            (Attr.PRIORITY, u32(self._local_prflx_priority)),
            (role_attr, u64(self.tiebreaker)),
        ]
        if nominate:
            attrs.append((Attr.USE_CANDIDATE, b""))
        req = Message(Method.BINDING, Class.REQUEST, attributes=tuple(attrs))
        data = encode(req, integrity_key=self.remote_pwd.encode(), fingerprint=True)
        txn = Transaction(
            req.transaction_id,
            data,
            remote,
            _CheckCtx(remote, nominate, consent),
            rto=CHECK_RTO,
            rc=CHECK_RC,
            rm=CHECK_RM,
        )
        if not consent:
            pair = self.pairs[remote]
            pair.state = PairState.IN_PROGRESS
            if pair.first_check_at is None:
                pair.first_check_at = now
        return self._txns.start(now, txn), remote

    # -- receiving ------------------------------------------------------------------------
    def _authentic(self, msg: Message, key: str) -> bool:
        return check_fingerprint(msg) and check_integrity(msg, key.encode())

    def _on_request(self, msg: Message, src: Address, now: float) -> list[Transmit]:
        username = msg.text(Attr.USERNAME) or ""
        if username != f"{self.local_ufrag}:{self.remote_ufrag}" or not self._authentic(
            msg, self.local_pwd
        ):
            self.ignored += 1  # a stranger, or a stale call: never answer, never learn from it
            return []
        out: list[Transmit] = []
        # RFC 8445 §7.3.1.1 role conflict: the larger tie-breaker stays controlling.
        peer_controlling = msg.u64(Attr.ICE_CONTROLLING)
        if peer_controlling is not None and self.controlling:
            if self.tiebreaker >= peer_controlling:
                reply = msg.reply(
                    Class.ERROR, [(Attr.ERROR_CODE, encode_error_code(487, "Role Conflict"))]
                )
                return [
                    (encode(reply, integrity_key=self.local_pwd.encode(), fingerprint=True), src)
                ]
            self.controlling = False
        pair = self.pairs.get(src)
        if pair is None:  # peer-reflexive: the peer's NAT mapped it to an address nobody told us
            prio = msg.u32(Attr.PRIORITY) or candidate_priority(CandidateType.PRFLX)
            pair = self._add_pair(Candidate(CandidateType.PRFLX, src, prio))
        reply = msg.reply(
            Class.SUCCESS, [(Attr.XOR_MAPPED_ADDRESS, encode_xor_address(src, msg.transaction_id))]
        )
        out.append((encode(reply, integrity_key=self.local_pwd.encode(), fingerprint=True), src))
        if self.selected is not None and self.selected.remote.address == src:
            self._last_consent = now
        pair.peer_checked = True
        if msg.has(Attr.USE_CANDIDATE) and not self.controlling:
            pair.peer_nominated = True
        if pair.state in (PairState.WAITING, PairState.FAILED) and src not in self._triggered:
            self._triggered.append(src)  # triggered check: answer the punch with a punch
            if self.selected is None and now >= self._next_tick:  # pacing allows it right now
                self._next_tick = now + TA
                out += self._send_next_check(now)
        self._note_valid(pair, now)
        if self.selected is None:
            self._maybe_nominate(now, out)
        return out

    def _on_response(
        self, msg: Message, src: Address, txn: Transaction[_CheckCtx], now: float
    ) -> None:
        ctx = txn.context
        pair = self.pairs[ctx.remote]
        if not self._authentic(msg, self.remote_pwd):
            self.ignored += 1
            self._txns.restore(txn)  # a forged answer must not end the real transaction
            return
        if src != ctx.remote:  # RFC 8445 §7.2.5.2.1: responses must come back symmetrically
            pair.state = PairState.FAILED
            return
        rtt = now - txn.last_sent
        if ctx.consent:
            self._last_consent = now
            self._events.append(RttSample(src, rtt))
            return
        if msg.cls == Class.ERROR:
            err = msg.error()
            if err and err[0] == 487:  # role conflict: switch role and try again
                self.controlling = not self.controlling
                self._triggered.append(ctx.remote)
            pair.state = PairState.FAILED
            return
        pair.state = PairState.SUCCEEDED
        pair.rtt = rtt if pair.rtt is None else min(pair.rtt, rtt)
        pair.mapped = msg.xor_address()
        self._events.append(RttSample(src, rtt))
        if ctx.nominate:
            self._select(pair, now)
            return
        self._note_valid(pair, now)

    def _note_valid(self, pair: Pair, now: float) -> None:
        if not pair.valid:
            return
        if self._first_valid_at is None:
            self._first_valid_at = now
        assert pair.rtt is not None
        self._events.append(PairValid(pair.remote.address, pair.rtt))
        if not self.controlling and pair.peer_nominated and self.selected is None:
            self._select(pair, now)

    def _nomination_time(self) -> float | None:
        """When the controlling side should nominate: once no pair left could beat the best
        valid one (all checked, and each unanswered one slower than the best), at the latest
        NOMINATE_AFTER after the first valid pair."""
        if not self.controlling or self._nominating is not None or self._first_valid_at is None:
            return None
        rtts = [p.rtt for p in self.pairs.values() if p.valid and p.rtt is not None]
        if not rtts:
            return None
        latest = self._first_valid_at + NOMINATE_AFTER
        if any(p.state == PairState.WAITING for p in self.pairs.values()):
            return latest
        patience = HOPELESS_FACTOR * min(rtts) + HOPELESS_MARGIN
        hopeless_at = [
            p.first_check_at + patience
            for p in self.pairs.values()
            if p.state == PairState.IN_PROGRESS and p.first_check_at is not None
        ]
        return min(latest, max(hopeless_at, default=self._first_valid_at))

    def _maybe_nominate(self, now: float, out: list[Transmit]) -> None:
        when = self._nomination_time()
        if when is None or now < when:
            return
        valid = [p for p in self.pairs.values() if p.valid]
        best = min(valid, key=lambda p: (p.rtt or 0.0, -p.priority))
        self._nominating = best.remote.address
        out.append(self._check(best.remote.address, now, nominate=True))

    def _select(self, pair: Pair, now: float) -> None:
        if self.selected is not None:
            return
        self.selected = pair
        self._last_consent = now
        self._next_consent = now + CONSENT_INTERVAL
        self._triggered.clear()
        # Unanswered checks on other pairs are moot once a path is chosen.
        for txn in self._txns.pending():
            if txn.context.remote != pair.remote.address:
                self._txns.cancel(txn.transaction_id)
        self._events.append(PathSelected(pair.remote, pair.rtt))

    def _on_check_timeout(self, ctx: _CheckCtx, now: float) -> None:
        if ctx.consent:
            return
        self.pairs[ctx.remote].state = PairState.FAILED
        if ctx.nominate:
            self._nominating = None  # nominate the next best
        if self.selected is None and all(p.state == PairState.FAILED for p in self.pairs.values()):
            self._fail("every candidate was tried and none answered")

    def _fail(self, reason: str) -> None:
        self._failed = True
        self._txns.cancel_all()
        self._events.append(ChecksFailed(reason, tuple(p.remote for p in self.pairs.values())))
