"""`callpeer natcheck`'s network side: the RFC 5780 tests over real sockets (asyncio shell)."""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from voip.natcheck.verdict import NatTests
from voip.natcheck.verdict import bounds
from voip.natcheck.verdict import coarse_waits
from voip.natcheck.verdict import refine_waits
from voip.transport import UdpEndpoint
from voip.transport import request
from voip.wire.stun import CHANGE_IP
from voip.wire.stun import CHANGE_PORT
from voip.wire.stun import HEADER_LEN
from voip.wire.stun import Address
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.stun import change_request
from voip.wire.stun import encode
from voip.wire.stun import looks_like_stun
from voip.wire.stun import parse_message_untrusted
from voip.wire.transactions import Schedule

# A request and two retransmissions, 0.3 s, 0.6 s and 1.2 s apart: silence after that is an answer.
WAITS = Schedule(rto=0.3, rc=3, rm=4)
PORT_SAMPLES = 4  # fresh sockets whose public ports show how the router allocates them
# Room for XOR-MAPPED-ADDRESS, RESPONSE-ORIGIN, OTHER-ADDRESS (12 bytes each for IPv4, 24 for
# IPv6), SOFTWARE and FINGERPRINT in the answer: see padded().
REQUEST_BYTES = 160

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Answer:
    msg: Message
    src: Address
    port: int  # the local port of the socket it arrived on


def local_ip_towards(server: Address) -> str:
    """The address this machine sends from to reach `server` (connect() sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(server)
        return str(s.getsockname()[0])


class _Requester:
    """Binding requests from any of our sockets, matched by transaction ID alone: a filtering
    test's answer comes from elsewhere, and a hairpin or lifetime test's lands on another
    socket than the one that asked."""

    def __init__(self) -> None:
        self.waiting: dict[bytes, asyncio.Future[Answer]] = {}

    def on_datagram(self, data: bytes, src: Address, now: float, *, port: int) -> None:
        if not looks_like_stun(data):
            return
        try:
            msg = parse_message_untrusted(data)
        except StunError:
            return
        fut = self.waiting.get(msg.transaction_id)
        if fut is not None and not fut.done():
            fut.set_result(Answer(msg, src, port))

    async def bind(self, ip: str) -> UdpEndpoint:
        endpoint = UdpEndpoint.open(ip, 0, lambda *a: None)
        endpoint.on_datagram = functools.partial(self.on_datagram, port=endpoint.local_address[1])
        return endpoint

    async def ask_from(
        self, endpoint: UdpEndpoint, dest: Address, attrs: tuple[tuple[int, bytes], ...] = ()
    ) -> Answer | None:
        req = Message(Method.BINDING, Class.REQUEST, attributes=padded(attrs))
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.waiting[req.transaction_id] = fut
        try:
            return await request(endpoint, encode(req, fingerprint=True), dest, fut, WAITS)
        finally:
            del self.waiting[req.transaction_id]

    async def ask(self, endpoint: UdpEndpoint, dest: Address, flags: int = 0) -> Message | None:
        attrs = ((Attr.CHANGE_REQUEST, change_request(flags)),) if flags else ()
        got = await self.ask_from(endpoint, dest, attrs)
        return None if got is None else got.msg


def padded(attrs: tuple[tuple[int, bytes], ...]) -> tuple[tuple[int, bytes], ...]:
    """`attrs` and a PADDING attribute (RFC 5780 §7.6) that makes the request REQUEST_BYTES
    long. A server that will not amplify answers a small request with XOR-MAPPED-ADDRESS
    alone; the tests need RESPONSE-ORIGIN and OTHER-ADDRESS too, and room for them is asked
    for by sending as many bytes as the answer will take."""
    size = HEADER_LEN + sum(4 + len(v) + (-len(v) % 4) for _, v in attrs) + 8  # 8: FINGERPRINT
    room = (REQUEST_BYTES - size - 4) // 4 * 4
    return (*attrs, (Attr.PADDING, bytes(room))) if room > 0 else attrs


def _mapped(msg: Message | None) -> Address | None:
    if msg is None or msg.cls != Class.SUCCESS:
        return None
    return msg.xor_address() or msg.address()


async def run_tests(server: Address, samples: int = PORT_SAMPLES) -> NatTests:
    requester = _Requester()
    first = await requester.bind(local_ip_towards(server))
    tests = NatTests(local=first.local_address, server=server)
    try:
        answer = await requester.ask(first, server)
        tests.mapped1 = _mapped(answer)
        if answer is None or tests.mapped1 is None:
            return tests
        tests.ports.append((tests.local[1], tests.mapped1[1]))
        tests.other = answer.address(Attr.OTHER_ADDRESS)
        if tests.other is None:
            tests.notes.append("the server sent no OTHER-ADDRESS: it cannot run RFC 5780 tests")
        else:
            await _mapping_tests(requester, first, tests, tests.other)
        # Filtering from a fresh socket: the mapping tests opened the NAT's filter towards the
        # alternate address, which would let the answers below through whatever the filtering.
        second = await requester.bind(tests.local[0])
        try:
            tests.sender_local = second.local_address
            tests.sender_mapped = _mapped(await requester.ask(second, server))
            if tests.sender_mapped is None:
                return tests
            tests.ports.append((tests.sender_local[1], tests.sender_mapped[1]))
            if tests.other is not None:
                await _filtering_tests(requester, second, tests, server)
            await _hairpin_test(requester, second, tests)
        finally:
            second.close()
    finally:
        first.close()
    await _port_samples(requester, tests, server, samples)
    return tests


async def _mapping_tests(
    requester: _Requester, endpoint: UdpEndpoint, tests: NatTests, other: Address
) -> None:
    other_ip, other_port = other
    tests.mapped2 = _mapped(await requester.ask(endpoint, (other_ip, tests.server[1])))
    if tests.mapped2 is not None and tests.mapped2 != tests.mapped1:
        tests.mapped3 = _mapped(await requester.ask(endpoint, (other_ip, other_port)))


async def _filtering_tests(
    requester: _Requester, endpoint: UdpEndpoint, tests: NatTests, server: Address
) -> None:
    answer = await requester.ask(endpoint, server, CHANGE_IP | CHANGE_PORT)
    tests.filter_any = answer is not None and answer.cls == Class.SUCCESS
    if not tests.filter_any:
        answer = await requester.ask(endpoint, server, CHANGE_PORT)
        tests.filter_port = answer is not None and answer.cls == Class.SUCCESS


async def _hairpin_test(requester: _Requester, sender: UdpEndpoint, tests: NatTests) -> None:
    """From the second socket to the first one's public address: does it come back in?"""
    assert tests.mapped1 is not None
    if tests.mapped1 == tests.local:
        return  # no NAT: nothing to turn around
    # The first socket never answers; the request itself arriving there is the result.
    got = await requester.ask_from(sender, tests.mapped1)
    tests.hairpin = got is not None and got.msg.cls == Class.REQUEST
    tests.hairpin_source = got.src if tests.hairpin and got is not None else None


async def _port_samples(
    requester: _Requester, tests: NatTests, server: Address, samples: int
) -> None:
    """One Binding from each of `samples` fresh sockets, one after another."""
    for _ in range(samples):
        endpoint = await requester.bind(tests.local[0])
        try:
            mapped = _mapped(await requester.ask(endpoint, server))
            if mapped is None:
                return
            tests.ports.append((endpoint.local_address[1], mapped[1]))
        finally:
            endpoint.close()


def response_port(port: int) -> bytes:
    return struct.pack("!HH", port, 0)


async def measure_lifetime(
    server: Address, limit: float, progress: Progress, tests: NatTests
) -> None:
    """Bound how long the NAT keeps a quiet mapping, in at most about 2 x `limit` seconds."""
    requester = _Requester()
    asker = await requester.bind(local_ip_towards(server))
    try:
        own = _mapped(await requester.ask(asker, server))
        if own is None:
            tests.notes.append("no answer from the server: mapping lifetime not measured")
            return
        # Aimed at our own public port first: an error here means no RESPONSE-PORT support.
        first = await requester.ask_from(
            asker, server, ((Attr.RESPONSE_PORT, response_port(own[1])),)
        )
        if first is None or first.msg.cls != Class.SUCCESS:
            tests.notes.append(
                "the server does not support RESPONSE-PORT (RFC 5780 §7.5), so the mapping "
                "lifetime cannot be measured there"
            )
            return
        results = await _quiet_round(requester, asker, server, coarse_waits(limit), progress)
        if results is None:
            tests.notes.append(
                "the server answers RESPONSE-PORT requests to the asking port, so the mapping "
                "lifetime cannot be measured there"
            )
            return
        alive, gone = bounds(results)
        if gone is not None and gone - alive > 1.0:
            progress(f"refining between {alive:.0f} and {gone:.0f} s")
            refined = await _quiet_round(
                requester, asker, server, refine_waits(alive, gone), progress
            )
            alive, gone = bounds(refined or {}, alive, gone)
        if gone is not None and alive >= gone:
            tests.notes.append("mapping lifetime results disagree (a lost packet?)")
        tests.lifetime = (alive, gone)
    finally:
        asker.close()


async def _quiet_round(
    requester: _Requester,
    asker: UdpEndpoint,
    server: Address,
    waits: list[float],
    progress: Progress,
) -> dict[float, bool] | None:
    """Bind one fresh socket per wait, all at once; after each wait, ask the server to answer
    to that socket's public port from `asker`. Stops at the first mapping that died: every
    longer wait would die too. None if the server ignored RESPONSE-PORT."""
    loop = asyncio.get_running_loop()
    sockets = [await requester.bind(asker.local_address[0]) for _ in waits]
    results: dict[float, bool] = {}
    try:
        mapped = await asyncio.gather(*(requester.ask_from(s, server) for s in sockets))
        start = loop.time()
        for wait, got in sorted(zip(waits, mapped, strict=True), key=lambda x: x[0]):
            address = _mapped(None if got is None else got.msg)
            if address is None:
                continue
            await asyncio.sleep(max(0.0, start + wait - loop.time()))
            answer = await requester.ask_from(
                asker, server, ((Attr.RESPONSE_PORT, response_port(address[1])),)
            )
            if answer is not None and answer.port == asker.local_address[1]:
                return None
            results[wait] = answer is not None and answer.msg.cls == Class.SUCCESS
            progress(
                f"a mapping quiet for {wait:.1f} s "
                + ("still lets answers in" if results[wait] else "has been forgotten")
            )
            if not results[wait]:
                break
    finally:
        for s in sockets:
            s.close()
    return results
