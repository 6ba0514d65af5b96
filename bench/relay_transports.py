"""Benchmark: what reaching the relay over TCP or TLS costs against UDP, on loopback.

    .venv/bin/python bench/relay_transports.py [--calls 10] [--duration 5]

Each call: alice reaches our rendezvous and relay (one server) over UDP, TCP or TLS (as
`--server-transport`, with `--turn turns:` for TLS), bob over UDP, audio forced through the
relay. Prints, per transport, the setup (introduction to audio), the time from start to audio
flowing, the relayed path's RTT as the calls measured it (RTCP and STUN), frames lost, and the
CPU seconds per call-minute of the process holding both callers and the server.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from rendezvous.local import loopback_server
from rendezvous.server import RendezvousServer
from rendezvous.tls import self_signed
from rendezvous.tls import server_context
from voip import CallOptions
from voip.lab.tone_calls import timed_call
from voip.lab.tone_calls import tone_caller
from voip.nat.server_transports import Transport
from voip.nat.signal_events import TurnOffer
from voip.report import percentile
from voip.security.identity import Identity
from voip.wire.turn import rest_credentials

IDENTITIES = {name: Identity.generate() for name in ("alice", "bob")}


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def one_call(
    server: RendezvousServer, transport: Transport, tls_port: int, cert: Path, duration: float
) -> tuple[dict[str, Any], float]:
    at = ("127.0.0.1", tls_port) if transport == Transport.TLS else server.address
    secret = server.turn.policy.secret if server.turn is not None else None
    assert secret is not None
    turn = TurnOffer(at, *rest_credentials(secret, "alice", time.time()), transport)
    alice_options = CallOptions(
        bind_host="127.0.0.1",
        relay="force",
        identity=IDENTITIES["alice"],
        server_transport=transport,
        tls_ca=str(cert),
        turn=turn if transport == Transport.TLS else None,
    )
    bob_options = CallOptions(bind_host="127.0.0.1", relay="force", identity=IDENTITIES["bob"])
    alice = tone_caller("alice", "bob", at, alice_options)
    bob = tone_caller("bob", "alice", server.address, bob_options)
    return await timed_call(alice, bob, duration)


async def measure(transport: Transport, calls: int, duration: float, workdir: Path) -> str:
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    if not cert.exists():
        self_signed(cert, key, ["127.0.0.1"])
    tls_port = free_tcp_port()
    server = loopback_server()
    await server.start("127.0.0.1", 0, tls=server_context(cert, key), tls_port=tls_port)
    setups, starts, rtts, lost = [], [], [], []
    cpu0 = time.process_time()
    try:
        for _ in range(calls):
            report, to_audio = await one_call(server, transport, tls_port, cert, duration)
            relay = report["paths"]["relay"]
            assert report["path"] == "relay" and relay["transport"] == transport.value, report
            setups.append(report["setup_ms"])
            starts.append(to_audio)
            rtts.append(relay["rtt_ms"]["median"])
            lost.append(report["audio"]["frames_concealed"])
    finally:
        server.close()
    cpu = time.process_time() - cpu0
    per_minute = cpu / (calls * duration / 60)
    return (
        f"{transport.upper():<4} setup median {statistics.median(setups):6.1f} ms"
        f"  p95 {percentile(setups, 95):6.1f}"
        f" | start->audio {statistics.median(starts):6.1f} ms"
        f" | relay RTT median {statistics.median(rtts):5.2f} ms"
        f" (worst call {max(rtts):5.2f})"
        f" | frames concealed {sum(lost)}"
        f" | CPU {per_minute:5.2f} s per call-minute (both callers and the relay)"
    )


async def main(calls: int, duration: float) -> None:
    print(f"{calls} relayed calls per transport on loopback, {duration:g} s of audio each")
    with tempfile.TemporaryDirectory() as tmp:
        for transport in (Transport.UDP, Transport.TCP, Transport.TLS):
            print(await measure(transport, calls, duration, Path(tmp)), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--duration", type=float, default=5.0)
    args = p.parse_args()
    asyncio.run(main(args.calls, args.duration))
