"""Events a Call emits as it goes, for programs that embed it and for the live terminal view."""

from __future__ import annotations

from dataclasses import dataclass

from voip.wire.candidates import Candidate
from voip.wire.stun import Address


@dataclass(frozen=True)
class Registered:
    name: str
    public: Address  # our public address as the rendezvous saw it


@dataclass(frozen=True)
class Waiting:
    peer: str
    since: float  # loop time the wait began


@dataclass(frozen=True)
class Punching:
    peer: str
    candidates: tuple[Candidate, ...]
    controlling: bool


@dataclass(frozen=True)
class RelayChosen:
    """Offered several relays, we allocate on `server`: the first to answer a Binding (the
    first offered if none did). `rtts`: every relay offered, in order, and its round trip in
    s (None: no answer within the wait)."""

    server: Address
    rtts: tuple[tuple[Address, float | None], ...]


@dataclass(frozen=True)
class RelayAllocated:
    relayed: Address  # our relayed address on the TURN server
    server: Address
    transport: str = "udp"  # how we reach the server: "udp", "tcp" or "tls"


@dataclass(frozen=True)
class ServerTransport:
    """A server (the rendezvous, the relay) is reached over another transport now: "tcp" or
    "tls" when UDP got no answer (or was asked for), "udp" when every stream failed."""

    server: Address
    role: str  # "rendezvous", "relay", or "rendezvous and relay" (one server doing both)
    transport: str
    why: str  # what was tried before, in a user's words ("" when asked for on the command line)


@dataclass(frozen=True)
class ServerMoved:
    """The rendezvous `old` got no answer through a REGISTER's retransmissions: registering
    with `new`, the next server given, asking for the same peer."""

    old: Address
    new: Address
    answered: bool  # `old` had answered before (it stopped answering), else it never did


@dataclass(frozen=True)
class PortMapped:
    """Our router opened a public port for the call on request (or would not: `public` None)."""

    public: Address | None
    protocol: str  # "PCP" or "NAT-PMP"; with `public` None, why not
    lifetime: int = 0


@dataclass(frozen=True)
class Secured:
    """The handshake is done: audio will be encrypted, and the peer's key was checked."""

    peer: str
    cipher: str
    peer_fingerprint: str
    trust: str  # "verified", "first" or "accepted" (see voip/security/peer_verifier.py)
    sas: str  # compare aloud on a first call


@dataclass(frozen=True)
class Connected:
    path: str  # "direct" or "relay"
    remote: str  # where the audio is sent
    pair: str  # the candidate pair, described
    setup_ms: float


@dataclass(frozen=True)
class Standby:
    path: str  # the other path, measured alongside
    remote: str


@dataclass(frozen=True)
class PathSwitched:
    path: str  # the path the audio moved to
    remote: str
    why: str


@dataclass(frozen=True)
class LiveStats:
    path: str
    elapsed: float
    rtt_ms: float | None
    jitter_ms: float
    loss_pct: float
    frames_sent: int
    frames_received: int


@dataclass(frozen=True)
class Ended:
    reason: str
    ok: bool


CallEvent = (
    Registered
    | Waiting
    | RelayChosen
    | RelayAllocated
    | ServerTransport
    | ServerMoved
    | PortMapped
    | Punching
    | Secured
    | Connected
    | Standby
    | PathSwitched
    | LiveStats
    | Ended
)
