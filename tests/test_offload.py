"""The kernel fast path for TURN channels (rendezvous/offload.py): ChannelData relayed by a tc
eBPF program, on loopback and through veth pairs, routers and bpf_fib_lookup in namespaces.

Needs root, clang and the libbpf headers; elsewhere every test skips, saying why.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from rendezvous.offload import FILTER_PREF
from rendezvous.offload import PIN_ROOT
from rendezvous.offload import ChannelOffload
from rendezvous.offload import forwarding_path
from rendezvous.offload import unavailable_reason
from voip.lab.netns import lab_unavailable_reason
from voip.lab.netns import run

Address = tuple[str, int]
REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
CHANNEL = 0x4000
QUIET = 0.2  # how long a socket that must receive nothing is watched


def _sock(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((host, port))
    s.settimeout(1.0)
    return s


def _addr(s: socket.socket) -> Address:
    host, port = s.getsockname()
    return str(host), int(port)


def _silent(s: socket.socket) -> bool:
    s.settimeout(QUIET)
    try:
        s.recvfrom(4096)
    except TimeoutError:
        return True
    finally:
        s.settimeout(1.0)
    return False


def _frame(data: bytes, channel: int = CHANNEL, length: int | None = None) -> bytes:
    return struct.pack("!HH", channel, len(data) if length is None else length) + data


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def _udp_packet(src: Address, dst: Address, payload: bytes, *, checksum: bool = True) -> bytes:
    """An IPv4/UDP packet for a raw socket: on loopback the kernel checks its UDP checksum (it
    is not partially offloaded), so these prove the program's checksum arithmetic."""
    length = 8 + len(payload)
    src_ip, dst_ip = socket.inet_aton(src[0]), socket.inet_aton(dst[0])
    pseudo = src_ip + dst_ip + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    header = struct.pack("!HHHH", src[1], dst[1], length, 0)
    check = (_checksum(pseudo + header + payload) or 0xFFFF) if checksum else 0
    header = struct.pack("!HHHH", src[1], dst[1], length, check)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 1, 0, 64, 17, 0, src_ip, dst_ip)
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    return ip + header + payload


def _our_filters(dev: str) -> str:
    out = subprocess.run(
        ["tc", "filter", "show", "dev", dev, "ingress"], capture_output=True, text=True, check=False
    ).stdout
    return "\n".join(line for line in out.splitlines() if f"pref {FILTER_PREF} " in line)


@dataclass
class Loop:
    """The four parties on 127.0.0.1 and the offload between them."""

    server: socket.socket  # stands in for callpeer-rendezvous: sees only what is not offloaded
    relayed: socket.socket  # the allocation's relayed socket
    client: socket.socket
    peer: socket.socket
    offload: ChannelOffload

    def add(self) -> None:
        self.offload.add(_addr(self.client), CHANNEL, _addr(self.relayed), _addr(self.peer))

    def remove(self) -> None:
        self.offload.remove(_addr(self.client), CHANNEL, _addr(self.relayed), _addr(self.peer))


@pytest.fixture
def loop() -> Iterator[Loop]:
    server, relayed, client, peer = sockets = [_sock() for _ in range(4)]
    offload = ChannelOffload.load(["lo"], _addr(server))
    try:
        yield Loop(server, relayed, client, peer, offload)
    finally:
        offload.close()
        for s in sockets:
            s.close()


def test_channel_data_both_ways_skips_user_space(loop: Loop) -> None:
    loop.add()
    payloads = [bytes([n % 251]) * n for n in (172, 0, 1, 3, 5, 160, 257, 1200)]
    for data in payloads:
        loop.client.sendto(_frame(data), _addr(loop.server))
        got, source = loop.peer.recvfrom(4096)
        assert (got, source) == (data, _addr(loop.relayed))
    for data in payloads:
        loop.peer.sendto(data, _addr(loop.relayed))
        got, source = loop.client.recvfrom(4096)
        assert (got, source) == (_frame(data), _addr(loop.server))
    assert _silent(loop.server)
    assert _silent(loop.relayed)
    total = sum(len(d) for d in payloads)
    want = {"to_peer_packets": 8, "to_peer_bytes": total, "to_client_packets": 8}
    assert loop.offload.counters() == {**want, "to_client_bytes": total, "channels": 1}
    one = loop.offload.channel_counters(
        _addr(loop.client), CHANNEL, _addr(loop.relayed), _addr(loop.peer)
    )
    assert one["to_peer_packets"] == 8
    assert one["to_client_bytes"] == total


def test_padding_and_checksums_are_right(loop: Loop) -> None:
    """Full, absent and padded: the loopback receiver verifies raw-socket checksums."""
    loop.add()
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    client, server, relayed, peer = (
        _addr(s) for s in (loop.client, loop.server, loop.relayed, loop.peer)
    )
    sent = 0
    with raw:
        for n in (0, 1, 2, 3, 4, 171, 172, 255, 256, 257, 513):
            data = bytes((i * 7 + n) & 0xFF for i in range(n))
            for pad in range(4):
                for checksum in (True, False):
                    frame = _frame(data) + b"\xa5\x5a\xff"[:pad]
                    raw.sendto(_udp_packet(client, server, frame, checksum=checksum), server)
                    assert loop.peer.recvfrom(4096) == (data, relayed)
                    sent += 1
            for checksum in (True, False):
                raw.sendto(_udp_packet(peer, relayed, data, checksum=checksum), relayed)
                assert loop.client.recvfrom(4096) == (_frame(data), server)
    assert _silent(loop.server)
    counters = loop.offload.counters()
    assert counters["to_peer_packets"] == sent
    assert counters["to_client_packets"] == 22


def test_what_the_maps_do_not_hold_reaches_user_space(loop: Loop) -> None:
    loop.add()
    server = _addr(loop.server)
    stun = bytes.fromhex("000100002112a442") + os.urandom(12)
    malformed = _frame(b"x" * 10, length=11)  # the length field says more than was sent
    other_channel = _frame(b"hello", channel=0x4001)
    for datagram in (stun, malformed, other_channel, b"\x40"):
        loop.client.sendto(datagram, server)
        assert loop.server.recvfrom(4096) == (datagram, _addr(loop.client))
    stranger = _sock()
    with stranger:
        stranger.sendto(_frame(b"hi"), server)  # the right channel from another client
        assert loop.server.recvfrom(4096)[0] == _frame(b"hi")
        stranger.sendto(b"not the peer", _addr(loop.relayed))
        assert loop.relayed.recvfrom(4096)[0] == b"not the peer"
    assert _silent(loop.peer)
    assert _silent(loop.client)
    assert loop.offload.counters()["to_peer_packets"] == 0


def test_remove_hands_the_channel_back_to_user_space(loop: Loop) -> None:
    loop.add()
    loop.add()  # adding again is harmless
    loop.client.sendto(_frame(b"kernel"), _addr(loop.server))
    assert loop.peer.recvfrom(4096)[0] == b"kernel"
    loop.remove()
    loop.client.sendto(_frame(b"python"), _addr(loop.server))
    assert loop.server.recvfrom(4096)[0] == _frame(b"python")
    loop.peer.sendto(b"python too", _addr(loop.relayed))
    assert loop.relayed.recvfrom(4096)[0] == b"python too"
    assert _silent(loop.peer)
    counters = loop.offload.counters()
    assert (counters["to_peer_packets"], counters["to_client_packets"], counters["channels"]) == (
        1,
        0,
        0,
    )
    loop.remove()  # removing again is harmless


def test_close_detaches_and_unpins(loop: Loop) -> None:
    pin_dir = loop.offload.pin_dir
    assert _our_filters("lo")
    assert pin_dir.is_dir()
    loop.add()
    loop.offload.close()
    loop.offload.close()
    assert not _our_filters("lo")
    assert not pin_dir.exists()
    loop.client.sendto(_frame(b"after close"), _addr(loop.server))
    assert loop.server.recvfrom(4096)[0] == _frame(b"after close")


def test_a_stale_instance_is_replaced() -> None:
    """A crashed run leaves its filter and pins: the next load takes the filter's place and
    removes pins whose process is gone."""
    stale = PIN_ROOT / "999999999-dead"
    stale.mkdir(parents=True, exist_ok=True)
    first = ChannelOffload.load(["lo"], ("127.0.0.1", 3478))
    second = ChannelOffload.load(["lo"], ("127.0.0.1", 3478))
    try:
        assert not stale.exists()
        assert _our_filters("lo").count("handle 0x1 ") == 1
    finally:
        second.close()
        first.close()
    assert not _our_filters("lo")


# The lab: client -- relay -- router -- peer, each in a network namespace, joined by veth pairs.
# The relay's listening and relayed addresses are one public address, as on a real relay; the
# peer is two hops away, so the program must find the router's MAC through bpf_fib_lookup.
LAB_REASON = lab_unavailable_reason()
CLONE_NEWNET = 0x40000000
RELAY_IP = "203.0.113.1"
CLIENT_IP = "203.0.113.10"
PEER_IP = "198.51.100.130"
_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Run this thread in namespace `name` (sockets made meanwhile stay there)."""
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        yield
    finally:
        _libc.setns(here, CLONE_NEWNET)
        os.close(here)
        os.close(there)


def _lab_commands(tag: str) -> list[list[str]]:
    c, r, g, p = (f"cpo{tag}{x}" for x in "crgp")
    cmds = [["ip", "netns", "add", ns] for ns in (c, r, g, p)]
    cmds += [["ip", "-n", ns, "link", "set", "lo", "up"] for ns in (c, r, g, p)]
    links = [(c, "c0", r, "r0"), (r, "r1", g, "g0"), (g, "g1", p, "p0")]
    for ns_a, a, ns_b, b in links:
        cmds.append(
            ["ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", b, "netns", ns_b]
        )
    addresses = [
        (c, "c0", f"{CLIENT_IP}/24"),
        (r, "r0", f"{RELAY_IP}/24"),
        (r, "r1", "198.51.100.1/25"),
        (g, "g0", "198.51.100.2/25"),
        (g, "g1", "198.51.100.129/25"),
        (p, "p0", f"{PEER_IP}/25"),
    ]
    for ns, dev, cidr in addresses:
        cmds.append(["ip", "-n", ns, "addr", "add", cidr, "dev", dev])
        cmds.append(["ip", "-n", ns, "link", "set", dev, "up"])
    cmds.append(["ip", "-n", r, "route", "add", "198.51.100.128/25", "via", "198.51.100.2"])
    cmds.append(["ip", "-n", g, "route", "add", "203.0.113.0/24", "via", "198.51.100.1"])
    cmds.append(["ip", "-n", p, "route", "add", "default", "via", "198.51.100.129"])
    cmds.append(["ip", "netns", "exec", g, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
    return cmds


@dataclass
class Lab:
    tag: str
    server: socket.socket
    relayed: socket.socket
    client: socket.socket
    peer: socket.socket

    @property
    def relay_ns(self) -> str:
        return f"cpo{self.tag}r"

    def channel(self) -> tuple[Address, int, Address, Address]:
        return _addr(self.client), CHANNEL, _addr(self.relayed), _addr(self.peer)


@pytest.fixture(params=["partial", "full"])
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """`partial`: veth's default, checksums left to offload; `full`: tx offload off at the
    client and the peer, so the kernel sees (and the receivers check) real UDP checksums."""
    if LAB_REASON:
        pytest.skip(LAB_REASON)
    tag = str(os.getpid() % 100000)
    sockets: list[socket.socket] = []
    try:
        for cmd in _lab_commands(tag):
            run(cmd)
        if request.param == "full":
            run(["ethtool", "-K", "c0", "tx", "off"], ns=f"cpo{tag}c")
            run(["ethtool", "-K", "p0", "tx", "off"], ns=f"cpo{tag}p")
        for ns, host, port in (("r", RELAY_IP, 3478), ("r", RELAY_IP, 0), ("c", CLIENT_IP, 0)):
            with netns(f"cpo{tag}{ns}"):
                sockets.append(_sock(host, port))
        with netns(f"cpo{tag}p"):
            sockets.append(_sock(PEER_IP))
        server, relayed, client, peer = sockets
        # User space first, as a real allocation does: this also resolves the neighbours.
        client.sendto(b"allocate", _addr(server))
        assert server.recvfrom(100) == (b"allocate", _addr(client))
        server.sendto(b"allocated", _addr(client))
        assert client.recvfrom(100)[0] == b"allocated"
        relayed.sendto(b"hello peer", _addr(peer))
        assert peer.recvfrom(100) == (b"hello peer", _addr(relayed))
        yield Lab(tag, server, relayed, client, peer)
    finally:
        for s in sockets:
            s.close()
        for ns in "crgp":
            run(["ip", "netns", "del", f"cpo{tag}{ns}"], check=False)


def test_lab_without_forwarding_falls_back_to_user_space(lab: Lab) -> None:
    with netns(lab.relay_ns):
        offload = ChannelOffload.load(["r0", "r1"], _addr(lab.server))
    try:
        assert any("forwarding is off on r0" in note for note in offload.notes)
        offload.add(*lab.channel())
        lab.client.sendto(_frame(b"voice"), _addr(lab.server))
        assert lab.server.recvfrom(4096)[0] == _frame(b"voice")
        assert offload.counters()["to_peer_packets"] == 0
    finally:
        with netns(lab.relay_ns):
            offload.close()


def test_lab_fib_lookup_and_redirect(lab: Lab) -> None:
    with netns(lab.relay_ns):
        offload = ChannelOffload.load(["r0", "r1"], _addr(lab.server), enable_forwarding=True)
    try:
        assert offload.notes == []
        offload.add(*lab.channel())
        payloads = [bytes([n % 251]) * n for n in (172, 0, 1, 3, 171, 1000)]
        for data in payloads:
            lab.client.sendto(_frame(data), _addr(lab.server))
            assert lab.peer.recvfrom(4096) == (data, _addr(lab.relayed))
            lab.peer.sendto(data, _addr(lab.relayed))
            assert lab.client.recvfrom(4096) == (_frame(data), _addr(lab.server))
        assert _silent(lab.server)
        assert _silent(lab.relayed)
        counters = offload.counters()
        assert (counters["to_peer_packets"], counters["to_client_packets"]) == (6, 6)
        assert counters["to_peer_bytes"] == sum(map(len, payloads))
    finally:
        with netns(lab.relay_ns):
            offload.close()
            assert forwarding_path("r0").read_text().strip() == "0"
            assert not _our_filters("r0")
            assert not _our_filters("r1")
