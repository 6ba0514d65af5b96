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
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from collections.abc import Callable
from collections.abc import Mapping

from rendezvous.behaviour import plain_binding_answer
from rendezvous.channel_routes import ChannelRoutes
from rendezvous.node import REGISTER
from voip.transport import V4_MAPPED
from voip.transport import UdpEndpoint
from voip.wire.stun import Address

DRAIN = 4096  # datagrams read per wake-up at most: a socket is read dry but timers still run
# datagrams taken by the full rules per wake-up at most: a REGISTER from a new caller costs a
# key agreement, and a socket full of them must not keep timers and the store's replies waiting
SLOW_DRAIN = 256
RECEIVE_SIZE = 65535  # a datagram is never truncated (ChannelData may carry up to 64 KiB)
CHANNEL_HEADER = struct.Struct("!HH")

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
        recv, answer_to = sock.recvfrom, sock.sendto
        to_peer, relay_sockets, streams = self.routes.to_peer, self.relay_sockets, self.streams
        quick = self.quick
        six = sock.family == socket.AF_INET6  # addresses of 4 items, IPv4 as ::ffff:a.b.c.d
        relayed = bindings = inside = slow = 0
        try:
            for _ in range(DRAIN):
                try:
                    data, raw = recv(RECEIVE_SIZE)
                except BlockingIOError:
                    break
                except OSError:  # ICMP port unreachable from an earlier answer
                    endpoint.errors += 1
                    continue
                src: Address = raw
                if six:  # IPv4 named plainly, as everywhere else
                    host = raw[0]
                    src = (host[7:] if host.startswith(V4_MAPPED) else host, raw[1])
                if streams and src in streams:
                    self.logic_stats["udp_from_stream_address"] += 1
                    continue
                if len(data) >= 4 and 64 <= data[0] <= 127:
                    route = to_peer.get((src, (data[0] << 8) | data[1]))
                    end = 4 + ((data[2] << 8) | data[3])
                    if route is not None and route.expires > now and end <= len(data):
                        if route.inside is None:
                            out = relay_sockets.get(route.relayed)
                        else:  # to another allocation's client: its channel, our socket
                            out, (dest, channel) = self.out, route.inside
                            if streams and dest in streams:
                                out = None  # its connection: the full rules know it
                        if out is not None:
                            try:  # per datagram: a context manager costs more
                                if route.inside is None:
                                    out.sendto(data[4:end], route.peer)
                                else:
                                    out.sendto(
                                        CHANNEL_HEADER.pack(channel, end - 4) + data[4:end], dest
                                    )
                            except OSError:  # a peer gone away: UDP has nothing to retry
                                pass
                            relayed += 1
                            inside += route.inside is not None
                            continue
                elif data[:2] == b"\x00\x01" and (answer := plain_binding_answer(data, src)):
                    try:
                        answer_to(answer, raw)
                    except OSError:
                        endpoint.errors += 1
                    bindings += 1
                    continue
                elif data[:2] == REGISTER and quick is not None:
                    try:
                        answer = quick(data, src, now)
                    except Exception:
                        endpoint.handler_failed(src)
                        continue
                    if answer is not None:
                        try:
                            answer_to(answer, raw)
                        except OSError:
                            endpoint.errors += 1
                        continue
                try:
                    self.slow(data, src, local, now)
                except Exception:
                    endpoint.handler_failed(src)
                slow += 1
                if endpoint.sock is None or slow >= SLOW_DRAIN:  # closed; or others' turn
                    break
        finally:
            if relayed:
                self.relay_stats["relayed_to_peer"] += relayed - inside
                self.relay_stats["relayed_inside"] += inside
                self.relay_stats["relayed_to_client"] += inside
            if bindings:
                self.logic_stats["binding"] += bindings

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
        to_client, streams, out = self.routes.to_client, self.streams, self.out
        six = sock.family == socket.AF_INET6
        sent = 0
        try:
            for _ in range(DRAIN):
                try:
                    data, raw = sock.recvfrom(RECEIVE_SIZE)
                except BlockingIOError:
                    break
                except OSError:
                    continue
                peer: Address = (raw[0], raw[1]) if six else raw
                route = to_client.get((relayed, peer))
                if (
                    route is not None
                    and out is not None
                    and route.expires > now
                    and not (streams and route.client in streams)
                ):
                    try:  # noqa: SIM105 - per datagram, as above
                        out.sendmsg(
                            (CHANNEL_HEADER.pack(route.channel, len(data)), data),
                            (),
                            0,
                            route.client,
                        )
                    except OSError:
                        pass
                    sent += 1
                    continue
                self.slow_peer(data, relayed, peer)  # guarded by the server, per datagram
                if relayed not in self.relay_sockets:  # the allocation ended meanwhile
                    break
        finally:
            if sent:
                self.relay_stats["relayed_to_client"] += sent
