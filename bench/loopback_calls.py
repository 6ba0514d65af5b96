"""Benchmark: setup time and CPU cost of direct calls between two callers on loopback.

    .venv/bin/python bench/loopback_calls.py [--calls 20] [--duration 2] [--apart]

Prints setup time (introduction to keys agreed, of which the handshake, and from start to audio
flowing), the RTT the calls measured, and CPU seconds per call-minute for the process running
both callers, with what Opus alone and SRTP alone cost for the same audio (measured here too).
With --apart, also one more call with each caller in a process of its own, as callers are used:
two callers on one event loop share some of their wake-ups, so the first figure is the lower.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from collections.abc import Callable
from typing import Any

from rendezvous.server import RendezvousServer
from voip import Call
from voip import CallOptions
from voip import ToneSource
from voip.codecs.opus import OpusDecoder
from voip.codecs.opus import OpusEncoder
from voip.lab.tone_calls import timed_call
from voip.lab.tone_calls import tone_caller
from voip.report import percentile
from voip.security.handshake import MediaHandshake
from voip.security.identity import Identity
from voip.security.srtp import MediaCipher
from voip.wire.rtp import RtpPacket

IDENTITIES = {name: Identity.generate() for name in ("alice", "bob")}


def options(me: str) -> CallOptions:
    # Each side the same key on every call (it owns the name at the rendezvous), and nothing
    # remembered of the other's: every call is a first call, with the SAS and a pin written.
    return CallOptions(bind_host="127.0.0.1", identity=IDENTITIES[me])


async def one_call(server: RendezvousServer, duration: float) -> tuple[dict[str, Any], float]:
    alice = tone_caller("alice", "bob", server.address, options("alice"))
    bob = tone_caller("bob", "alice", server.address, options("bob"))
    return await timed_call(alice, bob, duration)


async def steady_cpu(call: Call, duration: float) -> float:
    """CPU seconds per call-minute of this process over `duration` s of a connected call."""
    await call.connected()
    await asyncio.sleep(1.0)  # past the start (learning the playout phase, the first reports)
    cpu0 = time.process_time()
    await asyncio.sleep(duration)
    return (time.process_time() - cpu0) / (duration / 60)


async def callee(port: int, duration: float) -> None:
    """bob, alone in this process, for --apart: prints his steady CPU per call-minute."""
    bob = tone_caller("bob", "alice", ("127.0.0.1", port), options("bob"))
    async with bob:
        print(await steady_cpu(bob, duration), flush=True)
        await asyncio.sleep(2.0)  # alice hangs up


async def apart(duration: float) -> tuple[float, float]:
    """alice here and bob in a process of his own: each one's steady CPU per call-minute."""
    async with RendezvousServer() as server:
        await server.start("127.0.0.1", 0)
        port = str(server.address[1])
        child = [sys.executable, __file__, "--callee", port, "--duration", str(duration)]
        with subprocess.Popen(child, stdout=subprocess.PIPE, text=True) as bob:
            alice = tone_caller("alice", "bob", server.address, options("alice"))
            async with alice:
                own = await steady_cpu(alice, duration)
                out, _ = await asyncio.to_thread(bob.communicate)
    return own, float(out.split()[0])


async def main(calls: int, duration: float, with_apart: bool) -> None:
    setups, starts, rtts, frames, handshakes = [], [], [], [], []
    in_call = [0.0]  # CPU s libopus took inside the calls, frame by frame
    sealing = [0.0]  # and libsrtp
    cpu0 = time.process_time()
    async with RendezvousServer() as server, timed_codec(in_call, sealing):
        await server.start("127.0.0.1", 0)
        for _ in range(calls):
            report, to_audio = await one_call(server, duration)
            setups.append(report["setup_ms"])
            handshakes.append(report["security"]["handshake_ms"])
            starts.append(to_audio)
            rtts.append(report["paths"]["direct"]["rtt_ms"]["median"])
            frames.append(report["audio"]["frames_received"])
    cpu = time.process_time() - cpu0
    call_minutes = calls * duration / 60

    def line(name: str, xs: list[float], unit: str) -> str:
        return (
            f"{name:<34} median {statistics.median(xs):7.2f} {unit}   p95 "
            f"{percentile(xs, 95):7.2f} {unit}   max {max(xs):7.2f} {unit}"
        )

    print(f"{calls} direct calls on loopback, {duration:g} s of audio each way per call")
    print(line("setup (introduced -> keys agreed)", setups, "ms"))
    print(line("  of which the handshake", handshakes, "ms"))
    print(line("start -> audio flowing", starts, "ms"))
    print(line("RTT measured (RTCP/STUN)", rtts, "ms"))
    print(f"{'frames played per call':<34} min {min(frames)} of {int(duration * 50)}")
    # Two callers run in this process, so one caller costs half of it.
    print(f"{'CPU per caller per call-minute':<34} {cpu / call_minutes / 2:.2f} s")
    print(f"{'  of which Opus (encode + decode)':<34} {in_call[0] / call_minutes / 2:.2f} s")
    print(f"{'  of which SRTP (protect + unprotect)':<34} {sealing[0] / call_minutes / 2:.2f} s")
    srtp_us = srtp_cpu_per_frame_us()
    print(f"{'  Opus alone, in a tight loop':<34} {codec_cpu_per_minute():.2f} s")
    print(f"{'SRTP per 20 ms frame, each way':<34} {srtp_us / 2:.1f} us in a tight loop")
    print(f"{'handshake CPU per call (both sides)':<34} {handshake_cpu_ms():.2f} ms")
    floor = await bare_loop_cpu_per_minute(min(10.0, max(2.0, calls * duration)))
    print(f"{'floor: bare loop, same wake-ups':<34} {floor:.2f} s per caller per call-minute")
    if with_apart:
        own, other = await apart(duration)
        print(f"{'one caller per process':<34} {own:.2f} s (alice), {other:.2f} s (bob)")


async def bare_loop_cpu_per_minute(seconds: float) -> float:
    """CPU seconds per caller-minute of two loopback sides that each send a 108-byte datagram
    on a 20 ms tick, read it when it arrives and take it off a queue on a second 20 ms tick:
    the wake-ups and socket calls a call cannot avoid, and nothing else."""
    loop = asyncio.get_running_loop()
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
    inbox: list[list[bytes]] = [[], []]
    handles: list[asyncio.TimerHandle] = []
    payload = bytes(108)

    def readable(i: int) -> None:
        try:
            while True:
                inbox[i].append(socks[i].recv(2048))
        except BlockingIOError:
            return

    def tick(i: int, when: float, sending: bool) -> None:
        if sending:
            socks[i].sendto(payload, socks[1 - i].getsockname())
        elif inbox[i]:
            inbox[i].pop(0)
        handles.append(loop.call_at(when + 0.02, tick, i, when + 0.02, sending))

    t0 = loop.time() + 0.01
    for i in (0, 1):
        loop.add_reader(socks[i].fileno(), readable, i)
        tick(i, t0 + 0.005 * i, True)
        tick(i, t0 + 0.007 + 0.005 * i, False)
    await asyncio.sleep(0.5)
    cpu0 = time.process_time()
    await asyncio.sleep(seconds)
    cpu = time.process_time() - cpu0
    for i in (0, 1):
        loop.remove_reader(socks[i].fileno())
        socks[i].close()
    for handle in handles:
        handle.cancel()
    return cpu / (seconds / 60) / 2


def handshake_cpu_ms(rounds: int = 50) -> float:
    """CPU milliseconds for one whole Noise XX handshake and key derivation, both sides."""
    t0 = time.process_time()
    for _ in range(rounds):
        alice = MediaHandshake(True, Identity.generate().private, b"bench", lambda _: None)
        bob = MediaHandshake(False, Identity.generate().private, b"bench", lambda _: None)
        to_bob = alice.start(0.0)
        while to_bob:
            to_alice = [r for d in to_bob for r in bob.handle_untrusted(d, 0.0)]
            to_bob = [r for d in to_alice for r in alice.handle_untrusted(d, 0.0)]
        assert alice.result is not None and bob.result is not None
    return (time.process_time() - t0) / rounds * 1000


def srtp_cpu_per_frame_us() -> float:
    """CPU microseconds to protect one of the bench's RTP packets and unprotect it."""
    import secrets  # noqa: PLC0415

    encoder, source = OpusEncoder(), ToneSource(440)
    packets = [
        bytes(RtpPacket(111, i, 960 * i, 0x1234, encoder.encode(source.read())))
        for i in range(3000)
    ]
    a_to_b, b_to_a = secrets.token_bytes(28), secrets.token_bytes(28)
    alice, bob = MediaCipher(a_to_b, b_to_a), MediaCipher(b_to_a, a_to_b)
    t0 = time.process_time()
    for packet in packets:
        bob.unprotect_untrusted(alice.protect(packet) or b"")
    assert alice.unsent == bob.rejected == 0
    return (time.process_time() - t0) / len(packets) * 1e6


@contextlib.asynccontextmanager
async def timed_codec(opus: list[float], srtp: list[float]) -> AsyncIterator[None]:
    """Adds the CPU time of every Opus encode and decode to opus[0], and of every SRTP protect
    and unprotect to srtp[0], while open: in a call, where each 20 ms frame finds its caches
    cold, they cost more than in a loop."""
    timed = [
        (OpusEncoder, "encode", opus),
        (OpusDecoder, "decode", opus),
        (MediaCipher, "protect", srtp),
        (MediaCipher, "unprotect_untrusted", srtp),
    ]
    saved = [getattr(cls, name) for cls, name, _ in timed]

    def timing(method: Callable[[Any, Any], Any], total: list[float]) -> Callable[[Any, Any], Any]:
        def run(self: Any, arg: Any) -> Any:
            t0 = time.process_time()
            try:
                return method(self, arg)
            finally:
                total[0] += time.process_time() - t0

        return run

    for (cls, name, total), method in zip(timed, saved, strict=True):
        setattr(cls, name, timing(method, total))  # mypy would refuse the assignment
    try:
        yield
    finally:
        for (cls, name, _), method in zip(timed, saved, strict=True):
            setattr(cls, name, method)


def codec_cpu_per_minute() -> float:
    """CPU seconds libopus spends on a minute of the bench's audio, one way each way."""
    encoder, decoder, source = OpusEncoder(), OpusDecoder(), ToneSource(440)
    frames = [source.read() for _ in range(3000)]  # a minute of 20 ms frames
    t0 = time.process_time()
    for frame in frames:
        decoder.decode(encoder.encode(frame))
    return time.process_time() - t0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--apart", action="store_true", help="also a call with a process per caller")
    p.add_argument("--callee", type=int, help=argparse.SUPPRESS)  # bob's half of --apart
    args = p.parse_args()
    if args.callee is not None:
        asyncio.run(callee(args.callee, args.duration))
    else:
        asyncio.run(main(args.calls, args.duration, args.apart))
