"""A smoke of bench/relay_vs_coturn.py's parts that need no server: the load generator built and
run between two local sockets, and the table made from results. No timing is asserted."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import relay_vs_coturn as bench
from voip.lab import bench_netns
from voip.lab.turn_sockets import socket_inodes

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the bench reads /proc")


def test_cpu_list_and_median() -> None:
    assert bench.cpu_list("0") == {0}
    assert bench.cpu_list("0,2-3") == {0, 2, 3}
    assert bench.median([3.0, None, 1.0, 2.0]) == 2.0
    assert bench.median([None]) is None


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc to build bench/udp_load.c")
def test_load_generator_counts_what_arrives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    binary = bench.load_binary()
    assert binary.is_relative_to(tmp_path)
    assert bench.load_binary() == binary  # built once
    receiver = bench.udp_socket(1 << 20)
    sender = bench.udp_socket()
    with receiver, sender:
        sender.connect(receiver.getsockname())
        datagram = bench.payload_template()
        load = bench.run_load(
            binary,
            [(sender, datagram)],
            [receiver],
            rate=2000,
            duration=0.2,
            sequenced=0,
            received_sequenced=0,
        )
    assert load.sent > 0
    assert load.unique == load.received == load.sent  # each sequence number once, none lost
    assert load.duplicates == load.other == 0
    assert load.loss_pct == 0.0


def test_table_gives_medians_and_ratios() -> None:
    def result(peak: int, binding: int) -> dict[str, Any]:
        return {
            "channeldata": {"peak": {"1": {"delivered_pps": peak}}, "steps": []},
            "binding": {"delivered_pps": binding},
        }

    rounds = {
        "ours": [result(100, 10), result(300, 30), result(200, 20)],
        "coturn": [result(400, 40), result(400, 40), result(400, 40)],
    }
    text, figures = bench.table(rounds)
    peak = figures["ChannelData relayed, peak packets/s, 1 allocation"]
    assert peak == {"ours": 200, "coturn": 400, "ratio": 0.5}
    assert figures["STUN Binding answered, requests/s"]["ratio"] == 0.5
    assert "| ChannelData relayed, peak packets/s, 1 allocation | 200 | 400 | 0.50 |" in text


def test_uclient_output_is_read() -> None:
    line = "51: : Total lost packets 3 (0.005000%), total send dropped 0 (0.000000%)"
    found = bench.UCLIENT_LOSS.search(line)
    assert found is not None and found.group(1) == "3" and float(found.group(2)) == 0.005
    totals = bench.UCLIENT_SENT.search(
        "51: : start_mclient: tot_send_msgs=60000, tot_recv_msgs=59997"
    )
    assert totals is not None and totals.groups() == ("60000", "59997")


def test_sockets_have_inodes_for_drop_counts() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        drops = bench.udp_drops()
        mine = socket_inodes([os.getpid()])
        assert os.fstat(s.fileno()).st_ino in mine & set(drops)


def test_netns_options_and_defaults() -> None:
    plain = bench.parse_args([])
    assert plain.netns is False and plain.server_names == ["ours", "coturn"]
    netns = bench.parse_args(["--netns", "--rounds", "1"])
    assert netns.netns is True and netns.server_names == ["ours", "offload", "coturn"]
    assert netns.link is None  # made by main(), as root, not by parsing
    chosen = bench.parse_args(["--netns", "--servers", "offload,coturn"])
    assert chosen.server_names == ["offload", "coturn"]
    for wrong in (
        ["--servers", "ours,nginx"],
        ["--servers", "ours,ours"],
        ["--netns", "--server-cpus", "0", "--load-cpus", "0-1"],
    ):
        with pytest.raises(SystemExit):
            bench.parse_args(wrong)


def test_commands_in_the_benchmarking_range() -> None:
    ours = bench.ours_command(3478, ["--workers=1", "--offload"], "198.18.0.2")
    assert "198.18.0.2:3478" in ours and "--allow-peer=198.18.0.0/15" in ours
    assert "--allow-loopback-peers" not in ours and "-q" not in ours
    assert "--allow-loopback-peers" in bench.ours_command(3478, [])
    coturn = bench.coturn_command(3478, Path("/tmp"), [], "198.18.0.2")
    assert "--relay-ip=198.18.0.2" in coturn
    assert "--allowed-peer-ip=198.18.0.0-198.19.255.255" in coturn
    assert not any(a.startswith("--allowed-peer-ip") for a in bench.coturn_command(1, Path(), []))


def test_cpu_masks_and_softirq_counts() -> None:
    assert bench_netns.cpu_mask({0}) == "1"
    assert bench_netns.cpu_mask({1}) == "2"
    assert bench_netns.cpu_mask({0, 2, 3}) == "d"
    assert bench_netns.cpu_mask({32}) == "1,00000000"
    with pytest.raises(ValueError, match="no CPU mask"):
        bench_netns.cpu_mask(set())
    softirqs = "       CPU0  CPU1\n  TIMER:  5  6\n NET_RX:  100  2345\n"
    assert bench_netns.net_rx_per_cpu(softirqs) == {0: 100, 1: 2345}
    assert set(bench_netns.net_rx_per_cpu()) >= {0}  # this machine's, read


def test_table_with_the_offload_column() -> None:
    def result(peak: int) -> dict[str, Any]:
        return {"channeldata": {"peak": {"1": {"delivered_pps": peak}}, "steps": []}}

    rounds = {
        "ours": [result(50)],
        "offload": [result(300)],
        "coturn": [result(100)],
    }
    text, figures = bench.table(rounds)
    peak = figures["ChannelData relayed, peak packets/s, 1 allocation"]
    assert peak == {
        "ours": 50,
        "offload": 300,
        "coturn": 100,
        "ratio": 0.5,
        "offload_ratio": 3.0,
    }
    head, rule, row = text.splitlines()
    assert head.count("|") == rule.count("|") == row.count("|") == 7
    assert "| 50 | 300 | 100 | 0.50 | 3.00 |" in row


def test_runs_give_the_server_cores_own_time() -> None:
    load = bench.Load(20_000, 1.0, 0, 20_000, 20_000, 0, 0, 10_000, 0.5, 0)
    tick = bench.TICK
    before = {"total": 0, "busy": 0, "softirq": 0, "steal": 0, "tasks": 0, "idle": 0}
    # Two seconds of one core: idle for half (measured), and at the ticks a tenth of a second
    # stolen (left in: it overlaps idle here) and two tenths in another process; the server's
    # process had 0.3 s. Softirq that no tick saw still shows: as time missing from idle.
    after = {
        "total": 2 * tick,
        "busy": tick // 2,
        "softirq": 0,
        "steal": tick // 10,
        "tasks": tick // 2,
        "idle": tick,
    }
    assert bench.busy_seconds(before, after, 2.0, 1) == pytest.approx(1.0)
    own = bench.own_core_seconds(before, after, 2.0, 1, 0.3)
    assert own == pytest.approx(1.0 - 0.2, abs=2 / tick)
    run = bench.Run(load, 0.3, 2.0, 0, 0, 0, {}, core_busy_s=1.0, core_own_s=own)
    summary = run.summary()
    assert summary["server_core_busy_pct"] == 50.0
    assert summary["server_core_ms_per_10k"] == 500.0
    assert summary["per_server_core_second"] == round(20_000 / own)
    assert bench.stopped_counters(["x", "stopped; kernel_to_peer_packets=7, relayed=2"]) == {
        "kernel_to_peer_packets": 7,
        "relayed": 2,
    }


CGROUP_REASON = (
    "not root"
    if os.geteuid() != 0
    else None
    if bench.CGROUP_CPU.is_dir()
    else f"no cgroup v1 cpu controller at {bench.CGROUP_CPU}"
)


@pytest.mark.skipif(CGROUP_REASON is not None, reason=CGROUP_REASON or "")
def test_a_cpu_quota_puts_each_process_in_a_capped_group_of_its_own() -> None:
    """--cpu-quota: the quota as written, the process inside, and the group gone after it."""
    child = subprocess.Popen(["sleep", "30"])
    groups: list[Path] = []
    try:
        groups = bench.cap_cpu([child.pid], 40)
        [group] = groups
        assert (group / "cpu.cfs_quota_us").read_text().strip() == "4000"
        assert (group / "cpu.cfs_period_us").read_text().strip() == "10000"
        assert (group / "cgroup.procs").read_text().split() == [str(child.pid)]
    finally:
        child.kill()
        child.wait()
        bench.remove_cgroups(groups)
    assert groups and not groups[0].exists()
