"""Port mapping in the lab: miniupnpd on a NAT router, asked by a LAN host with NAT-PMP and PCP.

The lab tests need root, Linux and Debian's miniupnpd-nftables; elsewhere they skip, saying so.
Requests are encoded here by hand from RFC 6886 and RFC 6887, and every answer miniupnpd gives
is printed as hex (`pytest -s`).
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.test_lab import FIVE_MS
from voip.lab.nat import router_ruleset
from voip.lab.netns import LabError
from voip.lab.netns import lab_unavailable_reason
from voip.lab.netns import run
from voip.lab.port_mapping import NATPMP_PCP
from voip.lab.port_mapping import PREROUTING_CHAIN
from voip.lab.port_mapping import TABLE
from voip.lab.port_mapping import PortMapper
from voip.lab.port_mapping import miniupnpd_config
from voip.lab.port_mapping import miniupnpd_unavailable_reason
from voip.lab.scenario import run_lab_call
from voip.lab.topology import SERVER_ALT_IP
from voip.lab.topology import SERVER_IP
from voip.lab.topology import WAN_IPS
from voip.lab.topology import Lab
from voip.lab.topology import LabConfig

REASON = lab_unavailable_reason() or miniupnpd_unavailable_reason()
needs_lab = pytest.mark.skipif(REASON is not None, reason=REASON or "")

LIFETIME = 3600  # s, asked for every mapping; within PCP's 120 s - 24 h, so granted as is
NONCE = bytes.fromhex("0102030405060708090a0b0c")  # PCP's mapping nonce (RFC 6887 §11.1)
# Internal and suggested external ports differ, so a packet that arrives proves the mapping,
# not a router keeping the port as it is.
NATPMP_PORTS = (40000, 40100)
PCP_PORTS = (40001, 40101)

# On a LAN host: one request to the gateway from a fresh port, the answer as hex (retried, as
# RFC 6886 §3.1 and RFC 6887 §8.1.1 do; nothing printed if no answer came).
ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
for _ in range(3):
    s.sendto(bytes.fromhex(sys.argv[3]), (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recv(1100).hex())
        break
    except TimeoutError:
        pass
"""

# On a LAN host: bind a port, say ready, print the first datagram's payload and source as JSON
# (null if none came within the time given).
RECEIVE = """
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(float(sys.argv[2]))
print("ready", flush=True)
try:
    data, source = s.recvfrom(2000)
    print(json.dumps({"data": data.decode(), "from": list(source)}))
except TimeoutError:
    print("null")
"""

# On an internet node: a few copies of a datagram to a public address, from one fresh port.
SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.05)
"""


def ipv4_mapped(ip: str) -> bytes:
    """An IPv4 address as PCP carries it (RFC 6887 §5): ::ffff:a.b.c.d."""
    return bytes(10) + b"\xff\xff" + socket.inet_aton(ip)


def natpmp_map_udp(internal: int, external: int, lifetime: int) -> bytes:
    """RFC 6886 §3.3: version 0, opcode 1 (map UDP), reserved, internal port, suggested
    external port, lifetime. Lifetime 0 (and external port 0) deletes the mapping (§3.4)."""
    return struct.pack("!BBHHHI", 0, 1, 0, internal, external, lifetime)


def pcp_map_udp(client: str, internal: int, external: int, lifetime: int) -> bytes:
    """RFC 6887 §7.1 request header (version 2, R=0 and opcode 1 MAP, reserved, lifetime,
    client IP) then §11.1 MAP (nonce, protocol 17, reserved, internal port, suggested external
    port, suggested external address: ::ffff:0.0.0.0 for none)."""
    header = struct.pack("!BBHI16s", 2, 1, 0, lifetime, ipv4_mapped(client))
    return header + struct.pack(
        "!12sB3xHH16s", NONCE, 17, internal, external, ipv4_mapped("0.0.0.0")
    )


def ask(lab: Lab, mapper: PortMapper, what: str, request: bytes) -> bytes:
    args = [sys.executable, "-c", ASK, mapper.gateway, str(mapper.port), request.hex()]
    answer = lab.run("a", args).strip()
    print(f"\n{what}\n  request  {request.hex()}\n  response {answer or '(none)'}")
    assert answer, f"{what}: miniupnpd never answered. Its log:\n{mapper.log_tail()}"
    return bytes.fromhex(answer)


def arrives(lab: Lab, public: tuple[str, int], internal: int) -> dict[str, Any] | None:
    """What a socket on host a's `internal` port receives when the rendezvous's node sends to
    `public` from a fresh port."""
    receiver = lab.start(
        "a", [sys.executable, "-c", RECEIVE, str(internal), "1.5"], stdout=subprocess.PIPE
    )
    assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
    payload = f"to {public[0]}:{public[1]}"
    lab.run("server", [sys.executable, "-c", SEND, public[0], str(public[1]), payload])
    out, _ = receiver.communicate(timeout=10)
    got: dict[str, Any] | None = json.loads(out)
    assert got is None or got["data"] == payload
    return got


def start_rendezvous(lab: Lab, *, alternate: bool = True) -> None:
    """The rendezvous, as scenario.py runs it: miniupnpd's STUN server."""
    alt = ["--alt-address", SERVER_ALT_IP] if alternate else []
    server = lab.start(
        "server",
        [
            *[sys.executable, "-m", "rendezvous", "--store=:memory:"],
            *["--listen", f"{SERVER_IP}:3478", *alt],
        ],
        stdout=subprocess.PIPE,
    )
    assert server.stdout is not None and "listening" in server.stdout.readline()


# -- without the lab -----------------------------------------------------------------------


def test_port_mapping_needs_a_router_of_its_own() -> None:
    with pytest.raises(LabError, match="needs a router"):
        LabConfig(nat_a="none", port_mapping_a=True).validate()
    with pytest.raises(LabError, match="same-NAT"):
        LabConfig(same_nat=True, port_mapping_b=True).validate()
    LabConfig(nat_b="symmetric", port_mapping_b=True).validate()


@pytest.mark.parametrize("kind", ["cone", "full-cone", "symmetric"])
def test_only_a_port_mapping_router_lets_mapped_flows_and_stun_answers_in(kind: str) -> None:
    servers = (SERVER_IP, SERVER_ALT_IP)
    plain = router_ruleset(kind, ["198.18.1.2"])
    mapping = router_ruleset(kind, ["198.18.1.2"], port_mapping=True, stun_servers=servers)
    assert "socket" not in plain
    assert ("ct status dnat accept" in plain) is (kind == "full-cone")
    stun = 'iifname "wan" ip saddr { 203.0.113.10, 203.0.113.11 } socket transparent 0 accept'
    assert stun in mapping
    assert 'iifname "wan" ct status dnat accept' in mapping
    for ruleset in (plain, mapping):  # the router's own packets are never masqueraded
        assert 'oifname "wan" ip saddr 198.18.1.0/24 masquerade' in ruleset
    with pytest.raises(ValueError, match="STUN"):
        router_ruleset(kind, ["198.18.1.2"], port_mapping=True)


def test_miniupnpd_serves_natpmp_and_pcp_only_to_its_lan() -> None:
    config = miniupnpd_config(lan_net="198.18.1.0/24", stun=(SERVER_IP, 3478)).splitlines()
    for line in ("enable_natpmp=yes", "enable_upnp=no", "ext_perform_stun=yes", "secure_mode=yes"):
        assert line in config
    # The LAN may map unprivileged ports; nothing else may map anything.
    assert config[-2:] == [
        "allow 1024-65535 198.18.1.0/24 1024-65535",
        "deny 0-65535 0.0.0.0/0 0-65535",
    ]


# -- in the lab ----------------------------------------------------------------------------


@needs_lab
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cone", "symmetric", "full-cone"])
def test_a_lan_host_maps_ports_by_natpmp_and_pcp(kind: str) -> None:
    with Lab(LabConfig(nat_a=kind, port_mapping_a=True)) as lab:
        start_rendezvous(lab)
        mapper = lab.start_port_mapping("a")
        host, wan = lab.nodes["a"].ip, lab.nodes["a"].public_ip
        assert mapper.gateway == "198.18.1.1"

        # RFC 6886 §3.2: version 0, opcode 0. Answer: opcode 128, result, epoch, address.
        answer = ask(lab, mapper, "NAT-PMP external address", b"\x00\x00")
        version, opcode, result, _, address = struct.unpack("!BBHI4s", answer)
        assert (version, opcode, result) == (0, 128, 0)
        assert socket.inet_ntoa(address) == wan

        # §3.3: opcode 129, result, epoch, internal port, mapped external port, lifetime.
        internal, external = NATPMP_PORTS
        answer = ask(lab, mapper, "NAT-PMP map UDP", natpmp_map_udp(internal, external, LIFETIME))
        assert struct.unpack("!BBHIHHI", answer)[:3] == (0, 129, 0), answer.hex()
        assert struct.unpack("!BBHIHHI", answer)[4:] == (internal, external, LIFETIME)
        got = arrives(lab, (wan, external), internal)
        assert got is not None and got["from"][0] == SERVER_IP  # through, sender kept

        # RFC 6887 §7.2 answer header (version, R=1 and opcode, reserved, result, lifetime,
        # epoch, reserved) then the MAP payload with the assigned external port and address.
        internal, external = PCP_PORTS
        answer = ask(lab, mapper, "PCP MAP UDP", pcp_map_udp(host, internal, external, LIFETIME))
        assert len(answer) == 60, answer.hex()
        version, opcode, _, result, lifetime, _ = struct.unpack("!BBBBII12x", answer[:24])
        assert (version, opcode, result, lifetime) == (2, 0x81, 0, LIFETIME)
        nonce, protocol, inside, outside, address = struct.unpack("!12sB3xHH16s", answer[24:])
        assert (nonce, protocol, inside, outside) == (NONCE, 17, internal, external)
        assert address == ipv4_mapped(wan)
        assert arrives(lab, (wan, external), internal) is not None

        # §3.4: lifetime 0 deletes; the answer carries external port 0 and lifetime 0.
        internal, external = NATPMP_PORTS
        answer = ask(lab, mapper, "NAT-PMP delete", natpmp_map_udp(internal, 0, 0))
        assert struct.unpack("!BBHIHHI", answer)[:3] == (0, 129, 0), answer.hex()
        assert struct.unpack("!BBHIHHI", answer)[4:] == (internal, 0, 0)
        assert arrives(lab, (wan, external), internal) is None  # a new flow no longer gets in
        router = lab.nodes["a"].router_ns
        assert router is not None
        rules = run(["nft", "list", "chain", "inet", TABLE, PREROUTING_CHAIN], ns=router)
        assert f"dport {PCP_PORTS[1]} dnat ip to {host}:{PCP_PORTS[0]}" in rules, rules
        assert f"dport {NATPMP_PORTS[1]} " not in rules, rules


# What `callpeer natcheck` says of each router (as tests/test_lab.py checks without mapping).
KINDS = {
    "cone": ("endpoint-independent", "address-and-port-dependent", "preserved"),
    "full-cone": ("endpoint-independent", "endpoint-independent", "preserved"),
    "symmetric": ("address-and-port-dependent", "address-and-port-dependent", "random"),
}


@needs_lab
@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_a_port_mapping_router_stays_the_nat_of_its_kind(kind: str, tmp_path: Path) -> None:
    """miniupnpd running, and the router's rules opened for its STUN answers: what a caller
    behind it sees of its mapping and filtering is unchanged."""
    with Lab(LabConfig(nat_a=kind, port_mapping_a=True)) as lab:
        start_rendezvous(lab)
        lab.start_port_mapping("a")
        natcheck = [sys.executable, "-m", "voip.cli", "natcheck", "--server", f"{SERVER_IP}:3478"]
        out = lab.run("a", ["env", f"XDG_CACHE_HOME={tmp_path}", *natcheck, "--json", "-"])
    report = json.loads(out)
    mapping, filtering, ports = KINDS[kind]
    assert (report["mapping"], report["filtering"]) == (mapping, filtering), report
    assert report["port_allocation"].startswith(ports), report


@needs_lab
@pytest.mark.slow
def test_without_the_rendezvous_alternate_address_miniupnpd_is_refused() -> None:
    """Its STUN test gets one answer of four: miniupnpd would refuse every mapping, and the
    lab says so, with its log, rather than hand back a router that maps nothing."""
    with Lab(LabConfig(nat_a="cone", port_mapping_a=True)) as lab:
        start_rendezvous(lab, alternate=False)
        with pytest.raises(LabError, match="will map no ports") as error:
            lab.start_port_mapping("a")
    assert "Port forwarding is now disabled" in str(error.value)


@needs_lab
@pytest.mark.slow
@pytest.mark.parametrize(
    ("mapping_side", "protocol"), [("a", "PCP"), ("b", "PCP"), ("a", "UPnP IGD")]
)
def test_symmetric_against_symmetric_goes_direct_through_the_mapping(
    mapping_side: str, protocol: str, tmp_path: Path
) -> None:
    """Both routers map per destination, so no punching can work (the relay, without port
    mapping: test_lab.py); when one router opens a port on request, the other side's checks
    reach it and the audio goes direct. A capture on each router's WAN shows where it went;
    after the call the router holds no mapping. With UPnP IGD the router speaks nothing else
    (no NAT-PMP or PCP): the call asks it beside PCP and offers the port it opened."""
    config = replace(
        FIVE_MS,
        nat_a="symmetric",
        nat_b="symmetric",
        delay_relay=40,
        port_mapping_a=mapping_side == "a",
        port_mapping_b=mapping_side == "b",
        port_mapping_protocols=("upnp",) if protocol == "UPnP IGD" else NATPMP_PCP,
    )
    result = run_lab_call(config, tmp_path, duration=3, speech=False, capture=True)
    other = "b" if mapping_side == "a" else "a"
    mapper_ip, other_ip = WAN_IPS[mapping_side], WAN_IPS[other]
    reports = {}
    for side, name in (("a", "alice"), ("b", "bob")):
        caller = result.callers[name]
        assert caller.exit_code == 0 and caller.report is not None, caller.stderr
        reports[side] = caller.report
        assert caller.report["path"] == "direct", caller.report
    mine, theirs = reports[mapping_side], reports[other]
    assert mine["paths"]["direct"]["found_by"] == f"our port mapping ({protocol})"
    assert theirs["paths"]["direct"]["found_by"] == "the peer's port mapping"
    public = mine["port_mapping"]["public"]
    assert mine["port_mapping"]["protocol"] == protocol and public.startswith(f"{mapper_ip}:")
    assert theirs["paths"]["direct"]["remote"] == public  # they sent to the opened port
    assert "mapped " + public in theirs["candidates_tried"]
    # Outside the programs: every RTP packet left each router for the other router's public
    # address, none for the relay; the mapping side's left from the port its router opened.
    for side, peer_ip in ((mapping_side, other_ip), (other, mapper_ip)):
        rtp_to = {dst: c["rtp"] for dst, c in result.captures[side].items() if c["rtp"]}
        assert rtp_to and all(dst.split(":")[0] == peer_ip for dst in rtp_to), rtp_to
        assert sum(rtp_to.values()) >= 100, rtp_to
    sent_from = {
        source for c in result.captures[mapping_side].values() if c["rtp"] for source in c["from"]
    }
    assert sent_from == {public}, sent_from
    assert result.mappings_left == {mapping_side: 0}  # deleted at hangup
