"""A relay fleet end to end on loopback: a rendezvous offers two relays (--turn-url twice, one
secret: two of ours, or two coturn), one of them made slow by a UDP proxy that holds every
datagram; two callers forced onto the relay each measure both, allocate on the fast one, and
say so in the report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from tests.test_cli import BIN
from tests.test_cli import SILENT
from tests.test_cli import env
from tests.test_cli import start_rendezvous
from tests.test_interop_coturn import running_coturn
from tests.test_report_schema import errors
from voip.wire.candidates import format_address
from voip.wire.stun import Address

SECRET = "fleet-secret"
DELAY = 0.05  # s the proxy holds each datagram, each way: the slow relay is 100 ms further
FAST_PORTS = (62000, 62999)  # each relay's relayed ports, so a relayed address says whose it is
SLOW_PORTS = (63000, 63999)


class _Upstream(asyncio.DatagramProtocol):
    """The proxy's socket towards the relay for one source: answers go back to that source."""

    def __init__(self, proxy: DelayProxy, source: Address):
        self.proxy, self.source = proxy, source

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.proxy.later(self.proxy.listener, data, self.source)


class DelayProxy(asyncio.DatagramProtocol):
    """A UDP forwarder in front of `target` that delays every datagram by `delay`, both ways,
    for any source (callers and the rendezvous's own probes): each source gets its own socket
    towards the target, so the relay sees one 5-tuple per source, as without the proxy."""

    def __init__(self, target: Address, delay: float):
        self.target, self.delay = target, delay
        self.upstream: dict[Address, asyncio.DatagramTransport] = {}
        self.listener: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.listener = cast(asyncio.DatagramTransport, transport)  # a UDP endpoint's

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        source = (str(addr[0]), int(addr[1]))
        if source not in self.upstream:
            asyncio.get_running_loop().create_task(self._open(source, data))
        else:
            self.later(self.upstream[source], data, None)

    async def _open(self, source: Address, first: bytes) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Upstream(self, source), remote_addr=self.target
        )
        if source in self.upstream:  # two datagrams raced to open it: keep the first socket
            transport.close()
        else:
            self.upstream[source] = transport
        self.later(self.upstream[source], first, None)

    async def close(self) -> None:
        for transport in [self.listener, *self.upstream.values()]:
            if transport is not None:
                transport.close()
        await asyncio.sleep(0.05)  # their sockets close on the loop's next turns

    def later(self, via: asyncio.DatagramTransport | None, data: bytes, to: Address | None) -> None:
        if via is not None:
            asyncio.get_running_loop().call_later(self.delay, via.sendto, data, to)


@contextlib.contextmanager
def delay_proxy(target: Address, delay: float) -> Iterator[Address]:
    """A `DelayProxy` running in its own thread and loop: its address."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    proxy = DelayProxy(target, delay)

    async def start() -> Address:
        transport, _ = await loop.create_datagram_endpoint(
            lambda: proxy, local_addr=("127.0.0.1", 0)
        )
        host, port = transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    try:
        yield asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    finally:
        asyncio.run_coroutine_threadsafe(proxy.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@contextlib.contextmanager
def rendezvous(tmp_path: Path, *args: str) -> Iterator[Address]:
    """A callpeer-rendezvous on loopback with `args`: its UDP address."""
    proc, address = start_rendezvous(tmp_path, "--store=:memory:", *args)
    try:
        host, port = address.rsplit(":", 1)
        yield host, int(port)
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def relay(tmp_path: Path, ports: tuple[int, int]) -> contextlib.AbstractContextManager[Address]:
    return rendezvous(
        tmp_path,
        "--relay-address=127.0.0.1",
        "--allow-loopback-peers",
        f"--turn-secret={SECRET}",
        "--workers=1",
        f"--min-port={ports[0]}",
        f"--max-port={ports[1]}",
    )


@contextlib.contextmanager
def coturn(tmp_path: Path, ports: tuple[int, int]) -> Iterator[Address]:
    """coturn (Debian's turnserver) with the fleet's secret, relaying from `ports`."""
    with running_coturn(tmp_path, secret=SECRET, relay_ports=ports, tag=f"coturn{ports[0]}") as (
        host,
        port,
        _,
    ):
        yield host, port


RELAYS = {"ours": relay, "coturn": coturn}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(RELAYS))
def test_callers_offered_two_relays_allocate_on_the_nearer(tmp_path: Path, kind: str) -> None:
    if kind == "coturn" and shutil.which("turnserver") is None:
        pytest.skip("coturn is not installed (apt-get install coturn)")
    fleet = RELAYS[kind]
    with (
        fleet(tmp_path, FAST_PORTS) as fast,
        fleet(tmp_path, SLOW_PORTS) as slow_relay,
        delay_proxy(slow_relay, DELAY) as slow,
        # The slow one first: falling back to the first offered would land there.
        rendezvous(
            tmp_path,
            "--no-relay",
            f"--turn-url=turn:{format_address(slow)}",
            f"--turn-url=turn:{format_address(fast)}",
            f"--turn-secret={SECRET}",
        ) as server,
    ):
        procs = {
            me: subprocess.Popen(
                [
                    str(BIN / "callpeer"),
                    *("--as", me, peer, "--server", format_address(server)),
                    *("--relay", "force", *SILENT, "--duration", "2", "--json", f"{me}.json"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env(tmp_path),
                cwd=tmp_path,
            )
            for me, peer in (("alice", "bob"), ("bob", "alice"))
        }
        outputs = {me: proc.communicate(timeout=90) for me, proc in procs.items()}
    for me, proc in procs.items():
        err = outputs[me][1]
        assert proc.returncode == 0, err
        assert f"nearest relay: {format_address(fast)} (" in err, err
        assert f"on TURN server {format_address(fast)}" in err, err  # allocated there
        report = json.loads((tmp_path / f"{me}.json").read_text())
        assert errors(report) == []
        path = report["paths"]["relay"]
        assert report["path"] == "relay" and path["available"], report["verdict"]
        # Sent to our allocation's relay, or to the peer's relayed address on it: the fast one.
        port = int(path["remote"].rsplit(":", 1)[1])
        assert path["remote"] == format_address(fast) or FAST_PORTS[0] <= port <= FAST_PORTS[1]
        # Both relays, in the order offered, each with its round trip; the fast one chosen.
        [to_slow, to_fast] = path["choice"]
        assert (to_slow["server"], to_fast["server"]) == (
            format_address(slow),
            format_address(fast),
        )
        assert to_fast["chosen"] and not to_slow["chosen"]
        # Every datagram to the slow one waited DELAY each way: a floor no machine beats.
        assert to_slow["rtt_ms"] >= 2 * DELAY * 1000 * 0.95
        assert to_fast["rtt_ms"] < to_slow["rtt_ms"]
