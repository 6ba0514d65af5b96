"""Every datagram (or stream frame) that reaches the rendezvous, sans-IO: which logic takes it.

The main port carries STUN Binding, callpeer's signalling and TURN (requests and ChannelData:
RFC 7983 demultiplexing by first byte); the other RFC 5780 ports answer Binding requests only;
a relayed port carries a peer's datagrams for its allocation. A frame from a TCP or TLS
connection (RFC 8656 §3.1) is handled as a datagram from the connection's remote address, and
its close ends that address's state (stream_closed). Nothing raises out of here: what
cannot be parsed is counted and dropped. The asyncio shell (rendezvous/server.py) only moves
datagrams between sockets and this node, so tests can put the whole server on any network.
"""

from __future__ import annotations

import struct
from collections import Counter

from rendezvous.logic import RendezvousLogic
from rendezvous.shared_presence import Departure
from rendezvous.shared_presence import Touch
from rendezvous.turn_server import TURN_METHODS
from rendezvous.turn_server import Out
from rendezvous.turn_server import TurnServer
from voip.wire.stun import MAX_DATAGRAM
from voip.wire.stun import Address
from voip.wire.stun import Class
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.stun import looks_like_stun
from voip.wire.stun import message_type
from voip.wire.stun import parse_message_untrusted
from voip.wire.stun import split_message_type
from voip.wire.turn import looks_like_channel_data


def relaying(data: bytes) -> bool:
    """ChannelData or a TURN message: what a worker (--workers) handles itself, for the clients
    the kernel hashes to it; the rest is the home worker's (rendezvous/worker_link.py)."""
    if looks_like_channel_data(data, legacy=True):
        return True
    if not looks_like_stun(data):
        return False
    method, _ = split_message_type((data[0] << 8) | data[1])
    return method in TURN_METHODS


REGISTER = struct.pack("!H", message_type(Method.CP_REGISTER, Class.REQUEST))
SIGNALLING = frozenset({Method.CP_REGISTER, Method.CP_LEAVE, Method.CP_PEER_READY})


def signalling(data: bytes) -> bool:
    """A name's REGISTER, LEAVE or PEER-READY answer: what a worker also handles itself when
    the names live in a shared store (--redis); otherwise the home's."""
    if not looks_like_stun(data):
        return False
    method, _ = split_message_type((data[0] << 8) | data[1])
    return method in SIGNALLING


class RendezvousNode:
    def __init__(
        self,
        logic: RendezvousLogic,
        turn: TurnServer | None,
        primary: Address,
        also: tuple[Address, ...] = (),
    ):
        self.logic = logic
        self.turn = turn
        self.primary = primary  # the main port: signalling and TURN; the others are RFC 5780's
        self.mains = {primary, *also}  # main ports all: a second --listen (IPv6 beside IPv4)

    @property
    def stats(self) -> Counter[str]:
        return self.logic.stats + (self.turn.stats if self.turn else Counter())

    def handle(self, data: bytes, src: Address, local: Address, now: float) -> list[Out]:
        """A datagram from `src` that arrived on our address `local`."""
        main = local in self.mains
        if main and self.turn is not None and looks_like_channel_data(data, legacy=True):
            return self.turn.handle_channel_data(data, src, now)
        if main and data[:2] == REGISTER and (answer := self.quick_refresh(data, src, now)):
            return [Out(answer, src)]
        if not looks_like_stun(data) or len(data) > MAX_DATAGRAM:
            self.logic.stats["not_stun"] += 1
            return []
        try:
            msg = parse_message_untrusted(data)
        except StunError:
            self.logic.stats["malformed"] += 1
            return []
        fleet = self.logic.relay.fleet if self.logic.relay is not None else None
        if main and fleet is not None and msg.method == Method.BINDING and fleet.answered(msg):
            return []  # a relay we offer is up
        if main and self.turn is not None and msg.method in TURN_METHODS:
            return self.turn.handle_request(msg, data, src, now)
        if not main and (msg.method != Method.BINDING or msg.cls != Class.REQUEST):
            self.logic.stats["ignored"] += 1  # the RFC 5780 ports answer Binding only
            return []
        return self.logic.handle_message(msg, src, now, local)

    def quick_refresh(self, data: bytes, src: Address, now: float) -> bytes | None:
        """The answer to a refresh that changes nothing (rendezvous/refresh_path.py), or None.
        It moves no deadline earlier: the timer need not be re-armed."""
        quick = self.logic.refreshes.answer(data, src, now)
        if quick is None:
            return None
        answer, entry = quick
        self.logic.stats["register"] += 1
        if self.logic.shared is not None:
            self.logic.shared.add(Touch(entry.name, entry.client_key))
        return answer

    def from_peer(self, data: bytes, relayed: Address, peer: Address, now: float) -> list[Out]:
        if self.turn is None:
            return []
        return self.turn.handle_peer(data, relayed, peer, now)

    def holds(self, client: Address, now: float) -> bool:
        """Whether a client at `client` has a registration or an allocation here: then a new
        stream from that address (another protocol, so maybe another client) is refused."""
        alloc = self.turn.allocations.get(client) if self.turn is not None else None
        if alloc is not None and alloc.expires > now:
            return True
        return bool(self.logic.registry.names_at(client, now))

    def stream_closed(self, client: Address, now: float) -> None:
        """The TCP or TLS connection from `client` closed: its allocation and its names go
        with it (RFC 8656 §3.1), as nothing can reach it at that address any more."""
        if self.turn is not None:
            self.turn.client_gone(client)
        for name in self.logic.registry.names_at(client, now):  # offline, as its LEAVE would
            entry = self.logic.registry.get(name, now)
            self.logic.registry.remove(name, client)
            if self.logic.shared is not None and entry is not None:
                self.logic.shared.add(Departure(name, entry.client_key))
            self.logic.stats["left_with_stream"] += 1

    def next_deadline(self) -> float | None:
        fleet = self.logic.relay.fleet if self.logic.relay is not None else None
        times = [
            self.logic.next_deadline(),
            self.turn.next_deadline() if self.turn else None,
            fleet.next_deadline() if fleet is not None else None,
        ]
        return min((t for t in times if t is not None), default=None)

    def poll(self, now: float) -> list[Out]:
        out = [Out(data, dest) for data, dest in self.logic.poll(now)]
        if self.logic.relay is not None and self.logic.relay.fleet is not None:
            out += self.logic.relay.fleet.poll(now)  # which relays we offer answer
        if self.turn is not None:
            self.turn.poll(now)
        return out
