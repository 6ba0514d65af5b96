"""The relayed base of a caller's one socket, sans-IO: a TURN allocation and the way through it.

ICE gathers before it offers: the allocation is made (within GATHER_TIMEOUT) before we ask for
the peer, and made again after our public address moved (an allocation is bound to the
5-tuple it was made from). A check or media datagram on a relayed pair goes out wrapped for the
relay; one for the peer's own relay goes straight there from the host base.

Offered several relays (a fleet sharing one secret), it first asks which is nearest
(voip/nat/relay_choice.py: a Binding to each, the first to answer wins) and allocates there, with
the same credentials; a move later allocates again on the relay chosen, without asking again.

A caller on a dual-stack socket asks for a dual allocation (RFC 8656 §7.2): an IPv6 relayed
address besides the IPv4 one, offered as a second relayed candidate, so that a peer reached
over IPv6 alone is reached through the relay too.
"""

from __future__ import annotations

from voip.nat.checklist import through_relay
from voip.nat.pairs import Base
from voip.nat.pairs import Pair
from voip.nat.relay_choice import CHOICE_WAIT
from voip.nat.relay_choice import RelayChooser
from voip.nat.relay_choice import RelayChosen
from voip.nat.signal_events import TurnOffer
from voip.nat.turn_client import TurnClient
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.candidates import format_address
from voip.wire.sans_io import earliest
from voip.wire.signal import PeerReady
from voip.wire.stun import Address
from voip.wire.stun import Message

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
        self.choice: RelayChooser | None = None  # which of several relays offered is nearest
        self._choice_told = False

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
        return earliest(
            self.gather_deadline,
            self.turn.next_deadline() if self.turn else None,
            self.choice.next_deadline() if self.choice else None,
        )

    def gather(self, offer: TurnOffer, now: float, probe: bool = True) -> list[Transmit]:
        """Allocate on `offer`'s relay (again, after we moved: the old one is bound to where
        we were); offered several, on the nearest, once `poll_choice` or `chosen` finds it.
        Without `probe` (no UDP leaves here: a Binding could not tell), on the first."""
        # The old allocation, if it is ours still (a relay that saw no move), is released.
        out = self.turn.close(now) if self.turn is not None else []
        self.offer = offer
        if len(offer.servers) == 1 or not probe:
            return out + self._allocate(offer.on(offer.server), now)
        self.turn = None
        self.choice = RelayChooser(offer.servers, now)  # its probes leave on the next poll
        # The choice's wait, then the allocation's own, before the peer is asked for without.
        self.gather_deadline = now + CHOICE_WAIT + GATHER_TIMEOUT
        return out

    def chosen(self, msg: Message, src: Address, now: float) -> list[Transmit] | None:
        """None if `msg` is no answer to the choice's probes; else what to send: the first
        request of the allocation on the relay chosen, if this answer chose it."""
        if self.choice is None or not self.choice.handle(msg, src, now):
            return None
        return self._allocate_chosen(now)

    def poll_choice(self, now: float) -> list[Transmit]:
        """The choice's probes due now, and the allocation if its wait ran out."""
        if self.choice is None:
            return []
        return self.choice.poll(now) + self._allocate_chosen(now)

    def pop_chosen(self) -> RelayChosen | None:
        """The choice and every relay's round trip, once, when the figures are final."""
        if self.choice is None or self._choice_told:
            return None
        result = self.choice.result()
        self._choice_told = result is not None
        return result

    def _allocate_chosen(self, now: float) -> list[Transmit]:
        offer, choice = self.offer, self.choice
        if offer is None or choice is None or choice.chosen is None or not offer.also:
            return []  # still choosing, or allocating on the one chosen already
        return self._allocate(offer.on(choice.chosen), now)

    def _allocate(self, offer: TurnOffer, now: float) -> list[Transmit]:
        self.offer = offer  # one relay from now on: a move allocates there again
        self.turn = TurnClient(
            offer.server, offer.username, offer.password, self.keepalive, ipv6=self.ipv6
        )
        self.gather_deadline = now + GATHER_TIMEOUT
        return self.turn.start(now)

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
