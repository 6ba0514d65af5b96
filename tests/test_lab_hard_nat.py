"""Direct through NATs that map per destination, in the lab: birthday punching, port prediction.

Real nftables NAT routers (voip/lab/nat.py): `symmetric` gives every new mapping a random port
(`masquerade fully-random`), `symmetric-sequential` the next one. A capture on each router's
WAN shows where the RTP really went. The lab tests need root and Linux; elsewhere they skip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from voip.lab.nat import NAT_KINDS
from voip.lab.netns import lab_unavailable_reason
from voip.lab.scenario import LabCallResult
from voip.lab.scenario import run_lab_call
from voip.lab.topology import RELAY_IP
from voip.lab.topology import SERVER_ALT_IP
from voip.lab.topology import SERVER_IP
from voip.lab.topology import WAN_IPS
from voip.lab.topology import LabConfig
from voip.nat.birthday import MAX_PROBES
from voip.nat.birthday import PROBE_BATCH
from voip.nat.birthday import SOCKETS

REASON = lab_unavailable_reason()
needs_lab = pytest.mark.skipif(REASON is not None, reason=REASON or "")
SEQUENTIAL = "symmetric-sequential"
needs_sequential = pytest.mark.skipif(
    SEQUENTIAL not in NAT_KINDS, reason="the lab has no symmetric-sequential router"
)
FRAME_MS = 20


def lab_call(nat_a: str, nat_b: str, tmp_path: Path) -> tuple[LabCallResult, dict[str, Any]]:
    config = LabConfig(nat_a=nat_a, nat_b=nat_b, delay_a=5, delay_b=5, delay_relay=40)
    result = run_lab_call(config, tmp_path, duration=4, speech=False, capture=True)
    reports = {}
    for side, name in (("a", "alice"), ("b", "bob")):
        caller = result.callers[name]
        assert caller.exit_code == 0 and caller.report is not None, caller.stderr
        assert caller.report["path"] == "direct", caller.report
        reports[side] = caller.report
    return result, reports


def rtp_to(result: LabCallResult, side: str) -> dict[str, int]:
    """RTP packets that left `side`'s router, by destination IP."""
    out: dict[str, int] = {}
    for dst, counts in result.captures[side].items():
        if counts["rtp"]:
            ip = dst.split(":")[0]
            out[ip] = out.get(ip, 0) + counts["rtp"]
    return out


def assert_audio_went_direct(result: LabCallResult, reports: dict[str, Any]) -> None:
    """Most RTP left each router for the other's public address; to the relay went at most what
    the time before the direct path allows (the audio may begin on the relay and move)."""
    for side, other in (("a", "b"), ("b", "a")):
        sent = rtp_to(result, side)
        report = reports[side]
        on_relay = (report["direct_ms"] - report["setup_ms"]) / FRAME_MS
        assert sent.get(WAN_IPS[other], 0) >= 100, sent
        assert sent.get(RELAY_IP, 0) <= on_relay + 25, (sent, report)
        assert set(sent) <= {WAN_IPS[other], RELAY_IP}, sent


@needs_lab
@pytest.mark.parametrize("easy", ["a", "b"])
def test_cone_against_symmetric_goes_direct_by_birthday_punching(easy: str, tmp_path: Path) -> None:
    hard = "b" if easy == "a" else "a"
    kinds = {easy: "cone", hard: "symmetric"}
    result, reports = lab_call(kinds["a"], kinds["b"], tmp_path)
    found_easy = reports[easy]["paths"]["direct"]["found_by"]
    found_hard = reports[hard]["paths"]["direct"]["found_by"]
    assert found_easy.startswith("birthday, ") and found_easy.endswith(" s"), found_easy
    assert 0 < int(found_easy.split(", ")[1].split()[0]) <= MAX_PROBES
    assert found_hard.startswith(f"birthday, {SOCKETS} ports opened, "), found_hard
    # Within 3 s of meeting, as the audio went on meanwhile.
    assert reports[easy]["direct_ms"] < 3000 and reports[hard]["direct_ms"] < 3000, reports
    assert_audio_went_direct(result, reports)
    # The hard side's audio left from the port its extra socket opened, the one the easy
    # side reached (and not the one the rendezvous saw).
    remote = reports[easy]["paths"]["direct"]["remote"]
    sources = {src for c in result.captures[hard].values() if c["rtp"] for src in c["from"]}
    assert remote in sources and reports[hard]["local_public"] != remote, (remote, sources)
    # The easy side's probes went only to the IP the rendezvous gave for the hard side: its
    # router's WAN sent nothing but to it, the rendezvous (both addresses), the relay and the
    # hard side's LAN address (a host candidate, which the internet drops).
    sent_to = {dst.split(":")[0] for dst in result.captures[easy]}
    allowed = {WAN_IPS[hard], SERVER_IP, SERVER_ALT_IP, RELAY_IP, result.nodes[hard]["address"]}
    assert sent_to <= allowed, sent_to
    to_hard = [dst for dst in result.captures[easy] if dst.startswith(WAN_IPS[hard] + ":")]
    assert len(to_hard) >= PROBE_BATCH  # ports probed, besides the candidates given


@needs_lab
@needs_sequential
@pytest.mark.parametrize("other", ["cone", SEQUENTIAL])
def test_a_nat_that_maps_in_sequence_goes_direct_at_a_predicted_port(
    other: str, tmp_path: Path
) -> None:
    result, reports = lab_call(SEQUENTIAL, other, tmp_path)
    assert reports["b"]["paths"]["direct"]["found_by"] == "the peer's predicted port"
    expected = "our predicted port" if other == "cone" else "the peer's predicted port"
    assert reports["a"]["paths"]["direct"]["found_by"] == expected
    assert any(c.startswith("predicted ") for c in reports["b"]["candidates_tried"])
    assert reports["a"]["direct_ms"] < 3000, reports["a"]
    assert_audio_went_direct(result, reports)
