"""What the `Connector` does once registered, when the peers meet or meet again, and when the
relay answers.

Kept apart from voip/nat/connector.py so that one stays the connector's state and its
datagram flow; these are the decisions taken at those moments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from voip.nat import checks
from voip.nat.connector_events import RelayReady
from voip.nat.nominator import NOMINATE_AFTER
from voip.nat.nominator import RELAY_GRACE
from voip.nat.signal_events import Refreshed
from voip.nat.signal_events import TurnOffer
from voip.nat.turn_client import Allocated
from voip.nat.turn_client import PermissionRefused
from voip.nat.turn_client import TurnClient
from voip.nat.turn_client import TurnFailed
from voip.wire.candidates import CandidateType
from voip.wire.signal import MAPPING_DEPENDENT
from voip.wire.signal import PeerReady
from voip.wire.stun import Address

if TYPE_CHECKING:
    from voip.nat.connector import Connector

Transmit = tuple[bytes, Address]
# The peer's candidates a punch can reach from outside its network (IPv6 host ones too: IPv6
# has no NAT, its firewall opens to our checks as to our answers).
PUBLIC = frozenset({CandidateType.SRFLX, CandidateType.MAPPED, CandidateType.PREDICTED})


def checks_for(
    c: Connector, ready: PeerReady, now: float, again: bool
) -> checks.ConnectivityChecks:
    """The checks on meeting the peer (`again`: meeting again in the call, an ICE restart)."""
    # Both NATs map per destination, neither router opened a port for us, and not both map in
    # sequence (a random one never lets the other's checks in): no peer ever learns the port
    # the other will use.
    hopeless = c.own_mapping == MAPPING_DEPENDENT == ready.peer_mapping
    offered = (*c.signal.host_candidates, *ready.candidates)  # ours as we asked, and theirs
    predicted = [
        any(x.kind == CandidateType.PREDICTED for x in side)
        for side in (c.signal.host_candidates, ready.candidates)
    ]
    mapped = any(x.kind == CandidateType.MAPPED for x in offered) or all(predicted)
    punchable = any(x.kind in PUBLIC or ":" in x.address[0] for x in ready.candidates)
    return checks.ConnectivityChecks(
        local_ufrag=c.signal.ice.ufrag,  # ours, sent when we asked; the peer's below
        local_pwd=c.signal.ice.pwd,
        remote_ufrag=ready.remote_ufrag,
        remote_pwd=ready.remote_pwd,
        controlling=ready.controlling,
        remote_candidates=ready.candidates,
        now=now,
        timeout=c.punch_timeout,
        relay_mode=c.relay_mode,
        bases=(checks.HOST, checks.RELAY) if c.relay.relayed is not None else (checks.HOST,),
        relay_families=c.relay.families,
        # Where no UDP leaves (servers reached over TCP or TLS only), only a LAN pair works.
        punch_hopeless=(hopeless and not mapped) or c.udp_blocked,
        # Meeting again, the audio has stopped already; birthday punching takes seconds; a peer
        # with no public address to punch to (its UDP blocked) has only LAN ones, which answer
        # at once or never: the relay at once, direct later (voip/nat/path_manager.py).
        relay_grace=NOMINATE_AFTER if again or c.hard.guessing or not punchable else RELAY_GRACE,
    )


def refreshed(c: Connector, event: Refreshed, now: float, out: list[Transmit]) -> None:
    """In a call, a refresh that shows we moved, or the one a restart began with: ask for
    the peer again, with a new relay allocation if we moved (the old one is bound to our
    old address). Not the answer to that ask: the server's introduction follows it, or (a
    restart it refused) none does, and asking again at once would only repeat it."""
    if c.checks is None or event.asked or (c._restart is None and not event.moved):
        return
    if c._restart is None:
        c._restart = now
    c._asked = False
    if event.moved and c.turn is not None and c.relay.offer is not None:
        out += c.relay.gather(c.relay.offer, now)
    else:
        c._ask(now, out)


def gather_offered(c: Connector, offer: TurnOffer | None, now: float, out: list[Transmit]) -> None:
    """Registered: a relayed candidate from the relay the rendezvous offers (the nearest, if it
    offers several), unless we have one (--turn) or asked for the peer already."""
    if c._asked or c.turn is not None:
        return
    if offer is not None and c.relay.unavailable is None:
        # Where no UDP leaves, a Binding to each relay could tell nothing: the first it is.
        out += c.relay.gather(offer, now, probe=not c.udp_blocked)
    else:
        c._relay_gone("the rendezvous offers no relay, and no --turn given", now, out)


def turn_events(c: Connector, turn: TurnClient, now: float, out: list[Transmit]) -> None:
    for event in turn.pop_events():
        if isinstance(event, Allocated):
            c._events.append(RelayReady(event.relayed, turn.server))
            c.relay.gather_deadline = c.relay.unavailable = None
            c._ask(now, out)
        elif isinstance(event, TurnFailed):
            c._relay_gone(event.reason, now, out)
        elif isinstance(event, PermissionRefused):
            pass  # that candidate's pairs through the relay fail on their own
