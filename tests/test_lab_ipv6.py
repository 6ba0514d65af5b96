"""Calls in a lab with IPv6 (issue 15): every host a global address behind a stateful firewall,
no NAT, so punching works whatever the IPv4 NATs are, and the call goes direct over IPv6.

The packet capture's IPv6 parsing is checked without root; the calls need root and Linux
(network namespaces, nftables) and skip elsewhere, saying so. With IPv6 off the lab is what it
always was: tests/test_lab.py's NAT matrix holds that.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from tests.test_report_schema import errors
from voip.codecs.pcm import dominant_frequency
from voip.lab.capture import parse_udp
from voip.lab.cli import heard
from voip.lab.netns import lab_unavailable_reason
from voip.lab.scenario import run_lab_call
from voip.lab.topology import HOST_IP6
from voip.lab.topology import LabConfig
from voip.media.audio_io import read_wav

REASON = lab_unavailable_reason()
needs_lab = pytest.mark.skipif(REASON is not None, reason=REASON or "")

ETHERNET = bytes(6) + bytes(6)  # destination and source MACs: the capture ignores them


def udp6_frame(src: str, sport: int, dst: str, dport: int, payload: bytes, nxt: int = 17) -> bytes:
    """An Ethernet/IPv6/UDP frame, as a router's WAN side carries it."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    header = struct.pack("!IHBB", 6 << 28, len(udp), nxt, 64)
    addresses = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    return ETHERNET + struct.pack("!H", 0x86DD) + header + addresses + udp


def test_capture_reads_ipv6_udp_with_bracketed_addresses() -> None:
    rtp = bytes([0x80, 111]) + bytes(10) + b"opus"
    frame = udp6_frame(HOST_IP6["a"], 40000, HOST_IP6["b"], 50000, rtp)
    # Ethernet padding after the datagram is not payload.
    assert parse_udp(frame + bytes(6)) == (
        f"[{HOST_IP6['a']}]:40000",
        f"[{HOST_IP6['b']}]:50000",
        rtp,
    )
    # Not UDP (TCP, next header 6), truncated, or not IPv6 at all: not counted.
    assert parse_udp(udp6_frame(HOST_IP6["a"], 1, HOST_IP6["b"], 2, b"x", nxt=6)) is None
    assert parse_udp(frame[: 14 + 40 + 4]) is None
    assert parse_udp(ETHERNET + struct.pack("!H", 0x0806) + bytes(28)) is None  # ARP


# The controlling side nominates the lowest-RTT direct pair, an IPv6 one among pairs within 1.25x
# + 2 ms of the fastest (voip/nat/nominator.py). IPv6 host pairs are checked first (RFC 8421), so
# their single sample also carries both callers' start-up work on the introduction (the check is
# stamped with the introduction's arrival time; the peer answers once it has handled its own):
# 23 ms against 11 ms for the IPv4 pair checked 90 ms later, on a 10 ms path. So behind cone NATs,
# where the IPv4 pair works too, IPv4 wins; behind symmetric NATs it cannot, and IPv6 is used.


@needs_lab
@pytest.mark.slow
@pytest.mark.parametrize("nat", ["cone", "symmetric"])
def test_calls_go_direct_over_ipv6_whatever_the_ipv4_nats(tmp_path: Path, nat: str) -> None:
    config = LabConfig(nat_a=nat, nat_b=nat, delay_a=5, delay_b=5, ipv6=True)
    result = run_lab_call(config, tmp_path, duration=3.0, speech=False, wait=15, capture=True)
    for side, (me, peer_side) in {"a": ("alice", "b"), "b": ("bob", "a")}.items():
        caller = result.callers[me]
        assert caller.exit_code == 0, caller.stderr
        report = caller.report
        assert report is not None, caller.stderr
        direct = report["paths"]["direct"]
        assert report["path"] == "direct", caller.stderr
        assert direct["family"] == "ipv6", (side, direct)
        # No NAT: the peer's own address, as its host has it.
        assert direct["remote"].startswith(f"[{HOST_IP6[peer_side]}]:"), direct
        rtt = direct["rtt_ms"]
        assert rtt["min"] >= 10.0 - 0.1, rtt  # 5 ms each way in
        # Within a little of this lab's own (IPv4) echo between the hosts.
        assert rtt["median"] <= result.baseline["direct"].median + 6.0, rtt
        print(f"{nat}/{nat} over IPv6, {me}: setup {report['setup_ms']:.0f} ms, RTT {rtt}")
    # Outside the program: a's router forwarded the RTP to b's IPv6 address, from a's own.
    alice = result.callers["alice"].report
    assert alice is not None
    to_b = result.captures["a"][alice["paths"]["direct"]["remote"]]
    assert to_b["rtp"] >= 80, to_b
    [source] = to_b["from"]
    assert source.startswith(f"[{HOST_IP6['a']}]:")
    ipv4_rtp = {dst: c["rtp"] for dst, c in result.captures["a"].items() if "[" not in dst}
    assert sum(ipv4_rtp.values()) == 0, ipv4_rtp  # none of it went over IPv4
    for me, tone_hz in (("bob", 440), ("alice", 660)):
        pcm, _ = read_wav(result.callers[me].wav)
        assert dominant_frequency(pcm) == pytest.approx(tone_hz, abs=3)
    report = {
        **alice,
        "lab": {**result.to_dict(), "heard": heard(result), "bob": result.callers["bob"].report},
    }
    assert errors(report) == []
    assert report["lab"]["ipv6"] is True
    assert report["lab"]["nodes"]["a"]["address6"] == HOST_IP6["a"]
