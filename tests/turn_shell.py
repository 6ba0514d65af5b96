"""A TURN client on a real socket with a timer, for tests against real relays (ours, coturn)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from collections.abc import Callable

from voip.nat.turn_client import Allocated
from voip.nat.turn_client import TurnClient
from voip.transport import Timer
from voip.transport import UdpEndpoint
from voip.wire.stun import Address
from voip.wire.stun import looks_like_stun
from voip.wire.stun import parse_message_untrusted
from voip.wire.turn import looks_like_channel_data
from voip.wire.turn import rest_password
from voip.wire.turn import rest_username


class TurnShell:
    """A TurnClient on a real socket with a timer: the few lines the Connector has."""

    def __init__(self, client: TurnClient):
        self.client = client
        self.received: list[tuple[bytes, Address]] = []
        self.allocated = asyncio.Event()

    async def start(self) -> None:
        self.endpoint = UdpEndpoint.open("127.0.0.1", 0, self._on_datagram)
        self.timer = Timer(self.endpoint.loop, self.client.next_deadline, self._on_timer)
        self.endpoint.send_all(self.client.start(self.endpoint.loop.time()))
        self.timer.rearm()

    def _on_timer(self, now: float) -> None:
        self.endpoint.send_all(self.client.poll(now))
        self._events()

    def _on_datagram(self, data: bytes, src: Address, now: float) -> None:
        if looks_like_channel_data(data):
            inner = self.client.unwrap_channel(data, src)
            self.received += [inner] if inner else []
        elif looks_like_stun(data):
            msg = parse_message_untrusted(data)
            out = self.client.handle(msg, src, now)
            if out is None:
                inner = self.client.unwrap(msg, src)
                self.received += [inner] if inner else []
            self.endpoint.send_all(out or [])
        self._events()
        self.timer.rearm()

    def _events(self) -> None:
        if any(isinstance(e, Allocated) for e in self.client.pop_events()):
            self.allocated.set()

    def close(self) -> None:
        self.endpoint.send_all(self.client.close(self.endpoint.loop.time()))
        self.timer.cancel()
        self.endpoint.close()


def rest_shell(server: Address, secret: str, name: str = "alice") -> TurnShell:
    """A shell whose client has REST credentials from `secret`, valid for 10 minutes."""
    user = rest_username(int(time.time()) + 600, name)
    return TurnShell(TurnClient(server, user, rest_password(secret, user)))


@contextlib.asynccontextmanager
async def peer_on_channel(shell: TurnShell) -> AsyncIterator[tuple[socket.socket, Address]]:
    """A peer socket on loopback, the shell's channel bound to it: (socket, its address)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.setblocking(False)  # the relay runs in this loop: never block it
        peer_addr: Address = peer.getsockname()
        shell.endpoint.send_all(shell.client.bind_channel(peer_addr, loop.time()))
        await until(lambda: peer_addr in shell.client.channels)
        yield peer, peer_addr


async def until(predicate: Callable[[], object], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
