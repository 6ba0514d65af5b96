"""The rendezvous server's asyncio shell: one UDP socket around RendezvousLogic (and TURN)."""

from __future__ import annotations

import asyncio
import functools
import secrets
import socket

from rendezvous.behaviour import Addresses
from rendezvous.logic import RelayOffer
from rendezvous.logic import RendezvousLogic
from rendezvous.node import RendezvousNode
from rendezvous.turn_server import Out
from rendezvous.turn_server import TurnPolicy
from rendezvous.turn_server import TurnServer
from voip.host_addresses import host_ipv4_addresses
from voip.transport import BATCH
from voip.transport import Timer
from voip.transport import UdpEndpoint
from voip.wire.stun import Address
from voip.wire.turn import looks_like_channel_data

RECEIVE_BUFFER = 4 * 1024 * 1024  # bytes, as coturn asks for


class SocketRelayPorts:
    """Relayed transport addresses as real UDP sockets on `host`, read by the event loop."""

    def __init__(self, host: str):
        self.host = host
        self.sockets: dict[Address, socket.socket] = {}
        self.server: RendezvousServer | None = None

    def open(self) -> Address | None:
        try:  # at the open-file limit socket() itself fails (EMFILE): the caller answers 508
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        except OSError:
            return None
        try:
            sock.bind((self.host, 0))
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        host, port = sock.getsockname()[:2]
        addr: Address = (str(host), int(port))
        self.sockets[addr] = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, addr, sock)
        return addr

    def close(self, relayed: Address) -> None:
        sock = self.sockets.pop(relayed, None)
        if sock is not None:
            asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()

    def close_all(self) -> None:
        for addr in list(self.sockets):
            self.close(addr)

    def send(self, data: bytes, dest: Address, via: Address) -> None:
        sock = self.sockets.get(via)
        if sock is not None:
            try:  # noqa: SIM105 - per datagram: a context manager costs more than a try
                sock.sendto(data, dest)
            except OSError:  # a peer gone away: UDP has nothing to retry
                pass

    def _readable(self, relayed: Address, sock: socket.socket) -> None:
        for _ in range(BATCH):
            try:
                data, src = sock.recvfrom(65535)
            except (BlockingIOError, OSError):
                return
            if self.server is not None:
                self.server.from_peer(data, relayed, (str(src[0]), int(src[1])))


class RendezvousServer:
    """The asyncio shell: the sockets, and a timer, around a RendezvousNode."""

    def __init__(
        self,
        logic: RendezvousLogic | None = None,
        turn: TurnServer | None = None,
        relay_ports: SocketRelayPorts | None = None,
    ):
        self.logic = logic or RendezvousLogic()
        self.turn = turn
        self.relay_ports = relay_ports
        if relay_ports is not None:
            relay_ports.server = self
        self.node: RendezvousNode | None = None
        self.endpoint: UdpEndpoint | None = None
        self.behaviour_endpoints: dict[Address, UdpEndpoint] = {}  # RFC 5780's other three
        self._timer: Timer | None = None
        self._address: Address | None = None  # asked of the socket once, not per datagram

    @classmethod
    def with_relay(
        cls,
        relay_host: str,
        logic: RendezvousLogic | None = None,
        policy: TurnPolicy | None = None,
    ) -> RendezvousServer:
        """A rendezvous that is also a TURN relay, allocating on `relay_host`.

        Unless `logic` already names a relay to offer, it offers this one to its callers, with
        REST credentials from the policy's secret (a random one if none is set).
        """
        policy = policy or TurnPolicy()
        if policy.secret is None:
            policy.secret = secrets.token_urlsafe(18)
        ports = SocketRelayPorts(relay_host)
        return cls(logic, TurnServer(ports, policy), ports)

    @property
    def address(self) -> Address:
        assert self._address is not None
        return self._address

    async def start(
        self, host: str = "127.0.0.1", port: int = 3478, alt_host: str | None = None
    ) -> RendezvousServer:
        """Listen on host:port; with `alt_host`, also on the alternate port (port + 1) and on
        alt_host with both ports, for RFC 5780 NAT behaviour discovery."""
        # No arrival stamps (nothing here measures a path), and coturn's 4 MiB receive buffer:
        # synchronised bursts from many callers overflow the default while the CPU idles.
        self.endpoint = UdpEndpoint.open(
            host, port, self._on_datagram, timestamps=False, receive_buffer=RECEIVE_BUFFER
        )
        self._address = self.endpoint.local_address
        self.node = RendezvousNode(self.logic, self.turn, self.address)
        if alt_host is not None:
            await self._start_behaviour(host, alt_host)
        self._timer = Timer(self.endpoint.loop, self.node.next_deadline, self._on_timer)
        if self.turn is not None:
            # Never a peer: where we listen and relay, and every address of this host (a
            # service there may listen on all of them).
            own = [host, *([alt_host] if alt_host else []), *host_ipv4_addresses()]
            if self.relay_ports is not None:
                own.append(self.relay_ports.host)
            self.turn.add_own_addresses(own)
        if self.turn is not None and self.relay_ports is not None and self.logic.relay is None:
            assert self.turn.policy.secret is not None
            advertised = (self.relay_ports.host, self.address[1])
            self.logic.relay = RelayOffer(advertised, self.turn.policy.secret)
        return self

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
        for out in outs:
            if out.via is None or out.via == self._address:
                self.endpoint.send(out.data, out.dest)
            elif (endpoint := self.behaviour_endpoints.get(out.via)) is not None:
                endpoint.send(out.data, out.dest)
            elif self.relay_ports is not None:
                self.relay_ports.send(out.data, out.dest, out.via)

    def _on_datagram(
        self, data: bytes, src: Address, now: float, *, local: Address | None = None
    ) -> None:
        assert self.node is not None and self._timer is not None
        self._send(self.node.handle(data, src, local or self.address, now))
        if not looks_like_channel_data(data):  # ChannelData moves no deadline
            self._timer.rearm()

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
        if self._timer is not None:
            self._timer.cancel()
        if self.relay_ports is not None:
            self.relay_ports.close_all()
        if self.endpoint is not None:
            self.endpoint.close()
        for endpoint in self.behaviour_endpoints.values():
            endpoint.close()

    async def __aenter__(self) -> RendezvousServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
