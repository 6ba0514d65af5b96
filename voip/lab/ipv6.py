"""IPv6 in the lab: global addresses, routes without NAT, and routers as stateful firewalls."""

from __future__ import annotations

# With `LabConfig.ipv6`, every node gets a global address from 2001:db8::/32 (RFC 3849)
# beside its IPv4 one:
#
#     2001:db8:1::2 [a] --lan-- [ra] 2001:db8:ff::1 --+                  +-- 2001:db8:ff::10 [srv]
#                         2001:db8:1::1                 +-- [inet] ------+   (and ::11)
#     2001:db8:2::2 [b] --lan-- [rb] 2001:db8:ff::2 --+                  +-- 2001:db8:ff::20 [relay]
#                         2001:db8:2::1
#
# The internet switch carries one /64 (INTERNET6); each router routes its LAN's /64, and every
# node on the internet has a route to each LAN through that LAN's router. Nothing is translated:
# a host's address is what the world sees. What keeps the world out is the router's firewall, as
# RFC 6092 asks of home routers: what a LAN host sends out opens the way for the answers (ct state
# established, related), anything new from outside is dropped, and the ICMPv6 that neighbour
# discovery and path MTU discovery need passes.
#
# A host without a router (NAT kind "none") sits on the internet at its side's WAN address; with
# the same NAT, b is ::3 on a's LAN. `Node.ip6` is always the node's own address.
from collections.abc import Iterable
from collections.abc import Mapping

from voip.lab.config import Node
from voip.lab.netns import run

INTERNET6 = "2001:db8:ff::/64"
SERVER_IP6 = "2001:db8:ff::10"
SERVER_ALT_IP6 = "2001:db8:ff::11"  # the rendezvous's second address, as SERVER_ALT_IP
RELAY_IP6 = "2001:db8:ff::20"
WAN_IP6S = {"a": "2001:db8:ff::1", "b": "2001:db8:ff::2"}  # routers' (or bare hosts') address
LANS6 = {"a": "2001:db8:1", "b": "2001:db8:2"}  # each LAN is LANS6[side] + "::/64"
HOST_IP6 = {"a": "2001:db8:1::2", "b": "2001:db8:2::2"}  # a host behind its own router
ROUTER_LAN_IP6 = {"a": "2001:db8:1::1", "b": "2001:db8:2::1"}
INTERNET_IP6 = {"server": SERVER_IP6, "relay": RELAY_IP6}

# The ICMPv6 a stateful firewall must never drop (RFC 4890 §4.3.1): the errors, packet-too-big
# above all, without which path MTU discovery fails silently. Most are also matched as "related"
# to a flow; these pass even when conntrack cannot tie them to one.
ICMPV6_ERRORS = "destination-unreachable, packet-too-big, time-exceeded, parameter-problem"
# Neighbour discovery, on the router's own links (RFC 4861); conntrack does not track it.
ICMPV6_ND = "nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert"


def prepare_namespace(ns: str, *, ipv6: bool) -> None:
    """Before any link exists in `ns`: IPv6 off, or on with no autoconfiguration chatter and
    no duplicate address detection, so the lab's own addresses are usable at once."""
    if not ipv6:
        for conf in ("all", "default"):
            run(["sysctl", "-qw", f"net.ipv6.conf.{conf}.disable_ipv6=1"], ns=ns)
        return
    for conf in ("all", "default"):
        for key, value in (("disable_ipv6", 0), ("accept_dad", 0), ("accept_ra", 0)):
            run(["sysctl", "-qw", f"net.ipv6.conf.{conf}.{key}={value}"], ns=ns)


def firewall_ruleset(lan_if: str = "lan", wan_if: str = "wan") -> str:
    """An RFC 6092 router's IPv6 filter: outbound opens the way back, nothing new comes in."""
    return f"""
table ip6 lab_firewall6 {{
    chain input {{
        type filter hook input priority filter; policy accept;
        icmpv6 type {{ {ICMPV6_ND}, {ICMPV6_ERRORS}, echo-request }} accept
        ct state established,related accept
        iifname "{wan_if}" drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        icmpv6 type {{ {ICMPV6_ERRORS} }} accept
        ct state invalid drop
        iifname "{lan_if}" oifname "{wan_if}" accept
    }}
}}
"""


def add_ipv6(nodes: Mapping[str, Node]) -> None:
    """Address, route and firewall every node of a built lab (IPv6 enabled in its namespaces
    by `prepare_namespace`), setting each node's `ip6`."""
    routers: dict[str, str] = {}  # router namespace -> the side whose LAN it serves
    for name in ("a", "b"):
        router = nodes[name].router_ns if name in nodes else None
        if router is not None:
            routers.setdefault(router, name)  # the same NAT: b is on a's LAN
    for name, node in nodes.items():
        if node.router_ns is None:  # the server, the relay, a host with no NAT
            node.ip6 = INTERNET_IP6.get(name) or WAN_IP6S[name]
            _address(node.ns, "eth0", node.ip6)
            _routes_to_lans(node.ns, "eth0", routers.values())
            continue
        side = routers[node.router_ns]
        # The host part mirrors the IPv4 one: 198.18.1.2 is 2001:db8:1::2.
        node.ip6 = f"{LANS6[side]}::{node.ip.rsplit('.', 1)[1]}"
        _address(node.ns, "eth0", node.ip6)
        run(["ip", "-6", "route", "add", "default", "via", ROUTER_LAN_IP6[side]], ns=node.ns)
    if "server" in nodes:
        # Deprecated from the start, so never the source the kernel picks for an answer from a
        # socket bound to "::" (which would leave from ::11, and a's firewall drop it as new);
        # a socket bound to it still sends from it.
        _address(nodes["server"].ns, "eth0", SERVER_ALT_IP6, "preferred_lft", "0")
    for router, side in routers.items():
        _address(router, "wan", WAN_IP6S[side])
        _address(router, "lan", ROUTER_LAN_IP6[side])
        run(["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"], ns=router)
        _routes_to_lans(router, "wan", [other for other in routers.values() if other != side])
        run(["nft", "-f", "-"], ns=router, input_text=firewall_ruleset())


def _address(ns: str, dev: str, ip6: str, *options: str) -> None:
    # nodad: usable at once, even if a default sysctl were missed.
    run(["ip", "-6", "addr", "add", f"{ip6}/64", "dev", dev, "nodad", *options], ns=ns)


def _routes_to_lans(ns: str, dev: str, sides: Iterable[str]) -> None:
    """Routes from an internet node to each router's LAN, through that router."""
    for side in sides:
        lan = f"{LANS6[side]}::/64"
        run(["ip", "-6", "route", "add", lan, "via", WAN_IP6S[side], "dev", dev], ns=ns)
