"""Example: embed a callpeer call in your own asyncio program.

Run a rendezvous (or let this script host one), then in two terminals:

    python examples/embed_call.py alice bob
    python examples/embed_call.py bob alice

Each side sends a tone, prints the events as they come and the report at the end.
"""

from __future__ import annotations

import asyncio
import json
import sys

from rendezvous.local import find_or_host
from voip import Call
from voip import CallError
from voip import NullSink
from voip import ToneSource
from voip.events import Connected
from voip.events import Ended
from voip.events import LiveStats


async def main(me: str, peer: str) -> int:
    server, hosted = await find_or_host()  # 127.0.0.1:3478, or one in this process
    call = Call(
        me, peer, source=ToneSource(440 if me < peer else 660), sink=NullSink(), server=server
    )

    async def watch() -> None:
        async for event in call.events():
            if isinstance(event, Connected):
                print(f"connected {event.path} to {event.remote} in {event.setup_ms:.0f} ms")
            elif isinstance(event, LiveStats):
                print(f"rtt {event.rtt_ms} ms, loss {event.loss_pct:.1f} %")
            elif isinstance(event, Ended):
                print(f"ended: {event.reason}")

    watcher = asyncio.create_task(watch())
    try:
        async with call:
            await call.run(duration=5)
    except CallError as exc:
        print(f"call failed: {exc}", file=sys.stderr)
        return 1
    finally:
        await watcher
        if hosted is not None:
            hosted.close()
    print(json.dumps(call.report().to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: embed_call.py ME PEER")
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2])))
