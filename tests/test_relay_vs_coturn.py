"""A smoke of bench/relay_vs_coturn.py's parts that need no server: the load generator built and
run between two local sockets, and the table made from results. No timing is asserted."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import relay_vs_coturn as bench

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
        mine = bench.socket_inodes([os.getpid()])
        assert os.fstat(s.fileno()).st_ino in mine & set(drops)
