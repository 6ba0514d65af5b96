"""Whole calls between two in-process clients on loopback, through a real rendezvous socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from typing import TypeVar

import pytest

from rendezvous.local import loopback_server
from rendezvous.server import RendezvousServer
from voip import Call
from voip import CallError
from voip import CallOptions
from voip import NullSink
from voip import SilenceSource
from voip import ToneSource
from voip import WavSink
from voip import events as ev
from voip.codecs.pcm import dominant_frequency
from voip.media.audio_io import read_wav
from voip.wire.rtp import RtpPacket
from voip.wire.stun import Address

LOOPBACK = CallOptions(bind_host="127.0.0.1")


def silent_call(
    me: str, peer: str, server: RendezvousServer | Address, options: CallOptions = LOOPBACK
) -> Call:
    where = server.address if isinstance(server, RendezvousServer) else server
    return Call(me, peer, source=SilenceSource(), sink=NullSink(), server=where, options=options)


def silent_pair(server: RendezvousServer, options: CallOptions = LOOPBACK) -> tuple[Call, Call]:
    """Alice calling bob and bob calling alice, both silent."""
    return (
        silent_call("alice", "bob", server, options),
        silent_call("bob", "alice", server, options),
    )


def whole_silent_call(
    server: Callable[[], RendezvousServer],
    seconds: float,
    options: CallOptions = LOOPBACK,
    timeout: float | None = None,
) -> tuple[Call, Call]:
    """Alice and bob, silent, in a call of `seconds` through the rendezvous `server` makes on
    loopback, ended."""

    async def scenario() -> tuple[Call, Call]:
        async with server() as rendezvous:
            await rendezvous.start("127.0.0.1", 0)
            alice, bob = silent_pair(rendezvous, options)
            async with alice, bob:
                await asyncio.wait_for(
                    asyncio.gather(alice.run(seconds), bob.run(seconds)), timeout
                )
        return alice, bob

    return asyncio.run(scenario())


def tone_call(
    me: str,
    peer: str,
    hz: float,
    wav: Path,
    server: RendezvousServer,
    on_event: Callable[[ev.CallEvent], None] | None = None,
) -> Call:
    """A loopback call sending a tone at `hz` and writing what it hears to `wav`."""
    return Call(
        me,
        peer,
        source=ToneSource(hz),
        sink=WavSink(wav),
        server=server.address,
        options=LOOPBACK,
        on_event=on_event,
    )


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_direct_call_carries_each_tone_and_measures_the_path(tmp_path: Path) -> None:
    async def scenario() -> tuple[Call, Call, list[ev.CallEvent]]:
        seen: list[ev.CallEvent] = []
        async with RendezvousServer() as server:
            await server.start("127.0.0.1", 0)
            alice = tone_call("alice", "bob", 440, tmp_path / "a.wav", server, seen.append)
            bob = tone_call("bob", "alice", 660, tmp_path / "b.wav", server)
            async with alice, bob:
                await asyncio.gather(alice.run(2.5), bob.run(2.5))
        return alice, bob, seen

    alice, bob, seen = run(scenario())
    kinds = [type(e) for e in seen]
    for kind in (ev.Registered, ev.Waiting, ev.Punching, ev.Connected, ev.LiveStats, ev.Ended):
        assert kind in kinds
    assert kinds.index(ev.Registered) < kinds.index(ev.Punching) < kinds.index(ev.Connected)
    for me in (alice, bob):
        report = me.report().to_dict()
        assert report["path"] == "direct"
        direct = report["paths"]["direct"]
        assert direct["available"] and direct["remote"].startswith("127.0.0.1:")
        assert direct["rtt_ms"]["samples"] >= 2 and 0 < direct["rtt_ms"]["median"] < 50
        assert direct["loss_pct"] == 0.0 and 1 <= direct["mos"] <= 4.5
        assert report["paths"]["relay"]["available"] is False
        assert report["setup_ms"] is not None and report["setup_ms"] < 1000
        audio = report["audio"]
        assert audio["frames_sent"] >= 100 and audio["frames_received"] >= 100
        assert audio["frames_concealed"] <= 2
    for wav, heard_hz in (("a.wav", 660), ("b.wav", 440)):
        pcm, _ = read_wav(tmp_path / wav)
        assert len(pcm) >= 48000 * 2
        assert dominant_frequency(pcm) == pytest.approx(heard_hz, abs=3)


def test_hangup_on_one_side_ends_the_other() -> None:
    async def scenario() -> Call:
        async with RendezvousServer() as server:
            await server.start("127.0.0.1", 0)
            alice, bob = silent_pair(server)
            async with alice, bob:
                await asyncio.wait_for(asyncio.gather(alice.run(0.5), bob.run(None)), 5)
        return bob

    bob = run(scenario())
    assert bob.report().ended == "alice hung up"


def test_peer_that_never_calls_back_is_a_clear_error() -> None:
    async def scenario() -> None:
        async with RendezvousServer() as server:
            await server.start("127.0.0.1", 0)
            opts = CallOptions(bind_host="127.0.0.1", wait_timeout=0.5)
            async with silent_call("alice", "nobody", server, opts) as call:
                await call.connected()

    with pytest.raises(CallError, match="nobody did not call back"):
        run(scenario())


def test_name_in_use_is_refused_with_the_reason() -> None:
    async def scenario() -> None:
        async with RendezvousServer() as server:
            await server.start("127.0.0.1", 0)
            first = silent_call("alice", "bob", server)
            second = silent_call("alice", "carol", server)
            async with first:
                await asyncio.sleep(0.2)
                async with second:
                    await second.connected()

    with pytest.raises(CallError, match="409 Name Taken"):
        run(scenario())


def test_media_from_a_stranger_is_not_played() -> None:
    async def scenario() -> tuple[Call, Call]:
        async with RendezvousServer() as server:
            await server.start("127.0.0.1", 0)
            alice, bob = silent_pair(server)
            async with alice, bob:
                await alice.connected()
                assert alice._endpoint is not None
                target = alice._endpoint.local_address
                # Sent before bob's first packet can arrive: without the source filter alice
                # would lock onto this SSRC and play the stranger.
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
                    for seq in range(100):
                        stranger.sendto(
                            bytes(RtpPacket(111, seq, seq * 960, 99, b"\xf8\xff\xfe")), target
                        )
                await asyncio.gather(alice.run(1.0), bob.run(1.0))
        return alice, bob

    alice, bob = run(scenario())
    assert alice._core.audio.rx.ssrc == bob._core.audio.sender.ssrc  # type: ignore[union-attr]
    assert alice._core.audio.rx.received <= bob._core.audio.sender.packet_count  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", ["auto", "force", "off"])
def test_relay_modes_on_loopback(mode: str) -> None:
    """auto: audio direct, relay measured alongside; force: the reverse; off: no relay at all."""
    opts = CallOptions(bind_host="127.0.0.1", relay=mode)
    alice, bob = whole_silent_call(loopback_server, 2.5, opts)
    for call in (alice, bob):
        report = call.report().to_dict()
        direct, relay = report["paths"]["direct"], report["paths"]["relay"]
        assert report["path"] == ("relay" if mode == "force" else "direct")
        assert direct["available"] and direct["rtt_ms"]["samples"] >= 1
        if mode == "off":
            assert relay["available"] is False and relay["reason"] == "relay off (--relay off)"
            assert report["verdict"].startswith("direct only")
        else:
            assert relay["available"] and relay["rtt_ms"]["samples"] >= 1
            assert relay["loss_pct"] == 0.0
            assert "round trip" in report["verdict"]
        assert report["audio"]["frames_received"] >= 100


def test_rtt_plot_is_drawn_for_both_paths(tmp_path: Path) -> None:
    from voip.plot import plot_rtt

    alice, _ = whole_silent_call(loopback_server, 2.5)
    report = alice.report()
    assert report.direct.rtt_samples and report.relay.rtt_samples
    png = plot_rtt(report, tmp_path / "rtt.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
