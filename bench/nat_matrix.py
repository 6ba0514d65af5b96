"""Benchmark: every pair of NAT kinds in the lab, with setup time and measured RTT (needs root).

    sudo .venv/bin/python bench/nat_matrix.py [--repeat 3] [--delay 5] [--port-mapping]

Each case runs a real call between two `callpeer` processes behind lab NAT routers, with the
given one-way delay on each side, and prints the path it took, how the direct path was found
(punched, same LAN, a router's port mapping), the setup time (introduction to path chosen,
median over the repeats) and the median RTT the call measured. With --port-mapping, every case
with a router on alice's side runs again with miniupnpd (NAT-PMP, PCP) on it.
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
    parser = lab_bench_parser(__doc__, repeat=3)
    parser.add_argument(
        "--port-mapping", action="store_true", help="also run each case with alice's router mapping"
    )
    args = parser.parse_args()
    if not lab_ready():
        return 1
    pairs = [(a, b, False) for a, b in itertools.combinations_with_replacement(NAT_KINDS, 2)]
    pairs.append(("cone", "cone", True))
    cases = [(a, b, same, False) for a, b, same in pairs]
    if args.port_mapping:
        cases += [(a, b, same, True) for a, b, same in pairs if a != "none"]
    truth_relay = 2 * args.delay + 2 * args.delay_relay
    print(
        f"one-way delay {args.delay:g} ms each side, {args.delay_relay:g} ms to the relay "
        f"(true RTT {2 * args.delay:g} ms direct, {truth_relay:g} ms relayed); "
        f"{args.repeat} calls per case"
    )
    print("| alice | bob | audio went | found by | setup ms | direct RTT ms | relay RTT ms |")
    print("|---|---|---|---|---|---|---|")
    for a, b, same, mapping in cases:
        paths, setups, found = [], [], []
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
                    port_mapping_a=mapping,
                )
                result = run_lab_call(cfg, Path(tmp), duration=1.5, speech=False, wait=10)
            report = result.callers["alice"].report or {}
            paths.append(report.get("path", "none"))
            if report.get("path") == "direct":
                found.append(report["paths"]["direct"].get("found_by") or "-")
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
        name_a += " + port mapping" if mapping else ""
        how = ", ".join(f"{k} {found.count(k)}/{args.repeat}" for k in sorted(set(found))) or "-"
        print(
            f"| {name_a} | {b} | {path} | {how} | {setup} | {figures['direct']} "
            f"| {figures['relay']} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
