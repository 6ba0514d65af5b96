"""Benchmark: mouth-to-ear latency in the lab, from marks in the audio (needs root).

    sudo .venv/bin/python bench/mouth_to_ear.py [--delay 5] [--jitter 0] [--duration 10]

Both callers send a 10 ms burst once a second and record when each frame was read and played
(--timeline); the bursts found in the received audio give end-to-end latency, and end-to-end
minus the lab's one-way delay is what the software adds (packetization, codec lookahead,
jitter buffer, scheduling). The network's one way is half the plain echo measured through the
same lab just before the call (`voip.lab.echo`): the configured delay plus what the lab's switch
adds on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from voip.lab.bench_args import lab_ready
from voip.lab.bench_args import table_head
from voip.lab.bench_args import table_row
from voip.lab.latency import lab_mouth_to_ear
from voip.lab.topology import LabConfig


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--delay", type=float, default=5.0, help="one-way ms on each side")
    p.add_argument("--jitter", type=float, default=0.0)
    p.add_argument("--duration", type=float, default=10.0)
    args = p.parse_args()
    if not lab_ready():
        return 1
    config = LabConfig(
        nat_a="cone", nat_b="cone", delay_a=args.delay, delay_b=args.delay, jitter=args.jitter
    )
    print(
        f"one-way network delay {args.delay:g} ms, jitter 0-{args.jitter:g} ms, "
        f"{args.duration:g} s call, 20 ms frames"
    )
    table_head("listener", "marks", "end-to-end ms (median)", "min", "max", "software adds ms")
    with tempfile.TemporaryDirectory() as tmp:
        measured = lab_mouth_to_ear(config, Path(tmp), args.duration)
    one_way = measured.network_one_way()
    for me, lat in measured.latencies.items():
        med = statistics.median(lat)
        table_row(
            me, len(lat), f"{med:.1f}", f"{min(lat):.1f}", f"{max(lat):.1f}", f"{med - one_way:.1f}"
        )
    print(f"network one way (half the lab's plain echo before the call): {one_way:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
