"""Two tone callers on loopback, as the loopback benchmarks make and time them."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from voip.call import Call
from voip.call import CallOptions
from voip.media.audio_io import NullSink
from voip.media.audio_io import ToneSource
from voip.wire.stun import Address

# Each side's own tone, so what either one heard says who it came from.
TONES = {"alice": 440.0, "bob": 660.0}


def tone_caller(me: str, peer: str, server: Address, options: CallOptions) -> Call:
    """`me` calling `peer` through the rendezvous at `server`, sending its tone to no speaker."""
    return Call(
        me, peer, source=ToneSource(TONES[me]), sink=NullSink(), server=server, options=options
    )


async def timed_call(alice: Call, bob: Call, duration: float) -> tuple[dict[str, Any], float]:
    """Both started, connected and run for `duration` s: alice's report, and the ms from the
    start to audio flowing."""
    t0 = time.perf_counter()
    async with alice, bob:
        await asyncio.gather(alice.connected(), bob.connected())
        to_audio = (time.perf_counter() - t0) * 1000
        await asyncio.gather(alice.run(duration), bob.run(duration))
    return alice.report().to_dict(), to_audio
