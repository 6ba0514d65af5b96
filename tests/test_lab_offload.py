"""A relayed call in the lab with and without the relay's kernel fast path (--offload, issue
16): the same audio both ways and the same relayed round trip, and with it the relay's own
process relays almost none of the call (the kernel's counters carry it). Needs root and Linux
for the lab, and what --offload needs (BPF, tc); elsewhere these skip, saying so."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from rendezvous.offload import unavailable_reason
from tests.test_lab import FIVE_MS
from tests.test_lab import ended_well
from voip.codecs.pcm import dominant_frequency
from voip.lab.netns import lab_unavailable_reason
from voip.lab.scenario import LabCallResult
from voip.lab.scenario import run_lab_call
from voip.media.audio_io import read_wav

REASON = lab_unavailable_reason() or unavailable_reason()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""), pytest.mark.slow]
# Two relayed calls a few seconds apart on this machine: their medians agree this closely
# (the offload takes the relay process's scheduling out of the path; it adds none).
SAME_RTT_MS = 3.0


def counters(result: LabCallResult) -> dict[str, int]:
    """The relay's counters as it printed them when stopped (rendezvous/running.py)."""
    [line] = [x for x in result.relay_output.splitlines() if x.startswith("stopped; ")]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}


def test_a_relayed_call_is_the_same_through_the_kernel_and_skips_the_relay_process(
    tmp_path: Path,
) -> None:
    config = replace(FIVE_MS, delay_relay=20)
    results = {}
    for name, offload in (("user space", []), ("kernel", ["--offload"])):
        results[name] = run_lab_call(
            config,
            tmp_path / name.replace(" ", "-"),
            duration=4.0,
            speech=False,
            extra_args=["--relay", "force"],
            relay_args=["--workers=1", *offload],
        )
    rtt = {}
    for name, result in results.items():
        for caller, report in ended_well(result):
            assert report["path"] == "relay", report["verdict"]
            assert report["paths"]["relay"]["loss_pct"] == 0.0
            rtt[name, caller.name] = report["paths"]["relay"]["rtt_ms"]["median"]
        for me, hz in (("alice", 660), ("bob", 440)):  # each hears the other's tone
            pcm, _ = read_wav(result.callers[me].wav)
            assert dominant_frequency(pcm) == pytest.approx(hz, abs=3)
    for me in ("alice", "bob"):
        assert rtt["kernel", me] == pytest.approx(rtt["user space", me], abs=SAME_RTT_MS), rtt
    plain, kernel = counters(results["user space"]), counters(results["kernel"])
    assert plain["relayed_to_peer"] > 200 and "kernel_to_peer_packets" not in plain
    # With the offload, the relay process saw only what taught the route and what came before
    # it was learned (the checks); the kernel relayed the rest, both ways. Only one channel is
    # needed: the path is one caller's allocation, to the other's address.
    assert kernel["offload_added"] >= 1
    relayed = kernel["kernel_to_peer_packets"] + kernel["kernel_to_client_packets"]
    in_process = kernel.get("relayed_to_peer", 0) + kernel.get("relayed_to_client", 0)
    assert relayed > 300 and in_process < relayed / 10, kernel
