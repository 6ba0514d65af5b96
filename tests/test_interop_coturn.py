"""Interop with coturn, the TURN server most of the world runs: both directions, on loopback.

Our TURN client allocates on a real coturn (use-auth-secret, the REST credentials our
rendezvous hands out) and a whole call goes through it; coturn's own test client,
turnutils_uclient, allocates on our relay and gets its data echoed back through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rendezvous.local import probe_stun
from rendezvous.server import RendezvousServer
from rendezvous.tls import self_signed
from rendezvous.turn_server import TurnPolicy
from tests.test_dual_stack import ipv6_loopback
from tests.turn_shell import TurnShell
from tests.turn_shell import until
from voip import Call
from voip import CallOptions
from voip import ToneSource
from voip import WavSink
from voip.codecs.pcm import dominant_frequency
from voip.media.audio_io import read_wav
from voip.nat.server_transports import Transport
from voip.nat.signal_events import TurnOffer
from voip.nat.turn_client import TurnClient
from voip.wire.transactions import Schedule
from voip.wire.turn import looks_like_channel_data
from voip.wire.turn import rest_password
from voip.wire.turn import rest_username

SECRET = "interop-secret"
pytestmark = pytest.mark.skipif(
    shutil.which("turnserver") is None or shutil.which("turnutils_uclient") is None,
    reason="coturn is not installed (apt-get install coturn)",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_coturn(
    tmp_path: Path,
    *,
    udp: bool = True,
    tls: bool = False,
    relay_ipv6: bool = False,
    secret: str = SECRET,
    relay_ports: tuple[int, int] = (49200, 49300),
    tag: str = "coturn",
) -> Iterator[tuple[str, int, int]]:
    """coturn on loopback: (host, port, TLS port); without `udp` it listens on TCP (and TLS)
    alone, as a server behind a network that drops UDP looks to its clients; with
    `relay_ipv6` it relays on ::1 too (dual allocations). `tag` names its files in tmp_path
    (several may run at once, each with its own `relay_ports`)."""
    port, tls_port = free_port(), free_port()
    cert, key = tmp_path / "coturn-cert.pem", tmp_path / "coturn-key.pem"
    if tls:
        self_signed(cert, key, ["127.0.0.1"])
    proc = subprocess.Popen(
        [
            "turnserver",
            "-n",
            "--listening-ip=127.0.0.1",
            f"--listening-port={port}",
            f"--tls-listening-port={tls_port}",
            "--relay-ip=127.0.0.1",
            *(["--relay-ip=::1"] if relay_ipv6 else []),
            "--use-auth-secret",
            f"--static-auth-secret={secret}",
            "--realm=coturn.test",
            "--allow-loopback-peers",
            *([f"--cert={cert}", f"--pkey={key}"] if tls else ["--no-tls"]),
            *([] if udp else ["--no-udp"]),
            "--no-dtls",
            "--no-cli",
            f"--min-port={relay_ports[0]}",
            f"--max-port={relay_ports[1]}",
            f"--pidfile={tmp_path / f'{tag}.pid'}",
            f"--log-file={tmp_path / f'{tag}.log'}",
            "--simple-log",
            "--no-stdout-log",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        once = Schedule(rto=0.2, rc=1, rm=1)  # one try: the loop around it is the retry
        while not (
            asyncio.run(probe_stun(("127.0.0.1", port), once)) is not None
            if udp
            else tcp_listening(port)
        ):
            assert proc.poll() is None, "coturn exited"
            assert time.monotonic() < deadline, "coturn did not start listening"
        yield "127.0.0.1", port, tls_port
    finally:
        proc.terminate()
        proc.wait(5)


def tcp_listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        time.sleep(0.05)
        return False
    return True


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[tuple[str, int]]:
    with running_coturn(tmp_path) as (host, port, _):
        yield host, port


def rest(name: str) -> tuple[str, str]:
    user = rest_username(int(time.time()) + 600, name)
    return user, rest_password(SECRET, user)


def test_our_client_allocates_on_coturn_and_data_flows(coturn: tuple[str, int]) -> None:
    async def scenario() -> None:
        shell = TurnShell(TurnClient(coturn, *rest("alice")))
        await shell.start()
        await asyncio.wait_for(shell.allocated.wait(), 5)
        relayed = shell.client.relayed
        assert relayed is not None and relayed[0] == "127.0.0.1"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            peer.settimeout(3)
            peer_addr = peer.getsockname()
            loop = asyncio.get_running_loop()
            shell.endpoint.send_all(shell.client.permit(["127.0.0.1"], loop.time()))
            await asyncio.sleep(0.3)
            peer.sendto(b"from the peer", relayed)  # arrives as a Data indication
            await until(lambda: shell.received)
            assert shell.received[0] == (b"from the peer", peer_addr)
            shell.endpoint.send(*shell.client.wrap(b"to the peer", peer_addr))
            assert peer.recvfrom(100) == (b"to the peer", relayed)
            shell.endpoint.send_all(shell.client.bind_channel(peer_addr, loop.time()))
            await until(lambda: peer_addr in shell.client.channels)
            data, _ = shell.client.wrap(b"by channel", peer_addr)
            assert looks_like_channel_data(data)
            shell.endpoint.send(data, coturn)
            assert peer.recvfrom(100) == (b"by channel", relayed)
            peer.sendto(b"channel back", relayed)
            await until(lambda: len(shell.received) == 2)
            assert shell.received[1] == (b"channel back", peer_addr)
        shell.endpoint.send_all(shell.client.close(loop.time()))
        shell.timer.cancel()
        shell.endpoint.close()

    asyncio.run(scenario())


@pytest.mark.skipif(not ipv6_loopback(), reason="this host has no IPv6 (::1 cannot be bound)")
def test_our_client_gets_a_dual_allocation_from_coturn(tmp_path: Path) -> None:
    """coturn relaying on 127.0.0.1 and ::1 makes a dual allocation (it reads
    ADDITIONAL-ADDRESS-FAMILY at the draft codepoint we send beside RFC 8656's): both relayed
    addresses, and a peer on ::1 reached through the IPv6 one."""

    async def scenario(coturn: tuple[str, int]) -> None:
        shell = TurnShell(TurnClient(coturn, *rest("alice"), ipv6=True))
        await shell.start()
        await asyncio.wait_for(shell.allocated.wait(), 5)
        relayed, relayed6 = shell.client.relayed, shell.client.relayed6
        assert relayed is not None and relayed[0] == "127.0.0.1"
        assert relayed6 is not None and relayed6[0] == "::1", shell.client.ipv6_refused
        assert shell.client.families == {4, 6}
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as peer:
            peer.bind(("::1", 0))
            peer.settimeout(3)
            peer_addr = (str(peer.getsockname()[0]), int(peer.getsockname()[1]))
            loop = asyncio.get_running_loop()
            shell.endpoint.send_all(shell.client.permit(["::1"], loop.time()))
            await asyncio.sleep(0.3)
            peer.sendto(b"from the peer", relayed6)
            await until(lambda: shell.received)
            assert shell.received[0] == (b"from the peer", peer_addr)
            shell.endpoint.send(*shell.client.wrap(b"to the peer", peer_addr))
            data, src = peer.recvfrom(100)
            assert (data, src[:2]) == (b"to the peer", relayed6)
        shell.endpoint.send_all(shell.client.close(loop.time()))
        shell.timer.cancel()
        shell.endpoint.close()

    with running_coturn(tmp_path, relay_ipv6=True) as (host, port, _):
        asyncio.run(scenario((host, port)))


@pytest.mark.parametrize(
    "how",
    ["udp", "tcp", "tls", "no answer over udp"],
)
def test_a_call_goes_through_coturn(how: str, tmp_path: Path) -> None:
    """Over each transport to the relay (RFC 8656 §3.1): UDP; TCP and TLS when asked for
    (turn:...?transport=tcp, turns:...); and TCP found by itself when UDP gets no answer."""
    udp, tls = how != "no answer over udp", how == "tls"
    forced = {"tcp": Transport.TCP, "tls": Transport.TLS}.get(how)

    async def scenario(relay: tuple[str, int, int]) -> tuple[Call, Call]:
        host, port, tls_port = relay
        async with RendezvousServer() as server:  # offers no relay: coturn comes from --turn
            await server.start("127.0.0.1", 0)
            calls = []
            for me, peer, hz in (("alice", "bob", 440), ("bob", "alice", 660)):
                at = (host, tls_port if tls else port)
                opts = CallOptions(
                    bind_host="127.0.0.1",
                    relay="force",
                    turn=TurnOffer(at, *rest(me), forced),
                    tls_ca=str(tmp_path / "coturn-cert.pem") if tls else None,
                )
                calls.append(
                    Call(
                        me,
                        peer,
                        source=ToneSource(hz),
                        sink=WavSink(tmp_path / f"{me}.wav"),
                        server=server.address,
                        options=opts,
                    )
                )
            alice, bob = calls
            async with alice, bob:
                await asyncio.gather(alice.run(2.5), bob.run(2.5))
        return alice, bob

    with running_coturn(tmp_path, udp=udp, tls=tls) as relay:
        alice, bob = asyncio.run(scenario(relay))
    for call, heard in ((alice, 660), (bob, 440)):
        report = call.report().to_dict()
        assert report["path"] == "relay", report
        relay_path = report["paths"]["relay"]
        assert relay_path["available"] and relay_path["rtt_ms"]["samples"] >= 1
        assert relay_path["remote"].startswith("127.0.0.1:")
        assert relay_path["transport"] == {"no answer over udp": "tcp"}.get(how, how)
        pcm, _ = read_wav(tmp_path / f"{call.name}.wav")
        assert dominant_frequency(pcm) == pytest.approx(heard, abs=3)
        assert report["audio"]["frames_received"] >= 100


def test_turnutils_uclient_relays_through_our_relay() -> None:
    async def scenario() -> str:
        policy = TurnPolicy(secret=SECRET, allow_loopback_peers=True)
        server = RendezvousServer.with_relay("127.0.0.1", policy=policy)
        await server.start("127.0.0.1", 0)
        peer_port = free_port()
        echo = await asyncio.create_subprocess_exec(
            "turnutils_peer",
            "-p",
            str(peer_port),
            "-L",
            "127.0.0.1",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await asyncio.sleep(0.3)
            client = await asyncio.create_subprocess_exec(
                "turnutils_uclient",
                "-n",
                "20",
                "-c",
                "-W",
                SECRET,
                "-u",
                "uclient",
                "-e",
                "127.0.0.1",
                "-r",
                str(peer_port),
                "-p",
                str(server.address[1]),
                "-X",
                "127.0.0.1",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(client.communicate(), 30)
            assert server.turn is not None
            assert server.turn.stats["allocate"] >= 1 and server.turn.stats["channel_bind"] >= 1
            return out.decode(errors="replace")
        finally:
            echo.terminate()
            await echo.wait()
            server.close()

    output = asyncio.run(scenario())
    assert re.search(r"tot_send_msgs=20, tot_recv_msgs=20", output), output[-2000:]
    assert "Total lost packets 0 (0.000000%)" in output
