"""`callpeer natcheck`'s network side: the RFC 5780 tests, from one socket (asyncio shell)."""

from __future__ import annotations

import asyncio
import socket

from rendezvous.behaviour import CHANGE_IP, CHANGE_PORT, change_request
from voip.nat.natcheck import NatTests
from voip.transport import UdpEndpoint
from voip.wire.stun import (
    Address,
    Attr,
    Class,
    Message,
    Method,
    StunError,
    encode,
    looks_like_stun,
    parse_message_untrusted,
)

WAITS = (0.3, 0.6, 1.2)  # s: a request and two retransmissions; silence after that is an answer


def local_ip_towards(server: Address) -> str:
    """The address this machine sends from to reach `server` (connect() sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(server)
        return str(s.getsockname()[0])


class _Requester:
    def __init__(self) -> None:
        self.waiting: dict[bytes, asyncio.Future[Message]] = {}

    def on_datagram(self, data: bytes, src: Address, now: float) -> None:
        if not looks_like_stun(data):
            return
        try:
            msg = parse_message_untrusted(data)
        except StunError:
            return
        # Matched by transaction ID alone: a filtering test's answer comes from elsewhere.
        fut = self.waiting.get(msg.transaction_id)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def ask(self, endpoint: UdpEndpoint, dest: Address, flags: int = 0) -> Message | None:
        attrs = ((Attr.CHANGE_REQUEST, change_request(flags)),) if flags else ()
        req = Message(Method.BINDING, Class.REQUEST, attributes=attrs)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self.waiting[req.transaction_id] = fut
        data = encode(req, fingerprint=True)
        try:
            for wait in WAITS:
                endpoint.send(data, dest)
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), wait)
                except TimeoutError:
                    continue
            return None
        finally:
            del self.waiting[req.transaction_id]


async def run_tests(server: Address) -> NatTests:
    requester = _Requester()
    endpoint = await UdpEndpoint.bind(local_ip_towards(server), 0, requester.on_datagram)
    tests = NatTests(local=endpoint.local_address, server=server)
    try:
        first = await requester.ask(endpoint, server)
        if first is None or first.cls != Class.SUCCESS:
            return tests
        tests.mapped1 = first.xor_address() or first.address()
        tests.other = first.address(Attr.OTHER_ADDRESS)
        if tests.other is None:
            tests.notes.append("the server sent no OTHER-ADDRESS: it cannot run RFC 5780 tests")
            return tests
        other_ip, other_port = tests.other
        second = await requester.ask(endpoint, (other_ip, server[1]))
        tests.mapped2 = second.xor_address() if second is not None else None
        if tests.mapped2 is not None and tests.mapped2 != tests.mapped1:
            third = await requester.ask(endpoint, (other_ip, other_port))
            tests.mapped3 = third.xor_address() if third is not None else None
    finally:
        endpoint.close()
    # Filtering from a fresh socket: the mapping tests opened the NAT's filter towards the
    # alternate address, which would let the answers below through whatever the filtering.
    endpoint = await UdpEndpoint.bind(tests.local[0], 0, requester.on_datagram)
    try:
        if await requester.ask(endpoint, server) is None:
            return tests
        answer = await requester.ask(endpoint, server, CHANGE_IP | CHANGE_PORT)
        tests.filter_any = answer is not None and answer.cls == Class.SUCCESS
        if not tests.filter_any:
            answer = await requester.ask(endpoint, server, CHANGE_PORT)
            tests.filter_port = answer is not None and answer.cls == Class.SUCCESS
        return tests
    finally:
        endpoint.close()
