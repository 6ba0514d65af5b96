"""A packet capture for the lab: what left an interface, by destination and RFC 7983 kind.

Runs in a router's namespace on its WAN side (after NAT), independent of callpeer, so a test
can confirm where the media really went:

    python -m voip.lab.capture --dev wan

prints "ready", then on SIGTERM one JSON object: {"DST_IP:PORT": {"stun": n, "rtp": n,
"rtcp": n, "other": n}} counting outgoing UDP datagrams, IPv4 and IPv6 (keyed "[DST_IP]:PORT";
no NAT, so their source is the host's own address), with "from" giving their sources and
"rtp_samples" the first RTP packets (hex; unwrapped from TURN ChannelData), for a test to try
what a listener on the path could make of them.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys
from collections import defaultdict
from typing import Any

SAMPLES = 100  # RTP packets kept per destination
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPV6_HEADER = 40  # fixed; a UDP datagram follows it directly (next header 17), as ours do
PACKET_OUTGOING = 4


def classify(payload: bytes) -> str:
    """RFC 7983 demultiplexing by first byte; RTCP by packet type (RFC 5761)."""
    if not payload:
        return "other"
    first = payload[0]
    if first < 4:
        return "stun"
    if 64 <= first <= 79:
        return "channel"  # TURN ChannelData: media (or checks) wrapped for a relay
    if 128 <= first <= 191:
        return "rtcp" if len(payload) > 1 and 192 <= payload[1] <= 223 else "rtp"
    return "other"


def parse_udp(frame: bytes) -> tuple[str, str, bytes] | None:
    """(source, destination, payload) of an Ethernet/IPv4/UDP or Ethernet/IPv6/UDP frame, the
    addresses as "ip:port" and "[ipv6]:port". An IPv6 packet with extension headers before
    its UDP header is not counted (the lab's traffic has none)."""
    if len(frame) < 14:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == ETH_P_IPV6:
        return _parse_udp6(frame[14:])
    if ethertype != ETH_P_IP or len(frame) < 14 + 20:
        return None
    ip = frame[14:]
    ihl = (ip[0] & 0x0F) * 4
    if ip[9] != 17 or len(ip) < ihl + 8:
        return None
    src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    sport, dport, length = struct.unpack_from("!HHH", ip, ihl)
    payload = ip[ihl + 8 : ihl + length]
    return f"{src}:{sport}", f"{dst}:{dport}", payload


def _parse_udp6(ip: bytes) -> tuple[str, str, bytes] | None:
    if len(ip) < IPV6_HEADER + 8 or ip[0] >> 4 != 6 or ip[6] != 17:
        return None
    src = socket.inet_ntop(socket.AF_INET6, ip[8:24])
    dst = socket.inet_ntop(socket.AF_INET6, ip[24:40])
    sport, dport, length = struct.unpack_from("!HHH", ip, IPV6_HEADER)
    payload = ip[IPV6_HEADER + 8 : IPV6_HEADER + length]
    return f"[{src}]:{sport}", f"[{dst}]:{dport}", payload


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m voip.lab.capture")
    p.add_argument("--dev", required=True)
    args = p.parse_args(argv)
    counts: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "stun": 0,
            "rtp": 0,
            "rtcp": 0,
            "channel": 0,
            "other": 0,
            "from": set(),
            "rtp_samples": [],
        }
    )
    # Outgoing frames reach only ETH_P_ALL taps, not sockets bound to one protocol.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((args.dev, 0))
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sock.settimeout(0.1)
    print("ready", flush=True)
    while not stop:
        try:
            frame, addr = sock.recvfrom(65535)
        except TimeoutError:
            continue
        if addr[2] != PACKET_OUTGOING:
            continue
        parsed = parse_udp(frame)
        if parsed is None:
            continue
        src, dst, payload = parsed
        entry = counts[dst]
        kind = classify(payload)
        entry[kind] += 1
        entry["from"].add(src)
        inner = payload[4:] if kind == "channel" else payload  # ChannelData: a 4-byte header
        if classify(inner) == "rtp" and len(entry["rtp_samples"]) < SAMPLES:
            entry["rtp_samples"].append(inner.hex())
    print(json.dumps({k: {**v, "from": sorted(v["from"])} for k, v in counts.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
