"""A TURN relay's relayed transport addresses as real UDP sockets (RFC 8656 §7.2: ports drawn at
random, from coturn's --min-port/--max-port range when one is given)."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable

from voip.wire.stun import Address

RANGE_TRIES = 64  # random ports tried in a relay port range before it counts as full

PeerReader = Callable[[Address, socket.socket], None]  # a relayed socket is readable


class SocketRelayPorts:
    """Relayed transport addresses as real UDP sockets on `host`, read by the event loop; and
    on `host6`, an IPv6 address of this host, for IPv6 and dual allocations (`ipv6()`).

    With `port_range` (coturn's --min-port/--max-port) each port is drawn at random from it
    (RFC 8656 §7.2: random, so an attacker cannot guess the next allocation's), never from the
    kernel's ephemeral range where this host's own clients take theirs; without, the kernel
    picks."""

    def __init__(
        self, host: str, host6: str | None = None, port_range: tuple[int, int] | None = None
    ):
        self.host, self.host6 = host, host6
        self.port_range = port_range
        self.sockets: dict[Address, socket.socket] = {}
        self.reader: PeerReader | None = None  # the server's, once it runs
        # told of each socket about to close (the C forwarder drops what names its descriptor)
        self.closing: Callable[[socket.socket], None] | None = None
        self._random = random.SystemRandom()

    @property
    def hosts(self) -> list[str]:
        return [self.host, *([self.host6] if self.host6 else [])]

    def ipv6(self) -> RelayPortsOn | None:
        """The IPv6 relayed addresses, as TurnServer's `ports6`: None without host6."""
        return RelayPortsOn(self, self.host6) if self.host6 else None

    def open(self) -> Address | None:
        return self.open_on(self.host)

    def open_on(self, host: str) -> Address | None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:  # at the open-file limit socket() itself fails (EMFILE): the caller answers 508
            sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError:
            return None
        if not self._bind(sock, host):
            sock.close()
            return None
        sock.setblocking(False)
        host, port = sock.getsockname()[:2]
        addr: Address = (str(host), int(port))
        self.sockets[addr] = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, addr, sock)
        return addr

    def _bind(self, sock: socket.socket, host: str) -> bool:
        """Bind to a random port of the range (RANGE_TRIES draws), or to any port without
        one; False when none was free."""
        if self.port_range is None:
            try:
                sock.bind((host, 0))
            except OSError:
                return False
            return True
        low, high = self.port_range
        for _ in range(RANGE_TRIES):
            try:
                sock.bind((host, self._random.randint(low, high)))
            except OSError:  # taken (by an allocation or anyone else): draw again
                continue
            return True
        return False  # a range this full is exhausted as far as callers can tell: 508

    def close(self, relayed: Address) -> None:
        sock = self.sockets.pop(relayed, None)
        if sock is not None:
            if self.closing is not None:
                self.closing(sock)
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
        if self.reader is not None:
            self.reader(relayed, sock)


class RelayPortsOn:
    """One family's relayed addresses of a SocketRelayPorts (its sockets, its reader)."""

    def __init__(self, ports: SocketRelayPorts, host: str):
        self.ports, self.host = ports, host

    def open(self) -> Address | None:
        return self.ports.open_on(self.host)

    def close(self, relayed: Address) -> None:
        self.ports.close(relayed)
