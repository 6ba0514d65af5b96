"""Faults the lab can put under a call: a router that forgets its mappings, a host that moves."""

from __future__ import annotations

from voip.lab.netns import LabError
from voip.lab.netns import run
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
