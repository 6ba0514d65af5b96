"""Benchmark: every pair of lab NAT kinds, how often the call went direct, how, and how fast (root).

    sudo .venv/bin/python bench/nat_matrix.py [--repeat 10] [--delay 5] [--port-mapping]
                                             [--only cone/symmetric ...]

Each case runs real calls between two `callpeer` processes behind lab NAT routers (every pair
of kinds, and two callers behind one router), with the given one-way delay on each side. For
each case it prints the share of calls whose audio ended on the direct path; how that path was
found (punched, a LAN both share, a router's port mapping, a predicted port, birthday punching:
alice's report); the time from the introduction to the first audio on any path (`setup_ms`)
and to the audio on the direct path (`direct_ms`), median and 95th percentile over the calls
that got there; and the median RTT of each path. With --port-mapping, every case with a router
runs again with miniupnpd (NAT-PMP, PCP) on alice's router (on bob's when alice has none).
"""

from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from voip.lab.bench_args import lab_bench_parser
from voip.lab.bench_args import lab_ready
from voip.lab.bench_args import table_head
from voip.lab.bench_args import table_row
from voip.lab.nat import NAT_KINDS
from voip.lab.scenario import run_lab_call
from voip.lab.topology import LabConfig

CALL_S = 4.0  # audio per call: long enough for birthday punching to move it direct


def how(found_by: str) -> str:
    """found_by without its figures: "birthday, 312 probes, 1.4 s" counts as "birthday"."""
    return "birthday" if found_by.startswith("birthday") else found_by


COLUMNS = (
    "alice",
    "bob",
    "went direct",
    "found by",
    "to first audio",
    "to direct audio",
    "direct RTT ms",
    "relay RTT ms",
)


def quantiles(values: list[float]) -> str:
    """'median / p95' in ms, or '-'."""
    if not values:
        return "-"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):.0f} / {p95:.0f}"


def run_case(args: Any, a: str, b: str, same: bool, mapping: bool) -> tuple[str, ...]:
    paths: list[str] = []
    found: list[str] = []
    setup: list[float] = []
    direct: list[float] = []
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
                port_mapping_a=mapping and a != "none",
                port_mapping_b=mapping and a == "none",
            )
            result = run_lab_call(cfg, Path(tmp), duration=CALL_S, speech=False, wait=10)
        report = result.callers["alice"].report or {}
        paths.append(report.get("path", "none"))
        if report.get("path") == "direct":
            found.append(how(report["paths"]["direct"].get("found_by") or "-"))
        if report.get("setup_ms") is not None:
            setup.append(report["setup_ms"])
        if report.get("direct_ms") is not None:
            direct.append(report["direct_ms"])
        for kind, values in rtts.items():
            rtt = report.get("paths", {}).get(kind, {}).get("rtt_ms")
            if rtt:
                values.append(rtt["median"])
    n = len(paths)
    share = f"{100 * paths.count('direct') / n:.0f}% ({paths.count('direct')}/{n})"
    failed = paths.count("none")
    if failed:
        share += f", {failed} failed"
    ways = ", ".join(f"{k} {found.count(k)}" for k in sorted(set(found))) or "-"
    figures = {k: f"{statistics.median(v):.1f}" if v else "-" for k, v in rtts.items()}
    name_a = f"{a} (same router as bob)" if same else a
    name_a += " + port mapping" if mapping and a != "none" else ""
    name_b = b + (" + port mapping" if mapping and a == "none" else "")
    return (
        name_a,
        name_b,
        share,
        ways,
        quantiles(setup),
        quantiles(direct),
        figures["direct"],
        figures["relay"],
    )


def main() -> int:
    parser = lab_bench_parser(__doc__, repeat=10)
    parser.add_argument(
        "--port-mapping", action="store_true", help="also run each case with alice's router mapping"
    )
    parser.add_argument(
        "--only", nargs="*", default=None, help="cases to run, as ALICE/BOB (e.g. cone/symmetric)"
    )
    args = parser.parse_args()
    if not lab_ready():
        return 1
    pairs = [(a, b, False) for a, b in itertools.combinations_with_replacement(NAT_KINDS, 2)]
    pairs.append(("cone", "cone", True))
    cases = [(a, b, same, False) for a, b, same in pairs]
    if args.port_mapping:
        cases += [(a, b, same, True) for a, b, same in pairs if (a, b) != ("none", "none")]
    if args.only:
        cases = [c for c in cases if f"{c[0]}/{c[1]}" in args.only]
    truth_relay = 2 * args.delay + 2 * args.delay_relay
    print(
        f"one-way delay {args.delay:g} ms each side, {args.delay_relay:g} ms to the relay "
        f"(true RTT {2 * args.delay:g} ms direct, {truth_relay:g} ms relayed); "
        f"{args.repeat} calls per case of {CALL_S:g} s audio; times from the introduction, "
        "median / p95 ms"
    )
    table_head(*COLUMNS)
    for a, b, same, mapping in cases:
        table_row(*run_case(args, a, b, same, mapping))
    return 0


if __name__ == "__main__":
    sys.exit(main())
