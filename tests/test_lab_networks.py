"""The lab's harder networks: a router that lets only TCP out, IPv6 behind firewalls, coturn.

Plain sockets in the lab's namespaces show what each network lets through. Building a lab needs
root and Linux (network namespaces, veth, nftables); elsewhere those tests skip, saying so.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from voip.lab.cli import add_lab_arguments
from voip.lab.cli import config_from_args
from voip.lab.netns import LabError
from voip.lab.netns import lab_unavailable_reason
from voip.lab.topology import HOST_IP6
from voip.lab.topology import RELAY_IP
from voip.lab.topology import RELAY_IP6
from voip.lab.topology import SERVER_ALT_IP6
from voip.lab.topology import SERVER_IP
from voip.lab.topology import SERVER_IP6
from voip.lab.topology import WAN_IPS
from voip.lab.topology import Lab
from voip.lab.topology import LabConfig
from voip.wire.stun import parse_message_untrusted

REASON = lab_unavailable_reason()
needs_lab = pytest.mark.skipif(REASON is not None, reason=REASON or "")
needs_coturn = pytest.mark.skipif(
    shutil.which("turnserver") is None or shutil.which("openssl") is None,
    reason="coturn and openssl are not installed (apt-get install coturn openssl)",
)
QUIET = 1.0  # s: how long a socket listens for what a network should never let through

# A UDP socket in a namespace, driven line by line on stdin: "send HOST PORT TEXT" or
# "recv TIMEOUT", each answered by one line on stdout.
UDP_AGENT = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
for line in sys.stdin:
    cmd, *rest = line.split()
    if cmd == "send":
        s.sendto(rest[2].encode(), (rest[0], int(rest[1])))
        print("sent", flush=True)
    else:
        s.settimeout(float(rest[0]))
        try:
            data, addr = s.recvfrom(2000)
            print("got", data.decode(), addr[0], flush=True)
        except TimeoutError:
            print("nothing", flush=True)
"""

# Accepts TCP connections, saying from where, until killed.
TCP_LISTENER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print("ready", flush=True)
while True:
    conn, addr = s.accept()
    print("from", addr[0], flush=True)
    conn.close()
"""

TCP_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected")
except OSError as exc:
    print("failed", type(exc).__name__)
"""

# A STUN Binding request over TLS (RFC 8489 §6.2.3), the server's certificate checked against
# the one we made; prints the TLS version and the answer in hex.
TLS_BINDING = """
import os, socket, ssl, sys
host, port, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=cafile)
request = bytes.fromhex("000100002112a442") + os.urandom(12)
with socket.create_connection((host, port), timeout=5) as raw:
    with ctx.wrap_socket(raw, server_hostname=host) as s:
        s.sendall(request)
        data = b""
        while len(data) < 20 or len(data) < 20 + int.from_bytes(data[2:4], "big"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        print(s.version(), data.hex())
"""


class UdpAgent:
    """A UDP socket bound on a lab node, which the test tells what to send and to wait for."""

    def __init__(self, lab: Lab, node: str, ip: str, port: int):
        self.proc = lab.start(
            node,
            [sys.executable, "-c", UDP_AGENT, ip, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line, "the agent died"
        return line

    def _ask(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._line()

    def send(self, host: str, port: int, text: str) -> None:
        assert self._ask(f"send {host} {port} {text}") == "sent"

    def recv(self, timeout: float = 3.0) -> tuple[str, str] | None:
        """(text, source address) of the next datagram, or None if none came in time."""
        answer = self._ask(f"recv {timeout}").split()
        return None if answer[0] == "nothing" else (answer[1], answer[2])


def tcp_listen(lab: Lab, node: str, ip: str, port: int) -> subprocess.Popen[str]:
    proc = lab.start(
        node, [sys.executable, "-c", TCP_LISTENER, ip, str(port)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def tcp_connect(lab: Lab, node: str, host: str, port: int, timeout: float = 3.0) -> str:
    return lab.run(node, [sys.executable, "-c", TCP_CONNECT, host, str(port), str(timeout)]).strip()


@pytest.fixture(scope="module")
def lab6() -> Iterator[Lab]:
    """One lab with IPv6 for the tests that only read it; each uses its own ports."""
    if REASON is not None:
        pytest.skip(REASON)
    with Lab(LabConfig(ipv6=True)) as lab:
        yield lab


# -- configuration, no root needed ---------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        LabConfig(block_udp=("c",)),
        LabConfig(block_udp=("a",), nat_a="none"),
        LabConfig(block_udp=("b",), same_nat=True),
    ],
)
def test_block_udp_needs_a_side_with_its_own_router(config: LabConfig) -> None:
    with pytest.raises(LabError, match="blocking UDP"):
        config.validate()


def test_lab_command_takes_block_udp_and_ipv6() -> None:
    parser = argparse.ArgumentParser()
    add_lab_arguments(parser)
    config = config_from_args(parser.parse_args(["--block-udp", "b", "--block-udp", "a", "--ipv6"]))
    assert config.block_udp == ("a", "b")
    assert config.ipv6
    plain = config_from_args(parser.parse_args([]))
    assert plain.block_udp == ()
    assert not plain.ipv6
    with pytest.raises(SystemExit):
        parser.parse_args(["--block-udp", "c"])


# -- a network that lets only TCP out -----------------------------------------------------------


@needs_lab
@pytest.mark.parametrize("family", [4, 6])
def test_blocked_udp_does_not_leave_while_tcp_does(family: int) -> None:
    with Lab(LabConfig(block_udp=("a",), ipv6=family == 6)) as lab:
        server = lab.nodes["server"]
        server_ip = server.ip if family == 4 else server.ip6
        assert server_ip is not None
        listen = "0.0.0.0" if family == 4 else "::"
        at_server = UdpAgent(lab, "server", listen, 9000)
        tcp_listen(lab, "server", listen, 9001)
        a = UdpAgent(lab, "a", listen, 40000)
        b = UdpAgent(lab, "b", listen, 40000)

        a.send(server_ip, 9000, "from-a")
        assert at_server.recv(QUIET) is None  # a's router dropped it
        assert tcp_connect(lab, "a", server_ip, 9001) == "connected"
        b.send(server_ip, 9000, "from-b")  # b's network is not a's
        got = at_server.recv()
        assert got is not None
        assert got[0] == "from-b"
        assert got[1] == (WAN_IPS["b"] if family == 4 else lab.nodes["b"].ip6)
        at_server.send(got[1], 40000, "back")
        assert b.recv() == ("back", server_ip)
        if family == 4:
            assert all(node.ip6 is None for node in lab.nodes.values())  # no IPv6 unasked


# -- IPv6: global addresses, no NAT, stateful firewalls ---------------------------------------


@needs_lab
def test_ipv6_addresses_are_the_lab_constants(lab6: Lab) -> None:
    assert lab6.nodes["a"].ip6 == HOST_IP6["a"]
    assert lab6.nodes["b"].ip6 == HOST_IP6["b"]
    assert lab6.nodes["server"].ip6 == SERVER_IP6
    assert lab6.nodes["relay"].ip6 == RELAY_IP6
    # IPv4 is what it always was: a's packets still leave by its router's NAT.
    assert lab6.nodes["a"].public_ip == WAN_IPS["a"]


@needs_lab
def test_ipv6_udp_and_tcp_to_the_server_without_nat(lab6: Lab) -> None:
    at_server = UdpAgent(lab6, "server", "::", 9100)
    a = UdpAgent(lab6, "a", "::", 41000)
    a.send(SERVER_IP6, 9100, "hello")
    # No NAT: the server sees a's own address, and its answer comes back through a's firewall.
    assert at_server.recv() == ("hello", HOST_IP6["a"])
    at_server.send(HOST_IP6["a"], 41000, "welcome")
    assert a.recv() == ("welcome", SERVER_IP6)
    listener = tcp_listen(lab6, "server", "::", 9101)
    assert tcp_connect(lab6, "a", SERVER_IP6, 9101) == "connected"
    assert listener.stdout is not None
    assert listener.stdout.readline().split() == ["from", HOST_IP6["a"]]
    # The rendezvous's second address answers too, from itself, when a socket is bound to it.
    at_alt = UdpAgent(lab6, "server", SERVER_ALT_IP6, 9103)
    a.send(SERVER_ALT_IP6, 9103, "other")
    assert at_alt.recv() == ("other", HOST_IP6["a"])
    at_alt.send(HOST_IP6["a"], 41000, "from-alt")
    assert a.recv() == ("from-alt", SERVER_ALT_IP6)
    # The IPv4 path is still NATed beside it.
    at_server4 = UdpAgent(lab6, "server", "0.0.0.0", 9102)
    UdpAgent(lab6, "a", "0.0.0.0", 41001).send(SERVER_IP, 9102, "v4")
    assert at_server4.recv() == ("v4", WAN_IPS["a"])


@needs_lab
def test_ipv6_firewalls_open_to_a_peer_only_once_both_have_sent(lab6: Lab) -> None:
    a = UdpAgent(lab6, "a", "::", 42000)
    b = UdpAgent(lab6, "b", "::", 42000)
    b.send(HOST_IP6["a"], 42000, "too-early")
    assert a.recv(QUIET) is None  # new from outside: a's router drops it
    a.send(HOST_IP6["b"], 42000, "punch")  # b's router takes it for the answer to b's
    assert b.recv() == ("punch", HOST_IP6["a"])
    b.send(HOST_IP6["a"], 42000, "reply")  # and now a's router lets b in
    assert a.recv() == ("reply", HOST_IP6["b"])


@needs_lab
def test_ipv6_unsolicited_inbound_is_dropped(lab6: Lab) -> None:
    a = UdpAgent(lab6, "a", "::", 43000)
    tcp_listen(lab6, "a", "::", 43001)
    from_server = UdpAgent(lab6, "server", "::", 9300)
    from_server.send(HOST_IP6["a"], 43000, "unasked")
    assert a.recv(QUIET) is None
    # Dropped, not refused: the connection attempt times out.
    assert tcp_connect(lab6, "server", HOST_IP6["a"], 43001, timeout=QUIET) == "failed TimeoutError"
    # While from a's own LAN side the listener is there all along.
    assert tcp_connect(lab6, "a", HOST_IP6["a"], 43001) == "connected"


# -- coturn with TLS on the relay node -----------------------------------------------------------


def self_signed(tmp_path: Path, *addresses: str) -> tuple[Path, Path]:
    cert, key = tmp_path / "relay.pem", tmp_path / "relay.key"
    names = ",".join(f"IP:{ip}" for ip in addresses)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=relay.lab.callpeer.test",
            "-addext",
            f"subjectAltName={names}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@needs_lab
@needs_coturn
def test_coturn_answers_over_tls_and_udp(lab6: Lab, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, RELAY_IP, RELAY_IP6)
    proc = lab6.start_coturn("lab-secret", cert, key)
    assert proc.poll() is None
    for relay_ip, seen_as in ((RELAY_IP, WAN_IPS["a"]), (RELAY_IP6, HOST_IP6["a"])):
        out = lab6.run("a", [sys.executable, "-c", TLS_BINDING, relay_ip, "5349", str(cert)])
        version, answer = out.split()
        assert version.startswith("TLSv1."), out
        mapped = parse_message_untrusted(bytes.fromhex(answer)).xor_address()
        assert mapped is not None
        assert mapped[0] == seen_as  # coturn saw a through its router, over TLS
    # And plain STUN over UDP on 3478, from b.
    stun = lab6.run(
        "b",
        [
            sys.executable,
            "-c",
            "import os, socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
            "s.settimeout(3); s.sendto(bytes.fromhex('000100002112a442') + os.urandom(12), "
            f"('{RELAY_IP}', 3478)); print(s.recv(2000).hex())",
        ],
    )
    mapped = parse_message_untrusted(bytes.fromhex(stun.strip())).xor_address()
    assert mapped is not None
    assert mapped[0] == WAN_IPS["b"]
