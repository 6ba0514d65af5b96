"""Running iproute2, nftables and programs inside network namespaces (needs root on Linux)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

REQUIRED_TOOLS = ("ip", "nft", "ethtool")


class LabError(RuntimeError):
    """The lab cannot be built or run here; the message says why."""


def lab_unavailable_reason() -> str | None:
    """Why the lab cannot run on this machine, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "the lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, veth, nftables): run it with sudo"
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        return f"the lab needs {', '.join(missing)} (apt-get install iproute2 nftables ethtool)"
    return None


def run(
    args: Sequence[str], *, ns: str | None = None, input_text: str | None = None, check: bool = True
) -> str:
    """Run a command (in namespace `ns`), returning stdout; LabError with its stderr on failure."""
    cmd = [*(["ip", "netns", "exec", ns] if ns else []), *args]
    proc = subprocess.run(cmd, input=input_text, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def popen(args: Sequence[str], *, ns: str, **kwargs: object) -> subprocess.Popen[str]:
    """Start a program inside namespace `ns`."""
    return subprocess.Popen(["ip", "netns", "exec", ns, *args], text=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def list_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def stop(proc: subprocess.Popen[str], grace: float = 3.0) -> None:
    """Terminate a process we started, and kill it if it is not gone within `grace` s."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
