"""The rendezvous server's asyncio shell: UDP, TCP and TLS around RendezvousLogic and TURN
(RFC 8656 §3.1: clients reach the relay over any of them; it relays to peers over UDP)."""

from __future__ import annotations

import errno
import functools
import secrets
import ssl
from collections import Counter

from rendezvous.batched_routes import new_forwarder
from rendezvous.behaviour import Addresses
from rendezvous.fast_path import FastPath
from rendezvous.logic import RelayOffer
from rendezvous.logic import RendezvousLogic
from rendezvous.node import RendezvousNode
from rendezvous.relay_sockets import SocketRelayPorts
from rendezvous.stream_listener import StreamConnection
from rendezvous.stream_listener import StreamLimits
from rendezvous.stream_listener import StreamListener
from rendezvous.turn_server import Out
from rendezvous.turn_server import TurnPolicy
from rendezvous.turn_server import TurnServer
from voip.host_addresses import host_ipv4_addresses
from voip.host_addresses import host_ipv6_addresses
from voip.transport import Timer
from voip.transport import UdpEndpoint
from voip.wire.stun import Address

RECEIVE_BUFFER = 4 * 1024 * 1024  # bytes, as coturn asks for
TLS_PORT = 5349  # IANA's turns port
BIND_TRIES = 8  # for port 0: ports the kernel picks for UDP until TCP has the same one free


class RendezvousServer:
    """The asyncio shell: the sockets, and a timer, around a RendezvousNode.

    A client is one transport address on one protocol: while a stream from an address is open,
    UDP from that address is dropped, and a stream is refused from an address that holds a
    registration or an allocation made over UDP.
    """

    def __init__(
        self,
        logic: RendezvousLogic | None = None,
        turn: TurnServer | None = None,
        relay_ports: SocketRelayPorts | None = None,
    ):
        self.logic = logic or RendezvousLogic()
        self.turn = turn
        self.relay_ports = relay_ports
        self.node: RendezvousNode | None = None
        self.fast: FastPath | None = None
        self.receive_buffer = RECEIVE_BUFFER  # of each listening socket (--rcvbuf)
        self.reuse_port = False  # main sockets shared with other processes (--workers)
        self.batched = True  # live channels forwarded in C when it was built (--forward)
        self.endpoint: UdpEndpoint | None = None
        self.behaviour_endpoints: dict[Address, UdpEndpoint] = {}  # RFC 5780's other three
        # A second --listen (IPv6 beside IPv4): main ports too, by address, and which one sends
        # to a destination of its family (True: IPv6) when the first --listen cannot.
        self.also: dict[Address, UdpEndpoint] = {}
        self._by_family: dict[bool, UdpEndpoint] = {}
        self._timer: Timer | None = None
        self._address: Address | None = None  # asked of the socket once, not per datagram
        self.streams: StreamListener | None = None
        self._streams: dict[Address, StreamConnection] = {}  # the listener's, by remote address
        self.tcp_address: Address | None = None
        self.tls_address: Address | None = None

    @classmethod
    def with_relay(
        cls,
        relay_host: str,
        logic: RendezvousLogic | None = None,
        policy: TurnPolicy | None = None,
        relay_host6: str | None = None,
        port_range: tuple[int, int] | None = None,
    ) -> RendezvousServer:
        """A rendezvous that is also a TURN relay, allocating on `relay_host` (and on
        `relay_host6`, an IPv6 address, for IPv6 and dual allocations); unless `logic` names a
        relay to offer, it offers this one, with REST credentials from the policy's secret (a
        random one if none is set)."""
        policy = policy or TurnPolicy()
        if policy.secret is None:
            policy.secret = secrets.token_urlsafe(18)
        ports = SocketRelayPorts(relay_host, relay_host6, port_range)
        return cls(logic, TurnServer(ports, policy, ports6=ports.ipv6()), ports)

    @property
    def address(self) -> Address:
        assert self._address is not None
        return self._address

    @property
    def stats(self) -> Counter[str]:
        """The node's counters and the stream listener's."""
        node = self.node.stats if self.node is not None else Counter()
        return node + (self.streams.stats if self.streams is not None else Counter())

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 3478,
        alt_host: str | None = None,
        *,
        tcp: bool = True,
        tls: ssl.SSLContext | None = None,
        tls_host: str | None = None,
        tls_port: int = TLS_PORT,
        stream_limits: StreamLimits | None = None,
        also: tuple[Address, ...] = (),
    ) -> RendezvousServer:
        """Listen on host:port, UDP and (unless not `tcp`) TCP on the same port; with `tls`, on
        TLS at tls_host (default `host`):tls_port too. With `alt_host`, also on the alternate
        port (port + 1) and on alt_host with both ports, UDP, for RFC 5780 NAT behaviour
        discovery."""
        if tcp or tls is not None:
            self.streams = StreamListener(self, stream_limits)
            self._streams = self.streams.by_addr
            self.logic.introductions.streams = self._streams  # no srflx from a TCP mapping
        try:
            self.endpoint, self.tcp_address = await open_main(
                host, port, self.streams if tcp else None, self.receive_buffer, self.reuse_port
            )
        except OSError:
            self.close()
            raise
        self._address = self.endpoint.local_address
        if tls is not None:
            assert self.streams is not None
            try:
                self.tls_address = await self.streams.listen(tls_host or host, tls_port, tls)
            except OSError:
                self.close()
                raise
        assert self.endpoint is not None
        await self._open_also(also, tcp)
        self.node = RendezvousNode(self.logic, self.turn, self.address, tuple(self.also))
        self._fast_path()
        if alt_host is not None:
            await self._start_behaviour(host, alt_host)
        self._timer = Timer(self.endpoint.loop, self.node.next_deadline, self._on_timer)
        if self.turn is not None:
            own = [host, *([alt_host] if alt_host else []), *[ip for ip, _ in also]]
            offer_relay(self.logic, self.turn, self.relay_ports, own, self.address[1])
        return self

    def _fast_path(self) -> None:
        """The main sockets and the relayed ones are read by the fast path."""
        assert self.endpoint is not None
        turn, ports = self.turn, self.relay_ports
        self.fast = FastPath(
            turn.table.routes if turn is not None else None,
            ports.sockets if ports is not None else {},
            self._streams,
            (self.logic.stats, turn.stats if turn is not None else Counter()),
            slow=self._take,
            slow_peer=self.from_peer,
            clock=self.endpoint.loop.time,
        )
        for local, endpoint in [(self.address, self.endpoint), *self.also.items()]:
            self.fast.attach(endpoint, local)
        if not self.also and not self.endpoint.dual:  # one socket answers every client
            self.fast.out = self.endpoint.sock
            self.fast.batched = new_forwarder(self.fast, ports) if self.batched else None
        self.fast.quick = self.node.quick_refresh if self.node is not None else None
        if ports is not None:
            ports.reader = self.fast.peer_readable

    async def _open_also(self, also: tuple[Address, ...], tcp: bool) -> None:
        """More main ports (`--listen` given again): UDP, and TCP on each one's port."""
        try:
            for host, port in also:
                endpoint = UdpEndpoint.open(
                    host,
                    port,
                    lambda data, src, now: None,  # read by the fast path, as the main socket
                    timestamps=False,
                    receive_buffer=self.receive_buffer,
                    dual=False,  # the first --listen has the other family
                    reuse_port=self.reuse_port,
                )
                local = endpoint.local_address
                self.also[local] = endpoint
                six, dual = ":" in host, self.endpoint is not None and self.endpoint.dual
                if not dual and (":" in self.address[0]) != six:
                    self._by_family.setdefault(six, endpoint)
                if tcp and self.streams is not None:
                    await self.streams.listen(host, local[1], dual=False)
        except OSError:
            self.close()
            raise

    async def _start_behaviour(self, host: str, alt_host: str) -> None:
        primary = self.address
        if host in ("0.0.0.0", "::", ""):  # noqa: S104
            raise OSError("--alt-address needs --listen on a specific address, not a wildcard")
        alt_port = primary[1] + 1
        addresses = Addresses(primary, (alt_host, alt_port))
        for local in addresses.all()[1:]:
            self.behaviour_endpoints[local] = UdpEndpoint.open(
                local[0], local[1], functools.partial(self._on_datagram, local=local)
            )
        self.logic.addresses = addresses

    def _send(self, outs: list[Out]) -> None:
        """Each answer from the socket it names: ours, an RFC 5780 one, or a relayed port."""
        assert self.endpoint is not None
        streams = self._streams
        for out in outs:
            if out.via is None or out.via == self._address:
                if streams and (conn := streams.get(out.dest)) is not None:
                    conn.send(out.data)  # that client speaks over its connection
                elif self._by_family and (ep := self._by_family.get(":" in out.dest[0])):
                    ep.send(out.data, out.dest)  # the family the first --listen lacks
                else:
                    self.endpoint.send(out.data, out.dest)
            elif (e := self.behaviour_endpoints.get(out.via) or self.also.get(out.via)) is not None:
                e.send(out.data, out.dest)
            elif self.relay_ports is not None:
                self.relay_ports.send(out.data, out.dest, out.via)

    def _on_datagram(
        self, data: bytes, src: Address, now: float, *, local: Address | None = None
    ) -> None:
        if self._streams and src in self._streams:
            assert self.streams is not None  # another client than the stream's, or a forgery
            self.streams.stats["udp_from_stream_address"] += 1
            return
        self._take(data, src, local or self.address, now)

    def _take(self, data: bytes, src: Address, local: Address, now: float) -> None:
        assert self.node is not None
        # ChannelData too re-arms the timer: a route the full rules teach must be swept at its
        # expiry (--offload's kernel entries too). The fast path's datagrams never come here.
        self.deliver(self.node.handle(data, src, local, now))

    def deliver(self, outs: list[Out]) -> None:
        """Datagrams to send now, and the timer re-armed (a PEER-READY is retransmitted)."""
        self._send(outs)
        if self._timer is not None:
            self._timer.rearm()

    # -- what the stream listener asks (rendezvous/stream_listener.py's StreamHost) --------
    def stream_opens(self, src: Address) -> bool:
        assert self.node is not None and self.endpoint is not None
        return not self.node.holds(src, self.endpoint.loop.time())

    def stream_frame(self, data: bytes, src: Address) -> None:
        assert self.endpoint is not None
        self._take(data, src, self.address, self.endpoint.loop.time())

    def stream_closed(self, src: Address) -> None:
        if self.node is not None and self.endpoint is not None:
            self.node.stream_closed(src, self.endpoint.loop.time())

    def from_peer(self, data: bytes, relayed: Address, peer: Address) -> None:
        assert self.node is not None and self.endpoint is not None
        try:
            self._send(self.node.from_peer(data, relayed, peer, self.endpoint.loop.time()))
        except Exception:  # as UdpEndpoint does: counted, logged at a limited rate, never raised
            self.endpoint.handler_failed((str(peer[0]), peer[1]))

    def _on_timer(self, now: float) -> None:
        assert self.node is not None
        self._send(self.node.poll(now))

    def close(self) -> None:
        if self.streams is not None:
            self.streams.close()
        if self._timer is not None:
            self._timer.cancel()
        if self.relay_ports is not None:
            self.relay_ports.close_all()
        if self.endpoint is not None:
            self.endpoint.close()
        for endpoint in [*self.behaviour_endpoints.values(), *self.also.values()]:
            endpoint.close()

    async def __aenter__(self) -> RendezvousServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


async def open_main(
    host: str, port: int, streams: StreamListener | None, receive_buffer: int, reuse_port: bool
) -> tuple[UdpEndpoint, Address | None]:
    """The main UDP socket, and with `streams` TCP on its port (RFC 8656 §3.1: the same port).
    The server reads the socket itself (rendezvous/fast_path.py), not through its handler."""
    for attempt in range(BIND_TRIES):
        # No arrival stamps (nothing here measures a path), and coturn's 4 MiB receive
        # buffer: synchronised bursts from many callers overflow the default while the CPU
        # idles.
        endpoint = UdpEndpoint.open(
            host,
            port,
            lambda data, src, now: None,
            timestamps=False,
            receive_buffer=receive_buffer,
            reuse_port=reuse_port,
        )
        if streams is None:
            return endpoint, None
        try:
            return endpoint, await streams.listen(host, endpoint.local_address[1])
        except OSError as exc:
            endpoint.close()
            # A port the kernel picked for UDP may be taken for TCP: let it pick again.
            if port != 0 or exc.errno != errno.EADDRINUSE or attempt == BIND_TRIES - 1:
                raise
    raise AssertionError("unreachable")  # the last attempt returned or raised


def offer_relay(
    logic: RendezvousLogic,
    turn: TurnServer,
    ports: SocketRelayPorts | None,
    listening: list[str],
    port: int,
) -> None:
    """Tell the relay its own addresses, never a peer: where we listen and relay, and every
    address of this host (a service there may listen on all of them); and unless the logic
    names another relay, offer callers this one."""
    own = [*listening, *host_ipv4_addresses(), *host_ipv6_addresses()]
    turn.add_own_addresses(own + (ports.hosts if ports is not None else []))
    if ports is not None and logic.relay is None:
        assert turn.policy.secret is not None
        logic.relay = RelayOffer((ports.host, port), turn.policy.secret)
