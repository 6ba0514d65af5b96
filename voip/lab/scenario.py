"""A whole call in the lab: rendezvous, two `callpeer` processes behind their NATs, captures."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from rendezvous.tls import self_signed
from voip.lab.echo import EchoRtt
from voip.lab.ipv6 import RELAY_IP6
from voip.lab.ipv6 import SERVER_IP6
from voip.lab.netns import LabError
from voip.lab.netns import stop
from voip.lab.topology import INTERNET
from voip.lab.topology import RELAY_IP
from voip.lab.topology import SERVER_ALT_IP
from voip.lab.topology import SERVER_IP
from voip.lab.topology import Lab
from voip.lab.topology import LabConfig

CALLERS = (("a", "alice", "bob"), ("b", "bob", "alice"))
TONES = {"alice": 440.0, "bob": 660.0}
RELAYS = ("ours", "coturn")  # what runs on the relay node: callpeer-rendezvous, or coturn
TLS_PORT = 5349  # the rendezvous's and the relay's TLS listeners, with `tls`


def tls_files(workdir: Path) -> tuple[Path, Path]:
    """Where run_lab_call(tls=True) writes its self-signed certificate (for SERVER_IP and
    RELAY_IP, and their IPv6 addresses) and its key: a caller passes the certificate as
    --tls-ca."""
    return workdir / "lab-tls.pem", workdir / "lab-tls.key"


def tls_caller_args(workdir: Path, secret: str) -> list[str]:
    """A caller's options to reach the lab's rendezvous and relay over TLS alone (as on a
    network where only TLS gets out), checking them against the lab's certificate."""
    cert, _ = tls_files(workdir)
    return [
        "--server-transport",
        "tls",
        "--server",
        f"{SERVER_IP}:{TLS_PORT}",
        "--tls-ca",
        str(cert),
        "--turn",
        f"turns:{RELAY_IP}:{TLS_PORT}",
        f"--turn-secret={secret}",
    ]


@dataclass
class CallerResult:
    name: str
    exit_code: int | None
    stderr: str
    report: dict[str, Any] | None
    wav: Path


@dataclass
class LabCallResult:
    config: LabConfig
    nodes: dict[str, dict[str, str]]
    callers: dict[str, CallerResult] = field(default_factory=dict)
    captures: dict[str, dict[str, Any]] = field(default_factory=dict)  # side -> capture summary
    mappings_left: dict[str, int] = field(default_factory=dict)  # side -> ports still mapped
    inputs: dict[str, str] = field(default_factory=dict)
    # Plain UDP echoes just before the call, over the paths it can take: what the lab adds.
    baseline: dict[str, EchoRtt] = field(default_factory=dict)
    relay: str = "ours"  # what ran on the relay node (RELAYS)
    tls: bool = False  # the rendezvous and the relay listened on TLS (TLS_PORT) too
    relay_output: str = ""  # our relay's lines after its first, read once it stopped

    def to_dict(self) -> dict[str, Any]:
        return {
            "nat": {
                "a": self.config.nat_a,
                "b": self.config.nat_b,
                "same_nat": self.config.same_nat,
                "hairpin": self.config.hairpin,
                "port_mapping": {
                    "a": self.config.port_mapping_a,
                    "b": self.config.port_mapping_b,
                },
            },
            "delay_ms": {
                "a": self.config.delay_a,
                "b": self.config.delay_b,
                "relay": self.config.delay_relay,
            },
            "loss_pct": self.config.loss,
            "block_udp": list(self.config.block_udp),
            "ipv6": self.config.ipv6,
            "relay_server": self.relay,
            "tls": self.tls,
            "nodes": self.nodes,
            "inputs": self.inputs,
            "exit_codes": {n: c.exit_code for n, c in self.callers.items()},
            "captures": self.captures,
            "baseline_rtt_ms": {path: rtt.to_dict() for path, rtt in self.baseline.items()},
        }


def speech_wav(path: Path, text: str) -> Path | None:
    """Real speech from espeak-ng, if it is installed."""
    if shutil.which("espeak-ng") is None:
        return None
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return path


def _start_capture(lab: Lab, side: str) -> subprocess.Popen[str] | None:
    node = lab.nodes[side]
    if node.router_ns is None and node.nat != "none":
        return None
    ns_node = side if node.nat == "none" else None
    args = [sys.executable, "-m", "voip.lab.capture", "--dev", "eth0" if ns_node else "wan"]
    if ns_node:
        proc = lab.start(side, args, stdout=subprocess.PIPE)
    else:
        from voip.lab.netns import popen  # noqa: PLC0415

        assert node.router_ns is not None
        proc = popen(args, ns=node.router_ns, stdout=subprocess.PIPE)
        lab.processes.append(proc)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise LabError("packet capture did not start")
    return proc


def _stop_capture(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=5)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def _start_servers(
    lab: Lab,
    workdir: Path,
    secret: str,
    *,
    relay: str,
    tls: tuple[Path, Path] | None,
    alternate: bool,
    relay_args: list[str],
    redis: str | None = None,
) -> subprocess.Popen[str] | None:
    """The relay node's TURN relay (ours or coturn) and the rendezvous, which offers it to
    callers with REST credentials from `secret` (as it would offer a coturn fleet); `tls`
    (certificate, key) gives both a TLS listener on TLS_PORT; `relay_args` are more options of
    our relay. Our relay's process, or None for coturn."""
    # "=": a random secret may begin with "-", which argparse would take for an option.
    rendezvous = [sys.executable, "-m", "rendezvous", f"--turn-secret={secret}"]
    tls_args = ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])] if tls else []
    procs = []
    ours = None
    if relay == "coturn":
        lab.start_coturn(secret, *(tls or (None, None)), tls_port=TLS_PORT)
    else:
        command = [
            *rendezvous,
            f"--store={workdir / 'relay-names.sqlite3'}",  # the run's, not the user's
            "--listen",
            f"{RELAY_IP}:3478",
            "--relay-address",
            RELAY_IP,
            # The lab's internet is a documentation range, which a relay refuses by default.
            "--allow-peer",
            INTERNET,
            *tls_args,
            *relay_args,
        ]
        ours = lab.start("relay", command, stdout=subprocess.PIPE)
        procs.append((ours, "relay"))
    server_args = [
        *rendezvous,
        f"--redis={redis}" if redis else f"--store={workdir / 'names.sqlite3'}",
        "--listen",
        f"{SERVER_IP}:3478",
        "--turn-url",
        f"turn:{RELAY_IP}:3478",
        *(["--alt-address", SERVER_ALT_IP] if alternate else []),
        *tls_args,
    ]
    procs.append((lab.start("server", server_args, stdout=subprocess.PIPE), "rendezvous"))
    for proc, what in procs:
        assert proc.stdout is not None
        if "listening" not in proc.stdout.readline():
            raise LabError(f"callpeer-rendezvous ({what}) did not start in the lab")
    return ours


def run_lab_call(
    config: LabConfig,
    workdir: Path,
    *,
    duration: float = 4.0,
    speech: bool = True,
    capture: bool = False,
    wait: float = 20.0,
    extra_args: list[str] | None = None,
    plot: Path | None = None,
    actions: list[tuple[float, Callable[[Lab], None]]] | None = None,
    inputs: dict[str, str] | None = None,
    timeline: bool = False,
    speech_text: str = "Hello Bob. This is Alice, calling you directly through two NAT routers.",
    alternate_address: bool = True,
    bob_after: float = 0.2,
    prepare: Callable[[Lab], None] | None = None,
    env: dict[str, str] | None = None,
    baseline: bool = True,
    tls: bool = False,
    relay: str = "ours",
    turn_secret: str | None = None,
    caller_args: dict[str, list[str]] | None = None,
    relay_args: list[str] | None = None,
    redis: str | None = None,
    servers: dict[str, str] | None = None,
) -> LabCallResult:
    """Build the lab, run one call through it, return what each side reported.

    Without `alternate_address` the rendezvous has no RFC 5780 address, so callers cannot learn
    their NAT's mapping at registration (to compare setup with and without it). `prepare` runs
    once the servers are up, before the callers start; bob calls `bob_after` s after alice;
    `env` is added to the callers' environment. With `baseline`, plain UDP echoes measure
    the direct path (alice to bob's router) and the relayed one (alice to the relay plus bob to
    the relay) first, so a call's figures can be held against this lab on this machine (not
    with `block_udp`: the echoes are UDP).

    With `tls`, the rendezvous and the relay listen on TLS too (TLS_PORT), with a self-signed
    certificate written to `tls_files(workdir)`. `relay` is what the relay node runs: "ours"
    (callpeer-rendezvous) or "coturn"; either way the rendezvous offers callers
    turn:RELAY_IP:3478 with REST credentials from `turn_secret` (random if None).
    `caller_args` adds arguments to one caller's command line, by name; `relay_args` to our
    relay's, whose output, once it is stopped after the call, is `relay_output`. With `redis`
    (a URL) the rendezvous keeps its names there; `servers` gives a caller, by name, another
    rendezvous than SERVER_IP:3478 (one `prepare` starts, say)."""
    if relay not in RELAYS:
        raise LabError(f"relay must be one of {', '.join(RELAYS)}, not {relay!r}")
    with Lab(config) as lab:
        nodes = {
            name: {
                "namespace": n.ns,
                "address": n.ip,
                "public": n.public_ip,
                "nat": n.nat,
                **({"address6": n.ip6} if n.ip6 else {}),
            }
            for name, n in lab.nodes.items()
        }
        result = LabCallResult(config, nodes, relay=relay, tls=tls)
        secret = turn_secret if turn_secret is not None else secrets.token_urlsafe(12)
        pair = tls_files(workdir) if tls else None
        if pair is not None:
            hosts = [SERVER_IP, RELAY_IP, *([SERVER_IP6, RELAY_IP6] if config.ipv6 else [])]
            self_signed(*pair, hosts)
        ours = _start_servers(
            lab,
            workdir,
            secret,
            relay=relay,
            tls=pair,
            alternate=alternate_address,
            relay_args=relay_args or [],
            redis=redis,
        )
        for side in ("a", "b"):
            if config.port_mapping_for(side):
                if not alternate_address:  # miniupnpd maps only after its RFC 5780 test
                    raise LabError("port mapping in the lab needs the rendezvous's alt address")
                lab.start_port_mapping(side, protocols=config.port_mapping_protocols)
        if baseline and not config.block_udp:
            legs = [("a", "b"), ("a", "relay"), ("b", "relay")]
            direct, to_relay_a, to_relay_b = lab.baseline(legs)
            result.baseline = {"direct": direct, "relay": to_relay_a + to_relay_b}
        if prepare is not None:
            prepare(lab)
        captures = {side: _start_capture(lab, side) for side in ("a", "b")} if capture else {}
        chosen = inputs or {}
        inputs = {name: chosen.get(name, f"tone:{TONES[name]:g}") for _, name, _ in CALLERS}
        if (
            speech
            and "alice" not in chosen
            and (wav := speech_wav(workdir / "speech.wav", speech_text))
        ):
            inputs["alice"] = str(wav)
        result.inputs = inputs
        procs = {}
        for side, me, peer in CALLERS:
            args = [
                sys.executable,
                "-m",
                "voip.cli",
                "--as",
                me,
                peer,
                "--server",
                (servers or {}).get(me, f"{SERVER_IP}:3478"),
                "--input",
                inputs[me],
                "--output",
                str(workdir / f"{me}.wav"),
                "--duration",
                str(duration),
                "--wait",
                str(wait),
                "--json",
                str(workdir / f"{me}.json"),
                *(extra_args or []),
                *(caller_args or {}).get(me, []),
                *(["--plot", str(plot)] if plot is not None and me == "alice" else []),
                *(["--timeline", str(workdir / f"{me}.timeline.json")] if timeline else []),
            ]
            # Each caller its own identity and known_peers, made on its first call, in the run's
            # directory: never the user's, and never shared between the two.
            home = {"XDG_CONFIG_HOME": str(workdir / f"{me}-config")}
            procs[me] = lab.start(
                side,
                args,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, **home, **(env or {})},
            )
            if me == "alice":
                time.sleep(bob_after)  # alice waits first, as a person would
        timers = [threading.Timer(delay, action, args=(lab,)) for delay, action in actions or []]
        for timer in timers:  # things that happen to the network during the call
            timer.start()
        for me, proc in procs.items():
            try:
                _, err = proc.communicate(timeout=duration + wait + 30)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            report_path = workdir / f"{me}.json"
            report = json.loads(report_path.read_text()) if report_path.exists() else None
            result.callers[me] = CallerResult(
                me, proc.returncode, err, report, workdir / f"{me}.wav"
            )
        for timer in timers:
            timer.cancel()
        for side in ("a", "b"):  # what the callers left mapped on their router, hung up
            if config.port_mapping_for(side):
                result.mappings_left[side] = lab.port_mappers[side].held()
        for side, cap in captures.items():
            if cap is not None:
                result.captures[side] = _stop_capture(cap)
        if ours is not None:  # stopped, it says what it relayed, in user space and the kernel
            stop(ours)
            result.relay_output = ours.stdout.read() if ours.stdout else ""
    return result
