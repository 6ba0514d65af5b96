"""Benchmark (root): what each network costs a call in the lab: UDP, UDP blocked, IPv6.

    sudo .venv/bin/python bench/lab_networks.py [--rounds 3]

Each round makes five calls, 4 s each, 5 ms on each host's link and 20 ms to the relay:
the relay forced over UDP (the baseline), alice's UDP blocked with the relay found over TCP by
itself, and over TLS when asked for (`--server-transport tls`, `turns:`), both on our relay;
then, with IPv6 on, cone/cone and symmetric/symmetric. Prints per case the setup (introduction
to audio), the path and family that carried the audio, its RTT (median of the calls' medians,
and the lowest sample), and what the relay's transport was.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from voip.lab.netns import lab_unavailable_reason
from voip.lab.scenario import run_lab_call
from voip.lab.scenario import tls_caller_args
from voip.lab.topology import LabConfig

SECRET = "lab-networks-secret"


def case(name: str, workdir: Path) -> dict[str, Any]:
    """One call of the case `name`: alice's report."""
    args: dict[str, Any] = {}
    if name == "relay over UDP":
        config = LabConfig(delay_a=5.0, delay_b=5.0, delay_relay=20.0)
        args["extra_args"] = ["--relay", "force"]
    elif name == "UDP blocked: TCP":
        config = LabConfig(delay_a=5.0, delay_b=5.0, delay_relay=20.0, block_udp=("a",))
    elif name == "UDP blocked: TLS":
        config = LabConfig(delay_a=5.0, delay_b=5.0, delay_relay=20.0, block_udp=("a",))
        args["tls"] = True
        args["caller_args"] = {"alice": tls_caller_args(workdir, SECRET)}
    else:
        nat = name.split()[1].partition("/")[0]  # "IPv6 cone/cone"
        config = LabConfig(nat_a=nat, nat_b=nat, delay_a=5.0, delay_b=5.0, ipv6=True)
    result = run_lab_call(
        config, workdir, duration=4.0, speech=False, wait=15, turn_secret=SECRET, **args
    )
    report = result.callers["alice"].report
    assert report is not None, result.callers["alice"].stderr
    return report


CASES = (
    "relay over UDP",
    "UDP blocked: TCP",
    "UDP blocked: TLS",
    "IPv6 cone/cone",
    "IPv6 symmetric/symmetric",
)


def main(rounds: int) -> int:
    if (why := lab_unavailable_reason()) is not None:
        print(f"the lab cannot run here: {why}", file=sys.stderr)
        return 1
    reports: dict[str, list[dict[str, Any]]] = {name: [] for name in CASES}
    for _ in range(rounds):
        for name in CASES:
            with tempfile.TemporaryDirectory(prefix="lab-networks-") as tmp:
                reports[name].append(case(name, Path(tmp)))
    print(f"{rounds} calls per case; 5 ms on each host's link, 20 ms to the relay")
    for name, got in reports.items():
        path = [r["paths"][r["path"]] if r["path"] != "none" else None for r in got]
        medians = [p["rtt_ms"]["median"] for p in path if p and p["rtt_ms"]]
        lowest = [p["rtt_ms"]["min"] for p in path if p and p["rtt_ms"]]
        carried = sorted(
            {
                f"{r['path']} {p['family']} {p['transport']}"
                for r, p in zip(got, path, strict=True)
                if p
            }
        )
        setups = [r["setup_ms"] for r in got if r["setup_ms"] is not None]
        print(
            f"{name:<26} setup median {statistics.median(setups):7.1f} ms"
            f" | RTT median {statistics.median(medians):6.2f} ms, lowest {min(lowest):6.2f}"
            f" | audio went {', '.join(carried)}"
            f" | connected {len(setups)}/{len(got)}"
        )
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    sys.exit(main(p.parse_args().rounds))
