"""Whole calls on loopback with one caller reaching our rendezvous and relay over TCP or TLS."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from rendezvous.local import loopback_server
from rendezvous.tls import self_signed
from rendezvous.tls import server_context
from voip import Call
from voip import CallOptions
from voip import ToneSource
from voip import WavSink
from voip import events as ev
from voip.codecs.pcm import dominant_frequency
from voip.media.audio_io import read_wav
from voip.nat.server_transports import Transport
from voip.nat.signal_events import TurnOffer
from voip.wire.turn import rest_credentials


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tone(hz: float, wav: Path) -> dict[str, Any]:
    """A caller's audio: a tone out, what it hears into `wav`."""
    return {"source": ToneSource(hz), "sink": WavSink(wav)}


@pytest.mark.parametrize("transport", [Transport.TCP, Transport.TLS])
def test_a_caller_on_a_stream_calls_one_on_udp_through_the_relay(
    transport: Transport, tmp_path: Path
) -> None:
    """Alice reaches the rendezvous, and the relay it is, over one TCP or TLS connection (as
    `--server-transport tcp`, or `tls` with `--turn turns:`); bob over UDP. Audio goes
    through the relay (alice has no UDP path to offer but the relay's), both ways."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    self_signed(cert, key, ["127.0.0.1"])
    tls_port = free_tcp_port()
    lines: list[ev.CallEvent] = []

    async def scenario() -> tuple[Call, Call]:
        server = loopback_server()
        await server.start("127.0.0.1", 0, tls=server_context(cert, key), tls_port=tls_port)
        try:
            udp = server.address
            at = udp if transport == Transport.TCP else ("127.0.0.1", tls_port)
            assert server.turn is not None and server.turn.policy.secret is not None
            turn = TurnOffer(
                at, *rest_credentials(server.turn.policy.secret, "alice", time.time()), transport
            )
            alice = Call(
                "alice",
                "bob",
                **tone(440, tmp_path / "alice.wav"),
                server=at,
                options=CallOptions(
                    bind_host="127.0.0.1",
                    relay="force",
                    server_transport=transport,
                    tls_ca=str(cert),
                    turn=turn if transport == Transport.TLS else None,
                ),
                on_event=lines.append,
            )
            bob_options = CallOptions(bind_host="127.0.0.1", relay="force")
            bob = Call(
                "bob", "alice", **tone(660, tmp_path / "bob.wav"), server=udp, options=bob_options
            )
            async with alice, bob:
                await asyncio.wait_for(asyncio.gather(alice.run(2.5), bob.run(2.5)), 20)
        finally:
            server.close()
        return alice, bob

    alice, bob = asyncio.run(scenario())
    reports = {call.name: call.report().to_dict() for call in (alice, bob)}
    assert reports["alice"]["paths"]["relay"]["transport"] == transport.value
    assert reports["bob"]["paths"]["relay"]["transport"] == "udp"
    # Where the rendezvous sees alice is a TCP mapping: no server-reflexive candidate for bob.
    assert [c.split()[0] for c in reports["bob"]["candidates_tried"]] == ["relay"]
    assert "srflx" in {c.split()[0] for c in reports["alice"]["candidates_tried"]}
    for name, heard in (("alice", 660), ("bob", 440)):
        report = reports[name]
        assert report["path"] == "relay", report
        assert report["paths"]["relay"]["rtt_ms"]["samples"] >= 1
        pcm, _ = read_wav(tmp_path / f"{name}.wav")
        assert dominant_frequency(pcm) == pytest.approx(heard, abs=3)
        assert report["audio"]["frames_received"] >= 100
    [reached] = [e for e in lines if isinstance(e, ev.ServerTransport)]
    # A relay given (`--turn turns:`) is known from the start; one the rendezvous offers, only
    # once it has answered over the stream.
    role = "rendezvous and relay" if transport == Transport.TLS else "rendezvous"
    assert reached.transport == transport.value and reached.role == role
    assert reached.why == ""  # asked for, not fallen back to
