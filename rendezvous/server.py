"""The rendezvous server's asyncio shell: one UDP socket around RendezvousLogic."""

from __future__ import annotations

import asyncio

from rendezvous.logic import RendezvousLogic
from voip.transport import Timer, UdpEndpoint
from voip.wire.stun import Address


class RendezvousServer:
    def __init__(self, logic: RendezvousLogic | None = None):
        self.logic = logic or RendezvousLogic()
        self.endpoint: UdpEndpoint | None = None
        self._timer: Timer | None = None

    @property
    def address(self) -> Address:
        assert self.endpoint is not None
        return self.endpoint.local_address

    async def start(self, host: str = "127.0.0.1", port: int = 3478) -> RendezvousServer:
        self.endpoint = await UdpEndpoint.bind(host, port, self._on_datagram)
        self._timer = Timer(self.endpoint.loop, self.logic.next_deadline, self._on_timer)
        return self

    def _on_datagram(self, data: bytes, src: Address, now: float) -> None:
        assert self.endpoint is not None and self._timer is not None
        self.endpoint.send_all(self.logic.handle_datagram(data, src, now))
        self._timer.rearm()

    def _on_timer(self, now: float) -> None:
        assert self.endpoint is not None
        self.endpoint.send_all(self.logic.poll(now))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.endpoint is not None:
            self.endpoint.close()

    async def __aenter__(self) -> RendezvousServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


async def serve_forever(host: str, port: int) -> None:
    server = await RendezvousServer().start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        server.close()
