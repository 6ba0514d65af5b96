"""The relayed base of a caller's one socket, sans-IO: a TURN allocation and the way through it.

ICE gathers before it offers: the allocation is made (within GATHER_TIMEOUT) before we ask for
the peer, and made again after our public address moved (an allocation is bound to the
5-tuple it was made from). A check or media datagram on a relayed pair goes out wrapped for the
relay; one for the peer's own relay goes straight there from the host base.

A caller on a dual-stack socket asks for a dual allocation (RFC 8656 §7.2): an IPv6 relayed
address besides the IPv4 one, offered as a second relayed candidate, so that a peer reached
over IPv6 alone is reached through the relay too.
"""

from __future__ import annotations

from voip.nat.checklist import through_relay
from voip.nat.pairs import Base
from voip.nat.pairs import Pair
from voip.nat.signal_events import TurnOffer
from voip.nat.turn_client import TurnClient
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.candidates import format_address
from voip.wire.sans_io import earliest
from voip.wire.signal import PeerReady
from voip.wire.stun import Address

Transmit = tuple[bytes, Address]
Send = tuple[bytes, Address, Base]  # datagram, destination, base to send it from
GATHER_TIMEOUT = 2.0  # s to wait for a relayed candidate before asking for the peer without


class RelayBase:
    def __init__(
        self, offer: TurnOffer | None, keepalive: float | None, off: bool, ipv6: bool = False
    ):
        self.offer = offer  # the relay we use: --turn, or the rendezvous's once it offers one
        self.ipv6 = ipv6  # ask for an IPv6 relayed address too: our socket is dual-stack
        self.keepalive = keepalive  # s between packets on a quiet mapping, if natcheck knows
        self.turn: TurnClient | None = None
        self.unavailable: str | None = "relay off (--relay off)" if off else None
        self.gather_deadline: float | None = None

    @property
    def relayed(self) -> Address | None:
        return self.turn.relayed if self.turn is not None else None

    @property
    def relayed6(self) -> Address | None:
        """A dual allocation's IPv6 relayed address."""
        return self.turn.relayed6 if self.turn is not None else None

    @property
    def families(self) -> frozenset[int]:
        """The families (4, 6) our allocation relays to; none without one."""
        return self.turn.families if self.turn is not None else frozenset()

    @property
    def mapped(self) -> Address | None:
        """Our public address as the relay saw it (on a NAT per destination, a mapping apart)."""
        return self.turn.mapped if self.turn is not None else None

    def candidates(self) -> tuple[Candidate, ...]:
        relayed = (self.relayed, self.relayed6)
        return tuple(Candidate.make(CandidateType.RELAY, a) for a in relayed if a is not None)

    def next_deadline(self) -> float | None:
        return earliest(self.gather_deadline, self.turn.next_deadline() if self.turn else None)

    def gather(self, offer: TurnOffer, now: float) -> list[Transmit]:
        """Allocate on `offer`'s relay (again, after we moved: the old one is bound to where
        we were)."""
        # The old allocation, if it is ours still (a relay that saw no move), is released.
        out = self.turn.close(now) if self.turn is not None else []
        self.offer = offer
        self.turn = TurnClient(
            offer.server, offer.username, offer.password, self.keepalive, ipv6=self.ipv6
        )
        self.gather_deadline = now + GATHER_TIMEOUT
        return out + self.turn.start(now)

    def gone(self, reason: str) -> bool:
        """No relayed candidate after all; True the first time (`reason` is kept)."""
        self.gather_deadline = None
        if self.unavailable is not None:
            return False
        self.unavailable = reason
        return True

    def permit(self, ready: PeerReady, now: float) -> list[Transmit]:
        """The relay forwards only from permitted peers: the peer's public addresses, of the
        families our allocation has (a permission for another is refused, RFC 8656 §9.1)."""
        if self.turn is None or self.turn.relayed is None:
            return []
        families = self.turn.families
        public = {c.address[0] for c in ready.candidates if through_relay(c, families)}
        return self.turn.permit(sorted(public), now)

    def route(self, data: bytes, pair: Pair) -> Transmit:
        """How to send `data` on `pair`: straight to the remote, or wrapped for our relay."""
        if pair.base == Base.RELAY:
            assert self.turn is not None
            return self.turn.wrap(data, pair.remote.address)
        return data, pair.remote.address

    def shown(self, pair: Pair) -> str:
        """The address this pair's packets are sent to, as the report shows it."""
        if pair.base == Base.RELAY and self.turn is not None:
            return format_address(self.turn.server)
        return format_address(pair.remote.address)

    def routed(self, sends: list[Send]) -> list[Transmit]:
        """Checks from each base: those from the relayed one wrapped, if it is there."""
        out = []
        for data, dest, base in sends:
            if base != Base.RELAY:
                out.append((data, dest))
            elif self.turn is not None and self.turn.relayed is not None:
                out.append(self.turn.wrap(data, dest))
        return out
