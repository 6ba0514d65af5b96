"""The rendezvous shell's hot loop: reading its sockets dry, and the two datagrams that matter
(TURN ChannelData both ways, RFC 8656 §12; plain STUN Binding, RFC 8489) decided in a few
operations, everything else handed to the full rules.

Each wake-up reads a socket until it would block (DRAIN at most, so timers still get a turn),
instead of one datagram per turn of the event loop. A ChannelData datagram whose channel has a
live route (rendezvous/channel_routes.py: learned when the full rules last relayed on it) costs
one dict look-up, a slice and a `sendto` (to its peer, or, when the peer is another allocation
on this relay, to that allocation's client on its channel); a peer's datagram on a relayed
address, one look-up and a `sendto` of header and data. A plain Binding request gets its answer from
plain_binding_answer (rendezvous/behaviour.py), the same bytes the full rules give; a REGISTER
that repeats one the full rules served, from rendezvous/refresh_path.py, likewise. None
allocates anything per datagram beyond what the socket calls must, nor re-arms a timer (they
move no deadline), and counters are added once per wake-up. Whatever is not one of those, or
has no live route, takes the full rules exactly as before. A handler's exception is counted
and logged at a limited rate by the endpoint, never raised into the loop.

When the C forwarder was built (rendezvous/batched_routes.py), the live routes go there too, and
the sockets are read by it instead: one recvmmsg per 64 datagrams, routed ones sent with
sendmmsg, no Python per datagram; the rest come back here, in order, and take the path above.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from collections.abc import Callable
from collections.abc import Mapping
from typing import TYPE_CHECKING
from typing import Any

from rendezvous.batched_routes import CLIENTS
from rendezvous.batched_routes import PEERS
from rendezvous.behaviour import plain_binding_answer
from rendezvous.channel_routes import ChannelRoutes
from rendezvous.node import REGISTER
from voip.transport import V4_MAPPED
from voip.transport import UdpEndpoint
from voip.wire.stun import Address

if TYPE_CHECKING:
    from rendezvous._channel_forward import Forwarder

DRAIN = 4096  # datagrams read per wake-up at most: a socket is read dry but timers still run
# datagrams taken by the full rules per wake-up at most: a REGISTER from a new caller costs a
# key agreement, and a socket full of them must not keep timers and the store's replies waiting
SLOW_DRAIN = 256
RECEIVE_SIZE = 65535  # a datagram is never truncated (ChannelData may carry up to 64 KiB)
CHANNEL_HEADER = struct.Struct("!HH")
# What became of a client's datagram: relayed to its peer, or to another allocation's client;
# a Binding answered; a REGISTER answered by the quick path; dropped; the full rules.
RELAYED, INSIDE, BINDING, QUICK, DROPPED, SLOW = range(6)
KINDS = 6

ClientHandler = Callable[[bytes, Address, Address, float], None]  # data, src, local, now
PeerHandler = Callable[[bytes, Address, Address], None]  # data, relayed, peer


class FastPath:
    """Reads the main sockets and the relayed ones; `slow` and `slow_peer` are the full rules.

    `streams` holds the clients on TCP or TLS connections: UDP from one of their addresses is
    another client or a forgery, dropped; a route to one of them goes by its connection, so by
    the full rules. `out` is the socket the answers to clients leave from when there is one
    for every client (one main socket, not dual-stack); otherwise peers' datagrams take the
    full rules, which know each client's socket."""

    def __init__(
        self,
        routes: ChannelRoutes | None,
        relay_sockets: Mapping[Address, socket.socket],
        streams: Mapping[Address, object],
        stats: tuple[Counter[str], Counter[str]],  # the logic's and the relay's counters
        *,
        slow: ClientHandler,
        slow_peer: PeerHandler,
        clock: Callable[[], float],
    ):
        self.routes = routes if routes is not None else ChannelRoutes()
        self.relay_sockets = relay_sockets
        self.streams = streams
        self.logic_stats, self.relay_stats = stats
        self.slow, self.slow_peer, self.clock = slow, slow_peer, clock
        self.out: socket.socket | None = None
        # Answers a REGISTER that repeats one served before (rendezvous/refresh_path.py), or
        # gives None for the full rules.
        self.quick: Callable[[bytes, Address, float], bytes | None] | None = None
        # Forwards the live routes in batches in C (rendezvous/batched_routes.py), when `out`
        # serves every client; what it does not forward comes back here.
        self.batched: Forwarder | None = None

    def attach(self, endpoint: UdpEndpoint, local: Address) -> None:
        """Read `endpoint`'s socket here instead of in the endpoint."""
        assert endpoint.sock is not None
        fd = endpoint.sock.fileno()
        endpoint.loop.remove_reader(fd)
        endpoint.loop.add_reader(fd, self.client_readable, endpoint, local)

    def client_readable(self, endpoint: UdpEndpoint, local: Address) -> None:
        """A main socket: clients' ChannelData, Binding, and everything else."""
        sock = endpoint.sock
        if sock is None:
            return
        now = endpoint.loop.time()
        tally = [0] * KINDS  # by what became of each datagram
        try:
            if self.batched is not None and sock is self.out:
                try:
                    alone, headed, errors, _, rest = self.batched.drain(
                        CLIENTS, sock.fileno(), now, DRAIN, SLOW_DRAIN
                    )
                except OSError:  # the socket closed under us
                    endpoint.errors += 1
                    return
                tally[RELAYED] += alone
                tally[INSIDE] += headed
                endpoint.errors += errors
                for data, raw in rest:
                    tally[self._one(endpoint, local, data, raw, now)] += 1
                    if endpoint.sock is None:  # closed meanwhile
                        break
                return
            recv = sock.recvfrom
            for _ in range(DRAIN):
                try:
                    data, raw = recv(RECEIVE_SIZE)
                except BlockingIOError:
                    break
                except OSError:  # ICMP port unreachable from an earlier answer
                    endpoint.errors += 1
                    continue
                kind = self._one(endpoint, local, data, raw, now)
                tally[kind] += 1
                # closed; or a socket full of work for the full rules: others' turn
                if kind == SLOW and (endpoint.sock is None or tally[SLOW] >= SLOW_DRAIN):
                    break
        finally:
            relayed, inside, bindings = tally[RELAYED], tally[INSIDE], tally[BINDING]
            if relayed or inside:
                self.relay_stats["relayed_to_peer"] += relayed
                self.relay_stats["relayed_inside"] += inside
                self.relay_stats["relayed_to_client"] += inside
            if bindings:
                self.logic_stats["binding"] += bindings

    def _one(
        self, endpoint: UdpEndpoint, local: Address, data: bytes, raw: tuple[Any, ...], now: float
    ) -> int:
        """One datagram from a client: what became of it, RELAYED, INSIDE, BINDING or SLOW."""
        src: Address = raw
        if len(raw) == 4:  # an IPv6 socket's: IPv4 named plainly, as everywhere else
            host = raw[0]
            src = (host[7:] if host.startswith(V4_MAPPED) else host, raw[1])
        streams = self.streams
        if streams and src in streams:
            self.logic_stats["udp_from_stream_address"] += 1
            return DROPPED
        if len(data) >= 4 and 64 <= data[0] <= 127:
            route = self.routes.to_peer.get((src, (data[0] << 8) | data[1]))
            end = 4 + ((data[2] << 8) | data[3])
            if route is not None and route.expires > now and end <= len(data):
                if route.inside is None:
                    out = self.relay_sockets.get(route.relayed)
                else:  # to another allocation's client: its channel, our socket
                    out, (dest, channel) = self.out, route.inside
                    if streams and dest in streams:
                        out = None  # its connection: the full rules know it
                if out is not None:
                    try:  # per datagram: a context manager costs more
                        if route.inside is None:
                            out.sendto(data[4:end], route.peer)
                        else:
                            out.sendto(CHANNEL_HEADER.pack(channel, end - 4) + data[4:end], dest)
                    except OSError:  # a peer gone away: UDP has nothing to retry
                        pass
                    return RELAYED if route.inside is None else INSIDE
        elif data[:2] == b"\x00\x01" and (answer := plain_binding_answer(data, src)):
            self._answer(endpoint, answer, raw)
            return BINDING
        elif data[:2] == REGISTER and self.quick is not None:
            try:
                answer = self.quick(data, src, now)
            except Exception:
                endpoint.handler_failed(src)
                return SLOW
            if answer is not None:
                self._answer(endpoint, answer, raw)
                return QUICK
        try:
            self.slow(data, src, local, now)
        except Exception:
            endpoint.handler_failed(src)
        return SLOW

    @staticmethod
    def _answer(endpoint: UdpEndpoint, answer: bytes, raw: tuple[Any, ...]) -> None:
        if endpoint.sock is None:
            return
        try:
            endpoint.sock.sendto(answer, raw)
        except OSError:
            endpoint.errors += 1

    def forwarded(self, data: bytes, src: Address, local: Address) -> None:
        """A datagram another worker read (--workers): the full rules, as if read here. The
        caller guards it (rendezvous/worker_link.py)."""
        if self.streams and src in self.streams:
            self.logic_stats["udp_from_stream_address"] += 1
            return
        self.slow(data, src, local, self.clock())

    def peer_readable(self, relayed: Address, sock: socket.socket) -> None:
        """A relayed socket: its peers' datagrams, to its client by channel when routed."""
        now = self.clock()
        sent = 0
        try:
            if self.batched is not None and self.out is not None:
                try:
                    _, sent, _, _, rest = self.batched.drain(
                        PEERS, sock.fileno(), now, DRAIN, SLOW_DRAIN
                    )
                except OSError:
                    return
                for data, raw in rest:
                    sent += self._from_peer(relayed, data, raw, now)
                    if relayed not in self.relay_sockets:  # the allocation ended meanwhile
                        break
                return
            for _ in range(DRAIN):
                try:
                    data, raw = sock.recvfrom(RECEIVE_SIZE)
                except BlockingIOError:
                    break
                except OSError:
                    continue
                sent += self._from_peer(relayed, data, raw, now)
                if relayed not in self.relay_sockets:
                    break
        finally:
            if sent:
                self.relay_stats["relayed_to_client"] += sent

    def _from_peer(self, relayed: Address, data: bytes, raw: tuple[Any, ...], now: float) -> int:
        """One datagram from a peer: 1 when a route took it to its client, else 0 (the full
        rules had it)."""
        peer: Address = (raw[0], raw[1])
        route = self.routes.to_client.get((relayed, peer))
        streams, out = self.streams, self.out
        if (
            route is not None
            and out is not None
            and route.expires > now
            and not (streams and route.client in streams)
        ):
            try:  # noqa: SIM105 - per datagram, as above
                out.sendmsg(
                    (CHANNEL_HEADER.pack(route.channel, len(data)), data), (), 0, route.client
                )
            except OSError:
                pass
            return 1
        self.slow_peer(data, relayed, peer)  # guarded by the server, per datagram
        return 0
