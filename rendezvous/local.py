"""Finding a rendezvous: probe one with a STUN Binding, or host one in this process."""

from __future__ import annotations

import asyncio
import errno

from rendezvous.server import RendezvousServer
from rendezvous.turn_server import TurnPolicy
from voip.transport import UdpEndpoint
from voip.transport import request
from voip.wire.stun import Address
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.stun import encode
from voip.wire.stun import parse_message_untrusted
from voip.wire.transactions import Schedule

DEFAULT_SERVER: Address = ("127.0.0.1", 3478)
PROBE = Schedule(rto=0.6, rc=2, rm=1)  # two tries 0.6 s apart: a server on loopback answers fast


async def probe_stun(server: Address, schedule: Schedule = PROBE) -> Address | None:
    """Our mapped address as `server` reports it, or None if no STUN server answers there."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[Address] = loop.create_future()
    req = Message(Method.BINDING, Class.REQUEST)

    def on_datagram(data: bytes, src: Address, now: float) -> None:
        try:
            msg = parse_message_untrusted(data)
        except StunError:
            return
        if msg.transaction_id == req.transaction_id and msg.cls == Class.SUCCESS:
            mapped = msg.xor_address()
            if mapped is not None and not answer.done():
                answer.set_result(mapped)

    endpoint = UdpEndpoint.open("0.0.0.0", 0, on_datagram)  # noqa: S104
    try:
        return await request(endpoint, encode(req, fingerprint=True), server, answer, schedule)
    finally:
        endpoint.close()


def loopback_server() -> RendezvousServer:
    """A rendezvous and relay for callers on this machine: relaying to loopback is safe here,
    since a relay bound to loopback is reachable from this machine alone. Its names and their
    keys are kept in memory only (RendezvousLogic's default): `callpeer demo` and the tests
    never write a store into the user's home."""
    return RendezvousServer.with_relay("127.0.0.1", policy=TurnPolicy(allow_loopback_peers=True))


async def find_or_host(server: Address = DEFAULT_SERVER) -> tuple[Address, RendezvousServer | None]:
    """Use the rendezvous at `server` if one answers; else host one there in this process.

    Two terminals started together may both find nothing; the one that loses the race to bind
    the port finds the winner's server on a second probe.
    """
    for _ in range(3):
        if await probe_stun(server) is not None:
            return server, None
        try:
            hosted = await loopback_server().start(*server)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        return hosted.address, hosted
    raise OSError(
        errno.EADDRINUSE, f"port {server[1]} is taken by something that does not answer STUN"
    )
