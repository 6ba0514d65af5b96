"""Two rendezvous servers sharing Redis in the lab (callpeer-rendezvous --redis, issue 17):
callers behind real NATs, registered with different servers, are introduced and connect
directly. Needs root and Linux for the lab, and Debian's redis-server; elsewhere these skip,
saying so."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_lab import FIVE_MS
from tests.test_lab import ended_well
from voip.codecs.pcm import dominant_frequency
from voip.lab.netns import lab_unavailable_reason
from voip.lab.redis_server import redis_unavailable_reason
from voip.lab.redis_server import start_redis
from voip.lab.scenario import run_lab_call
from voip.lab.topology import RELAY_IP
from voip.lab.topology import SERVER_ALT_IP
from voip.lab.topology import Lab
from voip.media.audio_io import read_wav

REASON = lab_unavailable_reason() or redis_unavailable_reason()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""), pytest.mark.slow]
SECRET = "lab-fleet-secret"


def counts(output: str) -> dict[str, int]:
    """A rendezvous's counters as it printed them when stopped (rendezvous/running.py)."""
    lines = [x for x in output.splitlines() if x.startswith("stopped; ")]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", lines[-1])} if lines else {}


def test_callers_on_two_servers_sharing_redis_connect_directly(tmp_path: Path) -> None:
    store = start_redis(tmp_path / "redis")
    second: list[subprocess.Popen[str]] = []

    def another_server(lab: Lab) -> None:
        # The server host's second address: another rendezvous, the same Redis and relay.
        command = [sys.executable, "-m", "rendezvous", "--listen", f"{SERVER_ALT_IP}:3478"]
        command += ["--workers=1", f"--redis={store.url}", f"--turn-url=turn:{RELAY_IP}:3478"]
        proc = lab.start("server", [*command, f"--turn-secret={SECRET}"], stdout=subprocess.PIPE)
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        second.append(proc)

    try:
        result = run_lab_call(
            FIVE_MS,
            tmp_path,
            duration=3.0,
            speech=False,
            alternate_address=False,  # its address is the second server's
            prepare=another_server,
            redis=store.url,
            turn_secret=SECRET,
            servers={"bob": f"{SERVER_ALT_IP}:3478"},
        )
    finally:
        store.stop()
    for caller, report in ended_well(result):
        assert report["path"] == "direct", (caller.name, report["verdict"])
        assert report["paths"]["relay"]["available"], caller.name  # the shared relay
    for me, hz in (("alice", 660), ("bob", 440)):  # each hears the other's tone
        pcm, _ = read_wav(result.callers[me].wav)
        assert dominant_frequency(pcm) == pytest.approx(hz, abs=3)
    [proc] = second
    out, _ = proc.communicate(timeout=10)
    # bob registered and was introduced at the second server, from the store's match.
    assert counts(out).get("register", 0) >= 1 and counts(out).get("matched", 0) == 1
