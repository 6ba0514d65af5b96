"""Faults the lab puts under a call: a router forgetting its mappings, a host moving, a path cut."""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from voip.lab.netns import LabError
from voip.lab.netns import run

if TYPE_CHECKING:  # topology's Lab.cut uses cut_ruleset: the Lab type is all this needs back
    from voip.lab.topology import Lab


def forget_mappings(lab: Lab, side: str) -> None:
    """`side`'s router forgets every mapping and what it let in (`conntrack -F`), as a router
    that reboots, or a carrier NAT that rebinds, does."""
    router = lab.nodes[side].router_ns
    if router is None:
        raise LabError(f"{side} has no router to flush")
    run(["conntrack", "-F"], ns=router)


def move_host(lab: Lab, side: str) -> str:
    """`side`'s host moves to a new address on its LAN (a laptop from Wi-Fi to Ethernet): the
    new address comes, the old one goes, the default route stays. Returns the new address."""
    node = lab.nodes[side]
    if node.router_ns is None:
        raise LabError(f"{side} has no LAN to move on")
    net, last = node.ip.rsplit(".", 1)
    new = f"{net}.{20 + int(last)}"
    # Without promotion, removing the first address of a subnet removes the others too.
    run(["sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1"], ns=node.ns)
    run(["ip", "addr", "add", f"{new}/24", "dev", "eth0"], ns=node.ns)
    run(["ip", "addr", "del", f"{node.ip}/24", "dev", "eth0"], ns=node.ns)
    run(["ip", "route", "replace", "default", "via", f"{net}.1"], ns=node.ns)
    node.ip = new
    return new


def cut_ruleset(peer_ip: str) -> str:
    """A router's rules dropping everything to and from `peer_ip` (IPv4 or IPv6)."""
    family = "ip" if ipaddress.ip_address(peer_ip).version == 4 else "ip6"
    return f"""
table inet lab_cut {{
    chain forward {{
        type filter hook forward priority -10; policy accept;
        {family} daddr {peer_ip} drop
        {family} saddr {peer_ip} drop
    }}
}}
"""
