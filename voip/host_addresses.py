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
