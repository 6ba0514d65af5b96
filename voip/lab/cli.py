"""`callpeer lab`: a call between two hosts behind real Linux NATs on an emulated internet."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from voip.codecs.pcm import dominant_frequency
from voip.codecs.pcm import rms_dbfs
from voip.lab.nat import BEHAVIOUR
from voip.lab.nat import NAT_KINDS
from voip.lab.scenario import TONES
from voip.lab.scenario import LabCallResult
from voip.lab.scenario import run_lab_call
from voip.lab.topology import LabConfig
from voip.media.audio_io import AudioSpecError
from voip.media.audio_io import read_wav
from voip.report import render_table

LAB_HELP = "a call through two real NAT routers on an emulated internet (root, Linux)"
LAB_DESCRIPTION = (
    "Build two hosts behind NAT routers on an emulated internet (network "
    "namespaces, nftables; needs root), run a call through it, print the "
    "report and what the routers did, and tear it all down."
)


def add_lab_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `callpeer lab`, on the parser `callpeer` makes for it."""
    p.add_argument("--nat-a", default="cone", choices=NAT_KINDS, help="NAT in front of alice")
    p.add_argument("--nat-b", default="cone", choices=NAT_KINDS, help="NAT in front of bob")
    p.add_argument(
        "--same-nat",
        action="store_true",
        help="put bob on alice's LAN, behind the same router",
    )
    for side in ("a", "b"):
        p.add_argument(
            f"--port-mapping-{side}",
            action="store_true",
            help=f"{side}'s router opens ports on request (miniupnpd: NAT-PMP and PCP), "
            "as many home routers do",
        )
    p.add_argument(
        "--block-udp",
        action="append",
        choices=("a", "b"),
        default=[],
        metavar="a|b",
        help="that side's router lets no UDP out, only TCP, as hotel and office networks "
        "(may be repeated)",
    )
    p.add_argument(
        "--ipv6",
        action="store_true",
        help="every node an IPv6 address too (2001:db8::/32): no NAT, each router a "
        "stateful firewall (RFC 6092)",
    )
    p.add_argument(
        "--hairpin",
        action="store_true",
        help="routers turn packets for their own public addresses back inside (hairpinning)",
    )
    p.add_argument(
        "--delay-a",
        type=float,
        default=5.0,
        metavar="MS",
        help="one-way delay on alice's link (default 5)",
    )
    p.add_argument("--delay-b", type=float, default=5.0, metavar="MS")
    p.add_argument("--delay-relay", type=float, default=40.0, metavar="MS")
    p.add_argument(
        "--jitter",
        type=float,
        default=0.0,
        metavar="MS",
        help="extra uniform delay 0..MS on alice's and bob's links",
    )
    p.add_argument(
        "--loss",
        type=float,
        default=0.0,
        metavar="PCT",
        help="random loss on alice's and bob's links, each direction",
    )
    p.add_argument(
        "--udp-timeout",
        type=int,
        metavar="S",
        help="both routers' UDP mapping timeout (conntrack), default the kernel's",
    )
    p.add_argument("--udp-timeout-a", type=int, metavar="S", help="alice's router only")
    p.add_argument("--udp-timeout-b", type=int, metavar="S", help="bob's router only")
    p.add_argument("--duration", type=float, default=4.0, metavar="SECONDS")
    p.add_argument("--no-speech", action="store_true", help="send tones both ways")
    p.add_argument("--json", metavar="PATH|-", help="write the report as JSON (- for stdout)")
    p.add_argument("--plot", metavar="FILE.png", help="draw alice's RTT over time, both paths")
    p.add_argument(
        "--relay",
        choices=("auto", "force", "off"),
        default="auto",
        help="the callers' --relay (default auto)",
    )


# The LabConfig fields that `callpeer lab` takes from its options of the same names.
CONFIG_OPTIONS = (
    "nat_a",
    "nat_b",
    "same_nat",
    "hairpin",
    "port_mapping_a",
    "port_mapping_b",
    "delay_a",
    "delay_b",
    "delay_relay",
    "jitter",
    "loss",
    "udp_timeout",
    "udp_timeout_a",
    "udp_timeout_b",
    "ipv6",
)


def config_from_args(args: argparse.Namespace) -> LabConfig:
    options = {name: getattr(args, name) for name in CONFIG_OPTIONS}
    # Repeated --block-udp a --block-udp a is still one side.
    return LabConfig(**options, block_udp=tuple(sorted(set(args.block_udp))))


def heard(result: LabCallResult) -> dict[str, str]:
    """What each side's WAV holds, measured: the peer's tone frequency, or speech level."""
    out = {}
    for me, peer in (("alice", "bob"), ("bob", "alice")):
        try:
            pcm, _ = read_wav(result.callers[me].wav)
        except AudioSpecError:
            out[me] = "nothing (no audio written)"
            continue
        if result.inputs.get(peer, "").startswith("tone:"):
            out[me] = f"{dominant_frequency(pcm):.0f} Hz ({peer} sent {TONES[peer]:g} Hz)"
        else:
            out[me] = f"{len(pcm) / 48000:.1f} s of {peer}'s speech at {rms_dbfs(pcm):.0f} dBFS"
    return out


def routers_table(result: LabCallResult) -> Table:
    table = Table(title="what the routers did", title_justify="left")
    for col in ("", "private address", "public mapping (seen by rendezvous)", "NAT"):
        table.add_column(col)
    for side, name in (("a", "alice"), ("b", "bob")):
        node = result.nodes[side]
        report = result.callers[name].report or {}
        table.add_row(
            name,
            node["address"],
            str(report.get("local_public") or "-"),
            f"{node['nat']}: {BEHAVIOUR[node['nat']]}",
        )
    return table


def baseline_line(result: LabCallResult) -> str:
    """What the lab itself adds: plain echoes before the call against the configured delays."""
    cfg, base = result.config, result.baseline
    if not base:
        return ""
    truth = {
        "direct": cfg.delay_a + cfg.delay_b if not cfg.same_nat else 0.0,
        "relay": cfg.delay_a + cfg.delay_b + 2 * cfg.delay_relay,
    }
    parts = [
        f"{path} {rtt.median:.2f} ms (configured {truth[path]:g})" for path, rtt in base.items()
    ]
    return "plain UDP echo before the call, median RTT: " + ", ".join(parts)


def run_lab(args: argparse.Namespace) -> int:
    # SIGTERM becomes SystemExit, so the lab's context manager tears everything down as it does
    # after Ctrl-C; left to the default, the namespaces would outlive us (until the next run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    console = Console(stderr=args.json == "-", soft_wrap=True)
    config = config_from_args(args)
    same = (", same NAT" if config.same_nat else "") + (", hairpinning" if config.hairpin else "")
    same += "".join(f", no UDP out of {side}'s network" for side in config.block_udp)
    same += ", IPv6 beside IPv4" if config.ipv6 else ""
    console.print(
        f"lab: alice behind {config.nat_a}, bob behind {config.nat_b}{same}; one-way "
        f"delay {config.delay_a:g} + {config.delay_b:g} ms, loss {config.loss:g} %; "
        f"{args.duration:g} s call",
        highlight=False,
    )
    with tempfile.TemporaryDirectory(prefix="callpeer-lab-") as tmp:
        result = run_lab_call(
            config,
            Path(tmp),
            duration=args.duration,
            speech=not args.no_speech,
            extra_args=["--relay", args.relay],
            plot=Path(args.plot).resolve() if args.plot else None,
        )
        what = heard(result)
    console.print(routers_table(result))
    if echo := baseline_line(result):
        console.print(echo, highlight=False)
    alice = result.callers["alice"]
    if alice.report is not None and alice.report.get("path") != "none":
        console.print(render_table(alice.report))
    for name, caller in result.callers.items():
        if caller.exit_code != 0:
            last = caller.stderr.strip().splitlines()[-1:] or ["(no message)"]
            console.print(
                f"{name}: exit {caller.exit_code}: {last[0]}", highlight=False, style="red"
            )
    console.print(f"alice heard {what['alice']}; bob heard {what['bob']}", highlight=False)
    if args.json:
        report: dict[str, Any] = dict(alice.report or {})
        report["lab"] = {**result.to_dict(), "heard": what, "bob": result.callers["bob"].report}
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0 if all(c.exit_code == 0 for c in result.callers.values()) else 1
