"""Benchmark: every pair of NAT kinds in the lab, with setup time and measured RTT (needs root).

    sudo .venv/bin/python bench/nat_matrix.py [--repeat 3] [--delay 5]

Each case runs a real call between two `callpeer` processes behind lab NAT routers, with the
given one-way delay on each side, and prints the path it took, the setup time (introduction
to path chosen, median over the repeats) and the median RTT the call measured.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
from pathlib import Path

from voip.lab.bench_args import lab_bench_parser
from voip.lab.bench_args import lab_ready
from voip.lab.nat import NAT_KINDS
from voip.lab.scenario import run_lab_call
from voip.lab.topology import LabConfig


def main() -> int:
    args = lab_bench_parser(__doc__, repeat=3).parse_args()
    if not lab_ready():
        return 1
    cases = [(a, b, False) for a, b in itertools.combinations_with_replacement(NAT_KINDS, 2)]
    cases.append(("cone", "cone", True))
    truth_relay = 2 * args.delay + 2 * args.delay_relay
    print(
        f"one-way delay {args.delay:g} ms each side, {args.delay_relay:g} ms to the relay "
        f"(true RTT {2 * args.delay:g} ms direct, {truth_relay:g} ms relayed); "
        f"{args.repeat} calls per case"
    )
    print("| alice | bob | audio went | setup ms | direct RTT ms | relay RTT ms |")
    print("|---|---|---|---|---|---|")
    for a, b, same in cases:
        paths, setups = [], []
        rtts: dict[str, list[float]] = {"direct": [], "relay": []}
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                cfg = LabConfig(
                    nat_a=a,
                    nat_b=b,
                    same_nat=same,
                    delay_a=args.delay,
                    delay_b=args.delay,
                    delay_relay=args.delay_relay,
                )
                result = run_lab_call(cfg, Path(tmp), duration=1.5, speech=False, wait=10)
            report = result.callers["alice"].report or {}
            paths.append(report.get("path", "none"))
            if report.get("setup_ms") is not None:
                setups.append(report["setup_ms"])
            for kind, values in rtts.items():
                rtt = report.get("paths", {}).get(kind, {}).get("rtt_ms")
                if rtt:
                    values.append(rtt["median"])
        path = "/".join(sorted(set(paths))).replace("none", "failed")
        setup = f"{statistics.median(setups):.0f}" if setups else "-"
        figures = {k: f"{statistics.median(v):.1f}" if v else "-" for k, v in rtts.items()}
        name_a = f"{a} (same router as bob)" if same else a
        print(
            f"| {name_a} | {b} | {path} | {setup} | {figures['direct']} | {figures['relay']} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
