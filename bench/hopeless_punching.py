"""Benchmark: call setup when both NATs are symmetric, with and without the mapping probe.

    sudo .venv/bin/python bench/hopeless_punching.py [--repeat 5]

With an RFC 5780 alternate address on the rendezvous, each caller learns at registration
whether its NAT maps per destination and says so; when both do, the controlling side uses the
relay as soon as it answers instead of giving the direct pairs RELAY_GRACE to prove themselves.
Without the alternate address nothing is known and the grace is spent. A cone/symmetric pair
(also relayed, but not known hopeless from mappings alone) is shown for contrast.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from voip.lab.bench_args import lab_bench_parser
from voip.lab.bench_args import lab_ready
from voip.lab.bench_args import table_head
from voip.lab.bench_args import table_row
from voip.lab.scenario import run_lab_call
from voip.lab.topology import LabConfig


def main() -> int:
    args = lab_bench_parser(__doc__, repeat=5).parse_args()
    if not lab_ready():
        return 1
    print(
        f"one-way delay {args.delay:g} ms each side, {args.delay_relay:g} ms to the relay; "
        f"{args.repeat} calls per row; setup is introduction to audio path chosen (alice)"
    )
    table_head("alice", "bob", "mapping probe", "audio went", "setup ms median (min-max)")
    for a, b in (("symmetric", "symmetric"), ("cone", "symmetric")):
        for probe in (False, True):
            paths, setups = set(), []
            for _ in range(args.repeat):
                cfg = LabConfig(
                    nat_a=a,
                    nat_b=b,
                    delay_a=args.delay,
                    delay_b=args.delay,
                    delay_relay=args.delay_relay,
                )
                with tempfile.TemporaryDirectory() as tmp:
                    result = run_lab_call(
                        cfg, Path(tmp), duration=1.0, speech=False, alternate_address=probe
                    )
                report = result.callers["alice"].report or {}
                paths.add(report.get("path", "none"))
                if report.get("setup_ms") is not None:
                    setups.append(report["setup_ms"])
            figure = (
                f"{statistics.median(setups):.0f} ({min(setups):.0f}-{max(setups):.0f})"
                if setups
                else "-"
            )
            table_row(a, b, "yes" if probe else "no", "/".join(sorted(paths)), figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
