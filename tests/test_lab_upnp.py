"""UPnP IGD in the lab: miniupnpd on a NAT router with UPnP IGD on (NAT-PMP and PCP off), asked
by a LAN host through voip.nat.upnp_client.map_port, and a datagram from the internet sent to
the address it returns.

The lab tests need root, Linux and Debian's miniupnpd-nftables; elsewhere they skip, saying so.
The timings map_port took are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.test_lab_port_mapping import SEND
from tests.test_lab_port_mapping import ask
from tests.test_lab_port_mapping import start_rendezvous
from voip.lab.netns import LabError
from voip.lab.netns import lab_unavailable_reason
from voip.lab.netns import run
from voip.lab.port_mapping import PREROUTING_CHAIN
from voip.lab.port_mapping import TABLE
from voip.lab.port_mapping import UPNP_HTTP_PORT
from voip.lab.port_mapping import miniupnpd_config
from voip.lab.port_mapping import miniupnpd_unavailable_reason
from voip.lab.port_mapping import protocol_switches
from voip.lab.topology import SERVER_IP
from voip.lab.topology import Lab
from voip.lab.topology import LabConfig
from voip.nat.upnp_client import DISCOVERY_WAIT

REASON = lab_unavailable_reason() or miniupnpd_unavailable_reason()
needs_lab = pytest.mark.skipif(REASON is not None, reason=REASON or "")

LIFETIME = 3600  # s asked for every mapping

# On a LAN host: a UDP socket (on the port given, or any), discovery alone (as map_port does
# it, then by multicast only and by unicast only) and then map_port for it, all timed, printed
# as one JSON line; then one JSON line for each command read from
# stdin: "recv S TEXT" (the first datagram that says TEXT within S s, or null: copies of
# earlier ones are passed over), "renew", "delete", "quit".
MAPPER = """
import asyncio, json, socket, sys, time
from voip.host_addresses import gateway_for_port_mapping
from voip.nat.upnp_client import Discovery, UpnpError, discover, map_port

def say(**what):
    print(json.dumps(what), flush=True)

async def timed(coroutine):
    start = time.perf_counter()
    try:
        result = await coroutine
    except UpnpError as error:
        return None, {"error": str(error), "ms": (time.perf_counter() - start) * 1000}
    return result, {"ms": (time.perf_counter() - start) * 1000}

async def main():
    loop = asyncio.get_running_loop()
    gateway, own = gateway_for_port_mapping()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((own, int(sys.argv[2])))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    _, discovery = await timed(discover(gateway, own))
    _, multicast = await timed(discover(gateway, own, Discovery(unicast=False)))
    _, unicast = await timed(discover(gateway, own, Discovery(multicast=False)))
    mapping, mapped = await timed(map_port(gateway, own, port, int(sys.argv[1])))
    found = dict(gateway=gateway, port=port, discovery=discovery, multicast=multicast,
                 unicast=unicast, map=mapped)
    if mapping is None:
        say(**found)
        return
    say(**found, public=mapping.public, lifetime=mapping.lifetime, service=mapping.description)
    while command := (await loop.run_in_executor(None, sys.stdin.readline)).split():
        if command[0] == "recv":
            deadline = loop.time() + float(command[1])
            try:
                while True:
                    data, source = await asyncio.wait_for(
                        loop.sock_recvfrom(sock, 2000), deadline - loop.time())
                    if data.decode() == command[2]:
                        say(data=data.decode(), source=list(source))
                        break
            except TimeoutError:
                say(data=None)
        elif command[0] in ("renew", "delete"):
            _, took = await timed(getattr(mapping, command[0])())
            say(**took)
        else:
            return

asyncio.run(main())
"""


class Mapper:
    """MAPPER running on a lab host."""

    def __init__(self, lab: Lab, node: str, port: int = 0):
        self.lab, self.node = lab, node
        self.sent = 0
        args = [sys.executable, "-c", MAPPER, str(LIFETIME), str(port)]
        self.proc = lab.start(node, args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.result = self.read()
        print(f"\n{node}: {json.dumps(self.result)}")

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the mapper on {self.node} stopped"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def command(self, text: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.read()

    @property
    def public(self) -> tuple[str, int]:
        ip, port = self.result["public"]
        return str(ip), int(port)

    def receives(self, sender: str = "server") -> dict[str, Any]:
        """What the mapped socket gets when `sender` sends to the public address."""
        ip, port = self.public
        self.sent += 1
        payload = f"{self.sent}-to-{ip}:{port}"
        self.lab.run(sender, [sys.executable, "-c", SEND, ip, str(port), payload])
        return self.command(f"recv 1.5 {payload}")

    def quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(5)


def mapping_rules(lab: Lab) -> str:
    router = lab.nodes["a"].router_ns
    assert router is not None
    return run(["nft", "list", "chain", "inet", TABLE, PREROUTING_CHAIN], ns=router)


# -- without the lab -----------------------------------------------------------------------


def test_miniupnpd_serves_upnp_igd_when_asked_and_only_then() -> None:
    default = miniupnpd_config(lan_net="198.18.1.0/24", stun=(SERVER_IP, 3478)).splitlines()
    assert "enable_upnp=no" in default and "enable_natpmp=yes" in default
    assert not any(line.startswith(("http_port=", "force_igd")) for line in default)
    config = miniupnpd_config(
        lan_net="198.18.1.0/24", stun=(SERVER_IP, 3478), natpmp=False, upnp=True
    ).splitlines()
    for line in ("enable_upnp=yes", "enable_natpmp=no", f"http_port={UPNP_HTTP_PORT}"):
        assert line in config
    assert "listening_ip=lan" in config and "secure_mode=yes" in config
    assert config[-2:] == default[-2:]  # the same LAN-only permissions
    v1 = miniupnpd_config(lan_net="198.18.1.0/24", stun=(SERVER_IP, 3478), upnp=True, igd_v1=True)
    assert "force_igd_desc_v1=yes" in v1.splitlines()


def test_lab_port_mapping_protocols() -> None:
    assert protocol_switches(("nat-pmp", "pcp")) == (True, False)
    assert protocol_switches(["upnp"]) == (False, True)
    assert protocol_switches({"upnp", "pcp", "nat-pmp"}) == (True, True)
    for wrong, message in ((["pcp"], "together"), ([], "no protocol"), (["igd"], "not among")):
        with pytest.raises(LabError, match=message):
            protocol_switches(wrong)


# -- in the lab ----------------------------------------------------------------------------


@needs_lab
@pytest.mark.slow
@pytest.mark.parametrize(("kind", "igd_v1"), [("cone", False), ("symmetric", True)])
def test_a_lan_host_maps_a_port_by_upnp_and_deletes_it(kind: str, igd_v1: bool) -> None:
    with Lab(LabConfig(nat_a=kind, port_mapping_a=True)) as lab:
        start_rendezvous(lab)
        router = lab.start_port_mapping("a", protocols=("upnp",), igd_v1=igd_v1)
        host, wan = lab.nodes["a"].ip, lab.nodes["a"].public_ip
        mapper = Mapper(lab, "a")
        result = mapper.result
        assert "public" in result, f"{result}\nminiupnpd's log:\n{router.log_tail()}"
        port = result["port"]
        assert result["gateway"] == router.gateway
        assert mapper.public == (wan, port)  # its own port first, and that was free
        assert result["lifetime"] == LIFETIME
        assert result["service"] == f"UPnP IGD (WANIPConnection:{1 if igd_v1 else 2})"
        assert f"dport {port} dnat ip to {host}:{port}" in mapping_rules(lab)
        for step in ("discovery", "multicast", "unicast", "map"):
            assert "error" not in result[step] and result[step]["ms"] < 1000, result

        got = mapper.receives()
        assert got["data"] == f"1-to-{wan}:{port}", got
        assert got["source"][0] == SERVER_IP  # through the mapping, the sender kept
        renewed = mapper.command("renew")
        assert "error" not in renewed, renewed
        assert mapper.receives()["data"] is not None  # still there

        deleted = mapper.command("delete")
        assert "error" not in deleted, deleted
        print(f"renew {renewed['ms']:.1f} ms, delete {deleted['ms']:.1f} ms")
        assert f"dport {port} " not in mapping_rules(lab)
        assert mapper.receives()["data"] is None  # a new flow no longer gets in
        assert "error" not in mapper.command("delete")  # gone already: nothing to complain of
        mapper.quit()

        # NAT-PMP and PCP are off on this router: no answer on port 5351.
        with pytest.raises(AssertionError, match="never answered"):
            ask(lab, router, "NAT-PMP external address (off)", b"\x00\x00")


@needs_lab
@pytest.mark.slow
@pytest.mark.parametrize("igd_v1", [False, True])
def test_a_port_mapped_to_another_host_is_not_taken(igd_v1: bool) -> None:
    """b, on a's LAN, holds the external port a would ask for first (its own): the router
    answers 718, and a gets another port (IGD:2's AddAnyPortMapping, or a random one on an
    IGD:1), which does reach a, while b's still reaches b."""
    with Lab(LabConfig(nat_a="cone", same_nat=True, port_mapping_a=True)) as lab:
        start_rendezvous(lab)
        router = lab.start_port_mapping("a", protocols=("upnp",), igd_v1=igd_v1)
        first = Mapper(lab, "b", 41000)
        assert first.public[1] == 41000, f"{first.result}\n{router.log_tail()}"
        second = Mapper(lab, "a", 41000)
        assert "public" in second.result, f"{second.result}\n{router.log_tail()}"
        assert second.public[1] != 41000
        assert "718" in router.log_text()  # ConflictInMappingEntry, then another port
        assert second.receives()["data"] is not None
        assert first.receives()["data"] is not None
        for mapper in (first, second):
            assert "error" not in mapper.command("delete")
            mapper.quit()


@needs_lab
@pytest.mark.slow
def test_a_router_without_upnp_says_so_in_half_a_second_and_maps_as_before() -> None:
    """The default lab router serves NAT-PMP and PCP only: map_port gives up after discovery
    with a reason, and NAT-PMP answers as it always did."""
    with Lab(LabConfig(nat_a="cone", port_mapping_a=True)) as lab:
        start_rendezvous(lab)
        router = lab.start_port_mapping("a")
        assert (router.natpmp, router.upnp) == (True, False)
        mapper = Mapper(lab, "a")
        for step in ("discovery", "multicast", "unicast", "map"):
            failed = mapper.result[step]
            assert "no UPnP internet gateway answered at 198.18.1.1" in failed["error"], failed
            assert DISCOVERY_WAIT * 1000 <= failed["ms"] < DISCOVERY_WAIT * 1000 + 300
        answer = ask(lab, router, "NAT-PMP external address", b"\x00\x00")
        assert answer[:4] == bytes([0, 128, 0, 0])  # version 0, answer to opcode 0, success
        assert answer[8:12] == bytes([203, 0, 113, 1])
