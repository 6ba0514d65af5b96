"""This machine's interface addresses, for host candidates (reads the OS through psutil)."""

from __future__ import annotations

import socket

import psutil

from voip.wire.candidates import is_usable_host_ip


def host_ipv4_addresses() -> list[str]:
    """Usable IPv4 addresses of the interfaces that are up, in a stable order."""
    stats = psutil.net_if_stats()
    found: list[str] = []
    for ifname, addrs in sorted(psutil.net_if_addrs().items()):
        if ifname in stats and not stats[ifname].isup:
            continue
        for a in addrs:
            if (
                a.family == socket.AF_INET
                and is_usable_host_ip(a.address)
                and a.address not in found
            ):
                found.append(a.address)
    return found


def default_gateway_ipv4(route_table: str = "/proc/net/route") -> str | None:
    """The IPv4 default gateway, from the kernel's routing table (Linux); None without one."""
    try:
        with open(route_table, encoding="ascii") as table:
            rows = [line.split() for line in table.readlines()[1:]]
    except OSError:
        return None
    for row in rows:
        # Iface Destination Gateway Flags ...: destination 0 is the default route; the gateway
        # is a little-endian hex IPv4 address; flag 2 (RTF_GATEWAY) says it is one.
        if len(row) > 3 and row[1] == "00000000" and int(row[3], 16) & 2:
            return socket.inet_ntoa(int(row[2], 16).to_bytes(4, "little"))
    return None


def source_ipv4_towards(ip: str) -> str | None:
    """Our address on the way to `ip`, as the kernel would choose it (nothing is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((ip, 9))
        except OSError:
            return None
        own = probe.getsockname()[0]
    return str(own) if is_usable_host_ip(str(own)) else None


def gateway_for_port_mapping() -> tuple[str, str] | None:
    """The router to ask for a port mapping (PCP, NAT-PMP), and our address towards it."""
    gateway = default_gateway_ipv4()
    own = source_ipv4_towards(gateway) if gateway is not None else None
    return (gateway, own) if gateway is not None and own is not None else None
