"""Interop with aioice, an independent STUN/ICE implementation: wire format and a real ICE peer."""

from __future__ import annotations

import asyncio
import socket

import aioice
import pytest
from aioice import stun as astun

from rendezvous.server import RendezvousServer
from voip.nat import checks
from voip.transport import Timer
from voip.transport import UdpEndpoint
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.signal import IceCredentials
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import check_fingerprint
from voip.wire.stun import check_integrity
from voip.wire.stun import encode
from voip.wire.stun import looks_like_stun
from voip.wire.stun import parse_message_untrusted
from voip.wire.stun import text
from voip.wire.stun import u32

PWD = "a-password-of-22-chars"


def test_we_verify_what_aioice_signs() -> None:
    msg = astun.Message(
        astun.Method.BINDING,
        astun.Class.REQUEST,
        attributes={
            "USERNAME": "abcd:efgh",
            "PRIORITY": 12345,
            "ICE-CONTROLLING": 0x1122334455667788,
        },
    )
    msg.add_message_integrity(PWD.encode())
    msg.add_fingerprint()
    ours = parse_message_untrusted(bytes(msg))
    assert ours.text(Attr.USERNAME) == "abcd:efgh"
    assert ours.u32(Attr.PRIORITY) == 12345
    assert ours.u64(Attr.ICE_CONTROLLING) == 0x1122334455667788
    assert check_integrity(ours, PWD.encode())
    assert check_fingerprint(ours)


def test_aioice_reads_and_verifies_what_we_sign() -> None:
    msg = Message(
        Method.BINDING,
        Class.REQUEST,
        attributes=((Attr.USERNAME, text("efgh:abcd")), (Attr.PRIORITY, u32(777))),
    )
    data = encode(msg, integrity_key=PWD.encode(), fingerprint=True)
    theirs = astun.parse_message(data)  # it checks FINGERPRINT while parsing
    assert theirs.attributes["USERNAME"] == "efgh:abcd"
    assert theirs.attributes["PRIORITY"] == 777
    assert theirs.check_message_integrity(PWD.encode())
    assert not theirs.check_message_integrity(b"not the password")


def test_aioice_learns_its_address_from_our_rendezvous() -> None:
    async def scenario() -> tuple[tuple[str, int], tuple[str, int]]:
        async with RendezvousServer() as server:
            await server.start("127.0.0.1", 0)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                s.setblocking(False)
                req = astun.Message(astun.Method.BINDING, astun.Class.REQUEST)
                loop = asyncio.get_running_loop()
                await loop.sock_sendto(s, bytes(req), server.address)
                data = await asyncio.wait_for(loop.sock_recv(s, 1500), 2)
                resp = astun.parse_message(data)
                assert resp.transaction_id == req.transaction_id
                return resp.attributes["XOR-MAPPED-ADDRESS"], s.getsockname()

    mapped, local = asyncio.run(scenario())
    assert tuple(mapped) == local


class ChecksShell:
    """Our connectivity checks on a real socket: the same few lines the Call uses."""

    def __init__(self) -> None:
        self.agent: checks.ConnectivityChecks | None = None
        self.endpoint: UdpEndpoint | None = None
        self.timer: Timer | None = None
        self.selected = asyncio.Event()
        self.data: list[bytes] = []

    async def bind(self) -> tuple[str, int]:
        self.endpoint = UdpEndpoint.open("0.0.0.0", 0, self._on_datagram)
        return self.endpoint.local_address

    def start(self, agent: checks.ConnectivityChecks) -> None:
        assert self.endpoint is not None
        self.agent = agent
        self.timer = Timer(self.endpoint.loop, agent.next_deadline, self._on_timer)
        self._on_timer(self.endpoint.loop.time())
        self.timer.rearm()

    def _on_timer(self, now: float) -> None:
        assert self.endpoint is not None and self.agent is not None
        self.endpoint.send_all([(d, dest) for d, dest, _ in self.agent.poll(now)])
        self._events()

    def _on_datagram(self, data: bytes, src: tuple[str, int], now: float) -> None:
        assert self.endpoint is not None
        if self.agent is None:
            return
        if not looks_like_stun(data):
            self.data.append(data)
            return
        out = self.agent.handle(parse_message_untrusted(data), src, now)
        self.endpoint.send_all([(d, dest) for d, dest, _ in out or []])
        self._events()
        if self.timer is not None:
            self.timer.rearm()

    def _events(self) -> None:
        assert self.agent is not None
        if any(isinstance(e, checks.PathSelected) for e in self.agent.pop_events()):
            self.selected.set()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.endpoint is not None:
            self.endpoint.close()


@pytest.mark.parametrize("we_control", [False, True])
def test_our_checks_connect_with_an_aioice_agent(we_control: bool) -> None:
    async def scenario() -> None:
        peer = aioice.Connection(ice_controlling=not we_control, use_ipv6=False)
        await peer.gather_candidates()
        hosts = [c for c in peer.local_candidates if c.type == "host"]
        if not hosts:
            pytest.skip("no non-loopback IPv4 interface for aioice to gather a host candidate on")
        shell = ChecksShell()
        port = (await shell.bind())[1]
        ours = Candidate.make(CandidateType.HOST, (hosts[0].host, port))
        # Each side makes its own credentials (RFC 8445 §5.3), as callpeer does now: ours as
        # a callpeer client makes them, aioice's its own, and each learns the other's.
        creds = IceCredentials.generate()
        shell.start(
            checks.ConnectivityChecks(
                local_ufrag=creds.ufrag,
                local_pwd=creds.pwd,
                remote_ufrag=peer.local_username,
                remote_pwd=peer.local_password,
                controlling=we_control,
                remote_candidates=tuple(
                    Candidate(CandidateType.HOST, (c.host, c.port), c.priority) for c in hosts
                ),
                now=asyncio.get_running_loop().time(),
            )
        )
        peer.remote_username, peer.remote_password = creds.ufrag, creds.pwd
        await peer.add_remote_candidate(
            aioice.Candidate(
                foundation="1",
                component=1,
                transport="udp",
                priority=ours.priority,
                host=ours.address[0],
                port=port,
                type="host",
            )
        )
        await peer.add_remote_candidate(None)
        try:
            await asyncio.wait_for(asyncio.gather(peer.connect(), shell.selected.wait()), 10)
            await peer.send(b"\x99hello over the path both agents chose")
            for _ in range(50):
                if shell.data:
                    break
                await asyncio.sleep(0.02)
            assert shell.data == [b"\x99hello over the path both agents chose"]
            assert shell.agent is not None and shell.agent.selected is not None
            assert shell.agent.selected.remote.address[0] == hosts[0].host
        finally:
            shell.close()
            await peer.close()

    asyncio.run(scenario())
