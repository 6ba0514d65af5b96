"""The relay with --offload on loopback: once the full rules have relayed on a channel, its
ChannelData and its peer's answers go through the kernel (its counters move, the server's do
not), and when the allocation expires the kernel stops forwarding them."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path

import pytest

from rendezvous.offload import FILTER_PREF
from rendezvous.offload import SHIPPED
from rendezvous.offload import SHIPPED_FROM
from rendezvous.offload import SOURCE
from rendezvous.offload import unavailable_reason
from rendezvous.offload_routes import load_offload
from rendezvous.offload_routes import mirror_routes
from rendezvous.server import RendezvousServer
from rendezvous.turn_server import TurnPolicy
from tests.turn_shell import peer_on_channel
from tests.turn_shell import rest_shell
from tests.turn_shell import until

REASON = unavailable_reason()
BIN = Path(__file__).resolve().parent.parent / ".venv" / "bin"
FRAMES = 100  # sent at once: well inside a default receive buffer (208 KiB)


def test_the_shipped_program_is_built_from_its_source() -> None:
    """--offload needs no compiler: the object ships, built from the source as it is (after a
    change to channel_relay.c, `make bpf` rebuilds both files)."""
    assert hashlib.sha256(SOURCE.read_bytes()).hexdigest() == SHIPPED_FROM.read_text().strip()
    assert SHIPPED.read_bytes()[:4] == b"\x7fELF"


def test_the_server_says_whether_channels_skip_it() -> None:
    """With the kernel path it names the interfaces; without (not root), why not, and relays."""
    proc = subprocess.Popen(
        [
            str(BIN / "callpeer-rendezvous"),
            *("--offload", "--workers=1", "--listen=127.0.0.1:0"),
            *("--relay-address=127.0.0.1", "--store=:memory:"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        lines = [proc.stdout.readline() for _ in range(7 if REASON is None else 6)]
        assert "listening on udp" in lines[0]
        assert "live channels forwarded in batches (C: recvmmsg, sendmmsg)\n" in lines, lines
        if REASON is None:
            assert "kernel fast path (tc/eBPF) on lo" in lines[6], lines
        else:
            proc.terminate()
            err = proc.communicate(timeout=10)[1]
            assert f"--offload: {REASON}; relaying in user space" in err
    finally:
        proc.terminate()
        proc.wait(10)
    if REASON is None:  # stopped, it leaves no filter behind
        shown = subprocess.run(
            ["tc", "filter", "show", "dev", "lo", "ingress"],
            capture_output=True,
            text=True,
            check=True,
        )
        assert f"pref {FILTER_PREF}" not in shown.stdout


@pytest.mark.skipif(REASON is not None, reason=REASON or "")
def test_a_relayed_channel_goes_through_the_kernel_until_its_allocation_expires() -> None:
    async def scenario() -> None:
        secret = "offload"
        policy = TurnPolicy(secret=secret, allow_loopback_peers=True)
        server = RendezvousServer.with_relay("127.0.0.1", policy=policy)
        await server.start("127.0.0.1", 0)
        offload = load_offload("127.0.0.1", server.address[1])
        shell = rest_shell(server.address, secret)
        loop = asyncio.get_running_loop()
        try:
            assert "lo" in offload.interfaces
            mirror_routes(server, offload)
            await shell.start()
            await asyncio.wait_for(shell.allocated.wait(), 5)
            relayed = shell.client.relayed
            assert relayed is not None and server.turn is not None and server.node is not None
            async with peer_on_channel(shell) as (peer, peer_addr):
                got = []
                for burst in (range(1), range(1, FRAMES)):  # the first teaches the route
                    for i in burst:
                        shell.endpoint.send(*shell.client.wrap(b"to peer %d" % i, peer_addr))
                    got += [await asyncio.wait_for(loop.sock_recv(peer, 100), 3) for _ in burst]
                assert got == [b"to peer %d" % i for i in range(FRAMES)]
                for i in range(FRAMES):
                    peer.sendto(b"to client %d" % i, relayed)
                await until(lambda: len(shell.received) == FRAMES)
                assert [d for d, _ in shell.received] == [
                    b"to client %d" % i for i in range(FRAMES)
                ]
                kernel = offload.counters()
                # The first frame taught the route; the server relayed it, the kernel the rest.
                assert server.stats["relayed_to_peer"] == 1
                assert kernel["to_peer_packets"] == FRAMES - 1
                assert server.stats["relayed_to_client"] == 0
                assert kernel["to_client_packets"] == FRAMES
                assert server.stats["offload_added"] == 1
                # The allocation's lifetime runs out: its route, and the kernel's entry, go.
                server.node.poll(loop.time() + 3600)
                assert server.stats["expired"] >= 1 and server.stats["offload_removed"] == 1
                shell.endpoint.send(*shell.client.wrap(b"too late", peer_addr))
                peer.sendto(b"too late", relayed)
                await asyncio.sleep(0.2)
                with pytest.raises(BlockingIOError):
                    peer.recv(100)
                assert len(shell.received) == FRAMES
                assert offload.counters()["to_peer_packets"] == FRAMES - 1
                assert offload.counters()["to_client_packets"] == FRAMES
        finally:
            shell.endpoint.close()
            shell.timer.cancel()
            offload.close()
            server.close()

    asyncio.run(scenario())
