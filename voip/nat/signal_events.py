"""What the rendezvous client reports: registered, refused, introduced, moved; the relay offered."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace

from voip.nat.server_transports import Transport
from voip.wire.signal import PeerReady
from voip.wire.stun import Address


@dataclass(frozen=True)
class TurnOffer:
    """A relay the rendezvous offers, with short-lived credentials for it."""

    server: Address
    username: str
    password: str
    transport: Transport | None = None  # None: UDP, then TCP, then TLS (server_transports.py)
    name: str | None = None  # the name its TLS certificate must carry, if not its IP address
    # More relays offered with it, good with the same credentials (a fleet sharing one secret):
    # the caller allocates on the nearest (voip/nat/relay_choice.py).
    also: tuple[Address, ...] = ()

    @property
    def servers(self) -> tuple[Address, ...]:
        """Every relay offered, in the rendezvous's order."""
        return (self.server, *self.also)

    def on(self, server: Address) -> TurnOffer:
        """The same credentials for `server` alone: the relay chosen from a fleet."""
        return replace(self, server=server, also=())


@dataclass(frozen=True)
class Registered:
    mapped: Address  # our public address as the server saw it (server-reflexive)
    lifetime: float
    status: str  # "registered"; "waiting" or "matched" once we ask for the peer
    turn: TurnOffer | None = None
    other: Address | None = None  # the server's RFC 5780 alternate address, if it has one


@dataclass(frozen=True)
class Asked:
    status: str  # "waiting" for the peer, or "matched" at once


@dataclass(frozen=True)
class Refused:
    code: int
    reason: str


@dataclass(frozen=True)
class Unreachable:
    """No answer from `server` (with several servers: from any of them, `waited` in all)."""

    server: Address
    waited: float


@dataclass(frozen=True)
class Refreshed:
    """A later registration answered: our public address now, and whether it moved."""

    mapped: Address
    moved: bool
    asked: bool = False  # the answer to asking for the peer (a PEER-READY may follow)


@dataclass(frozen=True)
class GotPeer:
    ready: PeerReady
    again: bool = False  # in a call already: an ICE restart


@dataclass(frozen=True)
class ServerMoved:
    """A REGISTER to `old` went unanswered through its retransmissions: we register with `new`
    now, asking for the same peer with the same credentials if we had asked."""

    old: Address
    new: Address
    waited: float  # s from that REGISTER to giving up on it
    answered: bool  # `old` had answered us before (it stopped answering), else it never did


SignalEvent = Registered | Refreshed | Asked | Refused | Unreachable | GotPeer | ServerMoved
