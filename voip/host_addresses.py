"""This machine's interface addresses, for host candidates (reads the OS through psutil)."""

from __future__ import annotations

import itertools
import socket

import psutil

from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.candidates import is_usable_host_ip


def host_ipv4_addresses() -> list[str]:
    """Usable IPv4 addresses of the interfaces that are up, in a stable order."""
    return _addresses(socket.AF_INET)


def host_ipv6_addresses() -> list[str]:
    """Usable IPv6 addresses (global and unique local: not link-local, which needs a scope,
    nor loopback) of the interfaces that are up, in a stable order."""
    return _addresses(socket.AF_INET6)


def interleaved(*families: list[str]) -> list[str]:
    """Addresses of several families taken in turn, the first family first: RFC 8421 §4's
    order for host candidates, so IPv6 is tried first without all of IPv4 waiting behind it."""
    out: list[str] = []
    for group in itertools.zip_longest(*families):
        out += [ip for ip in group if ip is not None]
    return out


def host_candidates(bind_host: str, port: int, dual: bool) -> tuple[Candidate, ...]:
    """A call socket's host candidates: on all addresses, every usable one of the host (IPv6
    too if the socket is `dual`, first, RFC 8421); bound to one address, that one if it is
    routable."""
    if bind_host in ("0.0.0.0", "", "::"):  # noqa: S104
        ips = interleaved(host_ipv6_addresses() if dual else [], host_ipv4_addresses())
    else:
        ips = [bind_host] if is_usable_host_ip(bind_host) else []
    return tuple(
        Candidate.make(CandidateType.HOST, (ip, port), 65535 - i) for i, ip in enumerate(ips)
    )


def _addresses(family: socket.AddressFamily) -> list[str]:
    stats = psutil.net_if_stats()
    found: list[str] = []
    for ifname, addrs in sorted(psutil.net_if_addrs().items()):
        if ifname in stats and not stats[ifname].isup:
            continue
        for a in addrs:
            # A scoped address (fe80::1%eth0) is link-local: is_usable_host_ip refuses it too.
            if a.family != family or "%" in a.address or a.address in found:
                continue
            if is_usable_host_ip(a.address):
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
