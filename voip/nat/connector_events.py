"""What a `Connector` tells its owner: introductions, the relay's answer, and the rest."""

from __future__ import annotations

from dataclasses import dataclass

from voip.nat import checks
from voip.nat.port_mapper import PortMapped
from voip.nat.port_mapper import PortMappingFailed
from voip.nat.relay_choice import RelayChosen
from voip.nat.signal_events import Asked
from voip.nat.signal_events import Refused
from voip.nat.signal_events import Registered
from voip.nat.signal_events import ServerMoved
from voip.nat.signal_events import Unreachable
from voip.wire.signal import PeerReady
from voip.wire.stun import Address


@dataclass(frozen=True)
class PeerTimeout:
    waited: float


@dataclass(frozen=True)
class Introduced:
    ready: PeerReady  # ready.peer_key: the identity key that owns the peer's name


@dataclass(frozen=True)
class Restarted:
    """Introduced again in the call (an ICE restart): the checks are new."""

    ready: PeerReady


@dataclass(frozen=True)
class RelayReady:
    relayed: Address
    server: Address


@dataclass(frozen=True)
class RelayUnavailable:
    reason: str


ConnectorEvent = (
    Registered
    | Asked
    | Refused
    | Unreachable
    | ServerMoved
    | Introduced
    | Restarted
    | PeerTimeout
    | RelayChosen
    | RelayReady
    | RelayUnavailable
    | PortMapped
    | PortMappingFailed
    | checks.CheckEvent
)
