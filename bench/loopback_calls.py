"""Benchmark: setup time and CPU cost of direct calls between two callers on loopback.

    .venv/bin/python bench/loopback_calls.py [--calls 20] [--duration 2]

Prints setup time (introduction to path selected, and from start to audio flowing), the RTT
the calls measured, and CPU seconds per call-minute for the process running both callers, with
what Opus alone costs for the same audio (encoding and decoding a frame, measured here too).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from rendezvous.server import RendezvousServer
from voip import Call, CallOptions, NullSink, ToneSource
from voip.codecs.opus import OpusDecoder, OpusEncoder
from voip.report import percentile


async def one_call(server: RendezvousServer, duration: float) -> tuple[dict[str, Any], float]:
    opts = CallOptions(bind_host="127.0.0.1")
    alice = Call(
        "alice", "bob", source=ToneSource(440), sink=NullSink(), server=server.address, options=opts
    )
    bob = Call(
        "bob", "alice", source=ToneSource(660), sink=NullSink(), server=server.address, options=opts
    )
    t0 = time.perf_counter()
    async with alice, bob:
        await asyncio.gather(alice.connected(), bob.connected())
        to_audio = (time.perf_counter() - t0) * 1000
        await asyncio.gather(alice.run(duration), bob.run(duration))
    return alice.report().to_dict(), to_audio


async def main(calls: int, duration: float) -> None:
    setups, starts, rtts, frames = [], [], [], []
    cpu0 = time.process_time()
    async with RendezvousServer() as server:
        await server.start("127.0.0.1", 0)
        for _ in range(calls):
            report, to_audio = await one_call(server, duration)
            setups.append(report["setup_ms"])
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
    print(line("setup (introduced -> path chosen)", setups, "ms"))
    print(line("start -> audio flowing", starts, "ms"))
    print(line("RTT measured (RTCP/STUN)", rtts, "ms"))
    print(f"{'frames played per call':<34} min {min(frames)} of {int(duration * 50)}")
    # Two callers run in this process, so one caller costs half of it.
    print(f"{'CPU per caller per call-minute':<34} {cpu / call_minutes / 2:.2f} s")
    print(f"{'  of which Opus (encode + decode)':<34} {codec_cpu_per_minute():.2f} s")


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
    args = p.parse_args()
    asyncio.run(main(args.calls, args.duration))
