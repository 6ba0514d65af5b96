"""Calls from a network that lets no UDP out: through the relay over TCP and over TLS, on our
relay and on coturn (issue 15).

Alice's router drops every UDP packet she sends (LabConfig.block_udp); bob's network is open.
Each call must connect through the relay, carry audio both ways, and say in alice's report
which transport reached the relay and what its round trip was. Building a lab needs root and
Linux; elsewhere these skip, saying so.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.test_report_schema import errors
from voip.codecs.pcm import dominant_frequency
from voip.lab.cli import heard
from voip.lab.netns import lab_unavailable_reason
from voip.lab.scenario import LabCallResult
from voip.lab.scenario import run_lab_call
from voip.lab.scenario import tls_caller_args
from voip.lab.topology import RELAY_IP
from voip.lab.topology import LabConfig
from voip.media.audio_io import read_wav

REASON = lab_unavailable_reason()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=REASON or ""), pytest.mark.slow]
needs_coturn = pytest.mark.skipif(
    shutil.which("turnserver") is None, reason="coturn is not installed (apt-get install coturn)"
)

SECRET = "lab-turn-secret"  # the relay's REST secret, which alice is given too for --turn
DELAY_A, DELAY_B, DELAY_RELAY = 5.0, 5.0, 20.0
# Alice -> relay -> bob and back crosses the relay's link twice (the lab's delay model).
TRUTH = DELAY_A + DELAY_B + 2 * DELAY_RELAY
# What a relayed round trip may add to the truth on this machine: two lab hops through the Python
# switch, the relay process twice, TCP or TLS framing, and a busy 2-core machine's scheduling.
SLACK_MS = 20.0


def alice_args(transport: str, relay: str, workdir: Path) -> list[str]:
    """Alice's options for a network without UDP. Over TCP she needs none with our relay: she
    falls back to TCP on her own when UDP gets no answer (the rendezvous, then the relay it
    offers), as a caller in a hotel would. Over TLS she is told where the TLS listeners are."""
    if transport == "tls":
        return tls_caller_args(workdir, SECRET)
    if relay == "coturn":
        return ["--turn", f"turn:{RELAY_IP}:3478?transport=tcp", f"--turn-secret={SECRET}"]
    return []


def lab_report(result: LabCallResult) -> dict[str, object]:
    """What `callpeer lab --json` would write for this call (voip/lab/cli.py run_lab)."""
    alice, bob = result.callers["alice"].report, result.callers["bob"].report
    assert alice is not None
    return {**alice, "lab": {**result.to_dict(), "heard": heard(result), "bob": bob}}


@pytest.mark.parametrize(
    ("relay", "transport"),
    [
        ("ours", "tcp"),
        ("ours", "tls"),
        pytest.param("coturn", "tcp", marks=needs_coturn),
        pytest.param("coturn", "tls", marks=needs_coturn),
    ],
)
def test_a_call_from_a_network_without_udp_goes_through_the_relay(
    tmp_path: Path, relay: str, transport: str
) -> None:
    config = LabConfig(block_udp=("a",), delay_a=DELAY_A, delay_b=DELAY_B, delay_relay=DELAY_RELAY)
    result = run_lab_call(
        config,
        tmp_path,
        duration=3.0,
        speech=False,
        wait=15,
        capture=True,
        tls=transport == "tls",
        relay=relay,
        turn_secret=SECRET,
        caller_args={"alice": alice_args(transport, relay, tmp_path)},
    )
    for caller in result.callers.values():
        assert caller.exit_code == 0, caller.stderr
        assert caller.report is not None, caller.stderr
        assert caller.report["path"] == "relay", caller.stderr
        assert caller.report["paths"]["direct"]["available"] is False
    alice = result.callers["alice"].report
    bob = result.callers["bob"].report
    assert alice is not None and bob is not None
    relayed = alice["paths"]["relay"]
    assert relayed["transport"] == transport, result.callers["alice"].stderr
    assert relayed["remote"].startswith(f"{RELAY_IP}:")
    assert bob["paths"]["relay"]["transport"] == "udp"  # bob's network is open
    if transport == "tcp" and relay == "ours":  # she found TCP herself, UDP being silent
        assert "over TCP (no answer over UDP" in result.callers["alice"].stderr
    # The round trip alice -> relay -> bob -> relay -> alice, measured, never under the truth,
    # and not far above it: TCP and TLS add framing and a copy each way, no round trips.
    rtt = relayed["rtt_ms"]
    assert rtt is not None and rtt["samples"] >= 2, relayed
    assert rtt["min"] >= TRUTH - 0.1, rtt
    assert rtt["median"] <= TRUTH + SLACK_MS, rtt
    print(
        f"{relay} relay over {transport}: setup {alice['setup_ms']:.0f} ms, "
        f"relay RTT median {rtt['median']:.1f} ms (min {rtt['min']:.1f}, truth {TRUTH:g})"
    )
    # Audio both ways: each side's recording holds the other's tone.
    for me, tone_hz, report in (("bob", 440, bob), ("alice", 660, alice)):
        pcm, _ = read_wav(result.callers[me].wav)
        assert dominant_frequency(pcm) == pytest.approx(tone_hz, abs=3)
        assert report["audio"]["frames_received"] >= 100, report["audio"]
    # Nothing alice sent left her network over UDP: her router's WAN side saw none of it.
    assert result.captures["a"] == {}, result.captures["a"]
    # The lab's own record of the call holds to the report contract, and says what it was.
    report = lab_report(result)
    assert errors(report) == []
    lab = report["lab"]
    assert isinstance(lab, dict)
    assert lab["block_udp"] == ["a"]
    assert (lab["relay_server"], lab["tls"]) == (relay, transport == "tls")
