"""From a name to working paths, sans-IO: rendezvous signalling, a relay, connectivity checks.

This is everything a caller does with STUN and TURN on its one socket, as one object: datagrams
and time in, datagrams and events out. It registers; gathers a relayed candidate (from the
relay the rendezvous offers, the nearest of them if it offers several, or one given with
--turn) before asking for the peer, the way ICE gathers before it offers; then runs the checks
over the host and relayed bases. The asyncio `Call` only moves bytes; tests drive the same
object through a simulated network with NATs.

When the audio stops, `quiet` refreshes our name at once: if our public address moved (our NAT
forgot its mappings, our host moved), the server learns where we are now, and we begin an ICE
restart (RFC 8445 §9), as we do when no path answers (`meet_again`). In a restart, the refresh
shows where we are; if we moved, our relay allocation went with the old address and a new one
is made; then we ask for the peer again with these candidates, and the server introduces both
sides again (`Restarted`), each with fresh checks under the call's credentials.
"""

from __future__ import annotations

from collections.abc import Sequence

from voip.nat import checks
from voip.nat.connector_events import ConnectorEvent
from voip.nat.connector_events import Introduced
from voip.nat.connector_events import PeerTimeout
from voip.nat.connector_events import RelayReady
from voip.nat.connector_events import RelayUnavailable
from voip.nat.connector_events import Restarted
from voip.nat.hard_nat import HardNat
from voip.nat.mapping_probe import MappingProbe
from voip.nat.meeting import checks_for
from voip.nat.meeting import gather_offered
from voip.nat.meeting import refreshed
from voip.nat.meeting import turn_events
from voip.nat.pairs import RelayMode
from voip.nat.port_mapper import PortMapper
from voip.nat.relay_base import RelayBase
from voip.nat.relay_choice import RelayChosen
from voip.nat.rendezvous_client import RendezvousClient
from voip.nat.signal_events import GotPeer
from voip.nat.signal_events import Refreshed
from voip.nat.signal_events import Registered
from voip.nat.signal_events import TurnOffer
from voip.nat.turn_client import TurnClient
from voip.security.identity import Identity
from voip.wire.candidates import Candidate
from voip.wire.sans_io import EventQueue
from voip.wire.sans_io import earliest
from voip.wire.stun import Address
from voip.wire.stun import Message
from voip.wire.stun import StunError
from voip.wire.stun import looks_like_stun
from voip.wire.stun import parse_message_untrusted
from voip.wire.turn import looks_like_channel_data

Transmit = tuple[bytes, Address]
__all__ = [
    "Connector",
    "ConnectorEvent",
    "Introduced",
    "PeerTimeout",
    "RelayChosen",
    "RelayReady",
    "RelayUnavailable",
    "Restarted",
]
RESTART_RETRY = 2.0  # s before a restart that brought no introduction may be tried again


class Connector(EventQueue[ConnectorEvent]):
    def __init__(
        self,
        name: str,
        peer: str,
        server: Address | Sequence[Address],  # several: moved between (rendezvous_client.py)
        host_candidates: tuple[Candidate, ...],
        *,
        wait_timeout: float = 120.0,
        punch_timeout: float = 10.0,
        relay_mode: RelayMode | str = RelayMode.AUTO,
        turn: TurnOffer | None = None,
        keepalive: float | None = None,
        identity: Identity | None = None,  # owns `name` at the rendezvous; None: one for this run
        port_mapper: PortMapper | None = None,  # asks our router for a public port (PCP)
        relay_ipv6: bool = False,  # ask the relay for an IPv6 address too (a dual-stack socket)
    ):
        super().__init__()
        self.relay_mode = RelayMode(relay_mode)  # ValueError for anything else
        off = self.relay_mode == RelayMode.OFF
        early = off and port_mapper is None  # nothing to gather first, but a router's port
        self.signal = RendezvousClient(
            name,
            peer,
            server,
            host_candidates,
            ask_now=early,
            keepalive=keepalive,
            identity=identity,
        )
        self.probe: MappingProbe | None = None
        self.relay = RelayBase(turn, keepalive, off, relay_ipv6)
        self.port_mapper = port_mapper
        self.checks: checks.ConnectivityChecks | None = None
        self.hard = HardNat()  # port prediction and birthday punching (voip/nat/hard_nat.py)
        self.wait_timeout, self.punch_timeout = wait_timeout, punch_timeout
        self.malformed, self._started = 0, 0.0
        self._asked = early
        self._wait_deadline: float | None = None
        self._restart: float | None = None  # when the restart under way began
        self.udp_blocked = False  # our servers answer over TCP/TLS only: no UDP leaves here

    def next_deadline(self) -> float | None:
        return earliest(
            self.signal.next_deadline(),
            self._wait_deadline,
            self.relay.next_deadline(),
            self.probe.next_deadline() if self.probe else None,
            self.port_mapper.next_deadline() if self.port_mapper else None,
            self.port_mapper.ask_by if self.port_mapper and not self._asked else None,
            self.checks.next_deadline() if self.checks else None,
            self.hard.next_deadline(),
        )

    @property
    def own_mapping(self) -> str | None:
        """Our NAT's mapping behaviour, if the registration probe found out."""
        return self.probe.result if self.probe is not None else None

    @property
    def turn(self) -> TurnClient | None:
        return self.relay.turn

    @property
    def punch_hopeless(self) -> bool:
        """Both NATs map per destination, as the checks were told when they started."""
        return self.checks is not None and self.checks.punch_hopeless

    def start(self, now: float) -> list[Transmit]:
        self._started = now
        out = self.signal.start(now)
        if self.port_mapper is not None:
            out += self.port_mapper.start(now)
        if self.relay_mode != RelayMode.OFF and self.relay.offer is not None:  # --turn
            out += self.relay.gather(self.relay.offer, now)
        return out

    def quiet(self, now: float, meet_again: bool) -> list[Transmit]:
        """The audio stopped: tell the rendezvous where we are now (a restart if we moved);
        with `meet_again` (no path answers), meet the peer again there in any case."""
        if self.checks is None:
            return []
        if meet_again:
            if self._restart is not None and now < self._restart + RESTART_RETRY:
                return []
            self._restart = now
        return self.signal.refresh(now)

    def leave(self, now: float) -> list[Transmit]:
        out = self.signal.leave(now)
        if self.port_mapper is not None:
            out += self.port_mapper.release(now)
        return out + (self.turn.close(now) if self.turn is not None else [])

    def poll(self, now: float) -> list[Transmit]:
        out = self.signal.poll(now)
        if self.probe is not None and not self.probe.done:
            out += self.probe.poll(now)
        if self.port_mapper is not None:
            out += self.port_mapper.poll(now)
        self._ask(now, out)  # which waits for the probe, and a moment for the mapping
        out += self.relay.poll_choice(now)  # several relays offered: which is nearest
        if self.turn is not None:
            out += self.turn.poll(now)
        if self.relay.gather_deadline is not None and now >= self.relay.gather_deadline:
            self._relay_gone("no answer from the relay in time", now, out)
        if self.checks is not None:
            out += self._routed(self.checks.poll(now)) + self.hard.poll(now, self.checks)
        if self._wait_deadline is not None and now >= self._wait_deadline:
            self._wait_deadline = None
            self._events.append(PeerTimeout(now - self._started))
        self._collect(now, out)
        return out

    def handle(
        self, data: bytes, src: Address, now: float
    ) -> tuple[list[Transmit], tuple[bytes, Address] | None]:
        """A STUN or TURN datagram: what to send, and media that came out of the relay, if any."""
        out: list[Transmit] = []
        inner: tuple[bytes, Address] | None = None
        if self.turn is not None and src == self.turn.server and looks_like_channel_data(data):
            inner = self.turn.unwrap_channel(data, src)
        elif self.port_mapper is not None and src == self.port_mapper.gateway:
            out += self.port_mapper.handle(data, src, now)
            self._ask(now, out)
        elif looks_like_stun(data):
            try:
                msg = parse_message_untrusted(data)
            except StunError:
                self.malformed += 1
                return [], None
            inner = self._stun(msg, src, now, out)
        if inner is not None:  # arrived through our relay: a check, media or the key exchange
            payload, peer = inner
            inner = None
            if looks_like_stun(payload) and self.checks is not None:
                try:
                    sent = self.checks.handle(
                        parse_message_untrusted(payload), peer, now, checks.RELAY
                    )
                except StunError:
                    sent = None
                out += self._routed(sent or [])
            elif not looks_like_stun(payload):  # the call's: media, or its key exchange
                inner = (payload, peer)
        self._collect(now, out)
        return out, inner

    def _stun(
        self, msg: Message, src: Address, now: float, out: list[Transmit]
    ) -> tuple[bytes, Address] | None:
        if (allocating := self.relay.chosen(msg, src, now)) is not None:  # a relay's RTT
            out += allocating
            return None
        if self.turn is not None and src == self.turn.server:
            answered = self.turn.handle(msg, src, now)
            if answered is not None:
                out += answered
                return None
            unwrapped = self.turn.unwrap(msg, src)
            if unwrapped is not None:
                return unwrapped
        if self.probe is not None and not self.probe.done and self.probe.handle(msg, src):
            self._ask(now, out)
            return None
        sent = self.checks.handle(msg, src, now, checks.HOST) if self.checks is not None else None
        if sent is not None:
            self.hard.heard(src, now)
            out += self._routed(sent)
            return None
        out += self.signal.handle(msg, src, now) or []
        return None

    def handle_side(self, index: int, data: bytes, src: Address, now: float) -> list[Transmit]:
        """STUN on birthday punching's extra socket `index`; its sends go to hard.side_out."""
        try:
            sent = self.hard.side(index, data, src, now, self.checks) if self.checks else None
        except StunError:  # garbage, counted with the call socket's
            self.malformed += 1
            sent = None
        out = self._routed(sent or [])
        self._collect(now, out)
        return out

    def _routed(self, sends: list[checks.Send]) -> list[Transmit]:
        return self.relay.routed(self.hard.route(sends))

    def _ask(self, now: float, out: list[Transmit]) -> None:
        """Ask for the peer, once registered, the relay gathered (or gone) and the mapping
        probed; and a moment for our router to open a port, if it will."""
        if self._asked or self.signal.mapped is None or self.relay.gather_deadline is not None:
            return
        probing = self.probe is not None and not self.probe.done
        if probing or (self.port_mapper is not None and self.port_mapper.waiting(now)):
            return
        self._asked = True
        mapped = self.port_mapper.candidates(self.signal.mapped) if self.port_mapper else ()
        predicted = (
            self.probe.predicted(self.relay.mapped) if self.probe and not self._restart else ()
        )
        offer = (*self.relay.candidates(), *mapped, *predicted)
        out += self.signal.ask(now, offer, self.own_mapping)

    def _relay_gone(self, reason: str, now: float, out: list[Transmit]) -> None:
        if self.relay.gone(reason):
            self._events.append(RelayUnavailable(reason))
        self._ask(now, out)

    def _collect(self, now: float, out: list[Transmit]) -> None:
        for event in self.signal.pop_events():
            if isinstance(event, Refreshed):
                refreshed(self, event, now, out)
                continue
            if isinstance(event, Registered):
                self._wait_deadline = now + self.wait_timeout
                if event.other is not None and not self._asked and self.probe is None:
                    self.probe = MappingProbe(event.mapped, self.signal.server, event.other)
                    out += self.probe.start(now)
                gather_offered(self, event.turn, now, out)
            if isinstance(event, GotPeer):
                self._wait_deadline = self._restart = None
                predicting = self.probe is not None and self.probe.step is not None
                self.hard.begin(self.own_mapping, predicting, event.ready, now)
                self.checks = checks_for(self, event.ready, now, again=event.again)
                # First checks on the next poll, due now, stamped when they leave: handling the
                # introduction (keys) takes time an RTT stamped from its arrival would count.
                out += self.relay.permit(event.ready, now)
                self._events.append((Restarted if event.again else Introduced)(event.ready))
            else:
                self._events.append(event)
        if self.port_mapper is not None:
            self._events += self.port_mapper.pop_events()
        if (chosen := self.relay.pop_chosen()) is not None:
            self._events.append(chosen)
        if self.turn is not None:
            turn_events(self, self.turn, now, out)
        if self.checks is not None:
            for check_event in self.checks.pop_events():
                if isinstance(check_event, (checks.PathSelected, checks.StandbyChanged)):
                    pair = check_event.pair
                    if pair.base == checks.RELAY and self.turn is not None:
                        out += self.turn.bind_channel(pair.remote.address, now)
                if isinstance(check_event, checks.PairValid):
                    self.hard.settled(check_event.pair)
                self._events.append(check_event)
