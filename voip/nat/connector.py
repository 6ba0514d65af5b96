"""From a name to a working path, sans-IO: rendezvous signalling, then connectivity checks.

This is everything a caller does with STUN on its one socket, as one object: datagrams and time
in, datagrams and events out. The asyncio `Call` only moves bytes; tests drive the same object
through a simulated network with NATs.
"""

from __future__ import annotations

from dataclasses import dataclass

from voip.nat import checks
from voip.nat.candidates import Candidate
from voip.nat.rendezvous_client import (
    GotPeer,
    Refused,
    Registered,
    RendezvousClient,
    Unreachable,
)
from voip.wire.signal import PeerReady
from voip.wire.stun import Address, StunError, parse_message_untrusted

Transmit = tuple[bytes, Address]


@dataclass(frozen=True)
class PeerTimeout:
    waited: float


@dataclass(frozen=True)
class Introduced:
    ready: PeerReady


ConnectorEvent = (
    Registered
    | Refused
    | Unreachable
    | Introduced
    | PeerTimeout
    | checks.PathSelected
    | checks.RttSample
    | checks.ChecksFailed
    | checks.ConsentLost
)


class Connector:
    def __init__(
        self,
        name: str,
        peer: str,
        server: Address,
        host_candidates: tuple[Candidate, ...],
        *,
        wait_timeout: float = 120.0,
        punch_timeout: float = 10.0,
    ):
        self.signal = RendezvousClient(name, peer, server, host_candidates)
        self.checks: checks.ConnectivityChecks | None = None
        self.wait_timeout = wait_timeout
        self.punch_timeout = punch_timeout
        self.malformed = 0
        self._started = 0.0
        self._wait_deadline: float | None = None
        self._events: list[ConnectorEvent] = []

    @property
    def selected(self) -> Candidate | None:
        if self.checks is None or self.checks.selected is None:
            return None
        return self.checks.selected.remote

    def start(self, now: float) -> list[Transmit]:
        self._started = now
        return self.signal.start(now)

    def leave(self, now: float) -> list[Transmit]:
        return self.signal.leave(now)

    def pop_events(self) -> list[ConnectorEvent]:
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float | None:
        times = [
            self.signal.next_deadline(),
            self._wait_deadline,
            self.checks.next_deadline() if self.checks else None,
        ]
        return min((t for t in times if t is not None), default=None)

    def poll(self, now: float) -> list[Transmit]:
        out = self.signal.poll(now)
        if self.checks is not None:
            out += self.checks.poll(now)
        if self._wait_deadline is not None and now >= self._wait_deadline:
            self._wait_deadline = None
            self._events.append(PeerTimeout(now - self._started))
        self._collect(now, out)
        return out

    def handle_stun(self, data: bytes, src: Address, now: float) -> list[Transmit]:
        try:
            msg = parse_message_untrusted(data)
        except StunError:
            self.malformed += 1
            return []
        out = self.checks.handle(msg, src, now) if self.checks is not None else None
        if out is None:
            out = self.signal.handle(msg, src, now)
        out = out or []
        self._collect(now, out)
        return out

    def _collect(self, now: float, out: list[Transmit]) -> None:
        for event in self.signal.pop_events():
            if isinstance(event, Registered):  # waiting from now (a lost introduction too)
                self._wait_deadline = self._started + self.wait_timeout
            if isinstance(event, GotPeer):
                self._wait_deadline = None
                ready = event.ready
                self.checks = checks.ConnectivityChecks(
                    local_ufrag=ready.local_ufrag,
                    local_pwd=ready.local_pwd,
                    remote_ufrag=ready.remote_ufrag,
                    remote_pwd=ready.remote_pwd,
                    controlling=ready.controlling,
                    remote_candidates=ready.candidates,
                    now=now,
                    timeout=self.punch_timeout,
                )
                self._events.append(Introduced(ready))
                out += self.checks.poll(now)
            else:
                self._events.append(event)
        if self.checks is not None:
            self._events += [
                e for e in self.checks.pop_events() if not isinstance(e, checks.PairValid)
            ]
