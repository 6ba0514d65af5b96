"""Running the lab's baseline echoes (voip.lab.echo) in its namespaces: every leg at once."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence

from voip.lab.echo import EchoRtt
from voip.lab.netns import LabError
from voip.lab.netns import popen


def echo_rtts(
    sources: Sequence[str], targets: Sequence[tuple[str, str]], probe_args: Sequence[str]
) -> list[EchoRtt]:
    """The round trips of plain UDP echoes, all at once: from each namespace of `sources` to
    the address of its target (namespace, address), where an echo server answers (one per
    target). `probe_args` go to `python -m voip.lab.echo probe`; all is stopped on return."""
    procs: list[subprocess.Popen[str]] = []
    try:
        for ns, ip in dict.fromkeys(targets):  # one server per answering node
            server = popen(_echo("serve", ip), ns=ns, stdout=subprocess.PIPE)
            procs.append(server)
            assert server.stdout is not None
            if server.stdout.readline().strip() != "ready":
                raise LabError(f"the lab's baseline echo on {ip} did not start")
        probes = [
            popen(_echo("probe", ip, *probe_args), ns=src, stdout=subprocess.PIPE)
            for src, (_, ip) in zip(sources, targets, strict=True)
        ]
        procs += probes
        results = []
        for (_, ip), proc in zip(targets, probes, strict=True):
            out, _ = proc.communicate(timeout=120)
            data = json.loads(out or "{}")
            if not data.get("samples"):
                raise LabError(f"the lab's baseline echo to {ip} never answered")
            results.append(EchoRtt(tuple(data["samples"]), data["lost"]))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _echo(*args: str) -> list[str]:
    return [sys.executable, "-m", "voip.lab.echo", *args]
