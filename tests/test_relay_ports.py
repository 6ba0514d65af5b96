"""Relayed ports from a configured range, drawn at random (coturn's --min-port/--max-port)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from rendezvous import cli
from rendezvous.relay_sockets import SocketRelayPorts


def test_relayed_ports_come_from_the_range_at_random_until_it_is_full() -> None:
    low = 40100

    async def scenario() -> tuple[list[tuple[str, int]], object]:
        ports = SocketRelayPorts("127.0.0.1", port_range=(low, low + 7))
        opened: list[tuple[str, int]] = []
        while (addr := ports.open()) is not None and len(opened) < 20:
            opened.append(addr)
        full = addr
        ports.close_all()
        return opened, full

    # Eight ports, each drawn again until free: nearly always all eight before RANGE_TRIES
    # draws in a row miss; never one outside the range, never one twice.
    opened, full = asyncio.run(scenario())
    ports = [port for _, port in opened]
    assert full is None and len(set(ports)) == len(ports) >= 6
    assert all(low <= port <= low + 7 for port in ports)


def test_a_port_someone_else_holds_is_skipped() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 40200))

        async def scenario() -> list[tuple[str, int]]:
            ports = SocketRelayPorts("127.0.0.1", port_range=(40200, 40201))
            got = [a for a in (ports.open(), ports.open()) if a is not None]
            ports.close_all()
            return got

        assert asyncio.run(scenario()) == [("127.0.0.1", 40201)]


@pytest.mark.parametrize(
    "given",
    [
        ["--min-port", "40000"],
        ["--min-port", "50000", "--max-port", "40000"],
        ["--min-port", "80", "--max-port", "90"],
    ],
)
def test_the_range_is_refused_unless_whole_and_in_order(
    given: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--listen", "127.0.0.1:0", "--store", ":memory:", *given]) == 2
    assert "--min-port" in capsys.readouterr().err
