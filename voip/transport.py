"""The asyncio shell around sans-IO protocol objects: one UDP socket and one timer."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from voip.wire.stun import Address

DatagramHandler = Callable[[bytes, Address, float], object]  # the result is ignored


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: UdpEndpoint):
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        host, port = addr[0], addr[1]
        assert isinstance(host, str) and isinstance(port, int)
        self.endpoint.received += 1
        self.endpoint.on_datagram(data, (host, port), self.endpoint.loop.time())

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: a peer candidate that goes nowhere. Checks time out
        # on their own; counting is all there is to do.
        self.endpoint.errors += 1


class UdpEndpoint:
    """One bound UDP socket; every datagram goes to `on_datagram(data, src, now)`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_datagram: DatagramHandler):
        self.loop = loop
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0
        self.sent = 0
        self.errors = 0

    @classmethod
    async def bind(cls, host: str, port: int, on_datagram: DatagramHandler) -> UdpEndpoint:
        loop = asyncio.get_running_loop()
        self = cls(loop, on_datagram)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(host, port), family=family
        )
        self.transport = transport
        return self

    @property
    def local_address(self) -> Address:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def send(self, data: bytes, dest: Address) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.sent += 1
        self.transport.sendto(data, dest)

    def send_all(self, datagrams: list[tuple[bytes, Address]]) -> None:
        for data, dest in datagrams:
            self.send(data, dest)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Timer:
    """Calls `fire(now)` at the earliest deadline any sans-IO object asks for."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        deadline: Callable[[], float | None],
        fire: Callable[[float], None],
    ):
        self.loop = loop
        self.deadline = deadline
        self.fire = fire
        self._handle: asyncio.TimerHandle | None = None

    def rearm(self) -> None:
        """Call after anything that may have moved the earliest deadline."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        when = self.deadline()
        if when is not None:
            self._handle = self.loop.call_at(when, self._run)

    def _run(self) -> None:
        self._handle = None
        self.fire(self.loop.time())
        self.rearm()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


async def resolve(host: str, port: int) -> Address:
    """A numeric address for host; raises OSError with the resolver's reason."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, family=socket.AF_INET, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"{host!r} has no IPv4 address")
    addr = infos[0][4]
    return str(addr[0]), int(addr[1])
