"""Candidate pairs and their words: local bases, kinds of path, relay modes (RFC 8445 §6.1.2).

A pair is (our base, a remote candidate). One socket gives one host base; a TURN allocation on
it gives a second, relayed base; birthday punching's extra socket that the peer reached, a
third. A pair is *direct* when neither end is a relay, else *relayed*; it computes its own
priority (RFC 8445 §6.1.2.3) from its candidates and our role.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from enum import StrEnum

from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.candidates import candidate_priority
from voip.wire.candidates import pair_priority
from voip.wire.stun import Address


class Base(StrEnum):
    """Where we send from: the socket itself, our relayed address on it, or the extra socket
    birthday punching found (voip/nat/birthday.py)."""

    HOST = "host"
    RELAY = "relay"
    BIRTHDAY = "birthday"


class PathKind(StrEnum):
    """What the report calls a path (its JSON keys and values)."""

    DIRECT = "direct"
    RELAYED = "relay"


class RelayMode(StrEnum):
    """`--relay`: use the relay only when direct fails, always, or never."""

    AUTO = "auto"
    FORCE = "force"
    OFF = "off"


class PairState(Enum):
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass
class Pair:
    base: Base
    remote: Candidate
    priority: int
    state: PairState = PairState.WAITING
    peer_checked: bool = False  # an authenticated check from the peer arrived on this pair
    peer_nominated: bool = False  # that check carried USE-CANDIDATE
    rtt: float | None = None
    mapped: Address | None = None  # our address as the peer saw it
    first_check_at: float | None = None

    @classmethod
    def make(cls, base: Base, remote: Candidate, controlling: bool) -> Pair:
        local = candidate_priority(
            CandidateType.RELAY if base == Base.RELAY else CandidateType.HOST
        )
        if controlling:
            return cls(base, remote, pair_priority(local, remote.priority))
        return cls(base, remote, pair_priority(remote.priority, local))

    @property
    def key(self) -> tuple[Base, Address]:
        return self.base, self.remote.address

    @property
    def kind(self) -> PathKind:
        relayed = self.base == Base.RELAY or self.remote.kind == CandidateType.RELAY
        return PathKind.RELAYED if relayed else PathKind.DIRECT

    @property
    def valid(self) -> bool:
        """Usable both ways: our check was answered and the peer's check reached us."""
        return self.state == PairState.SUCCEEDED and self.peer_checked

    @property
    def pending(self) -> bool:
        return self.state in (PairState.WAITING, PairState.IN_PROGRESS)

    def describe(self) -> str:
        via = {Base.RELAY: " via our relay", Base.BIRTHDAY: " from a birthday socket"}
        return f"{self.remote}{via.get(self.base, '')}"
