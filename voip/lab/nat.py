"""NAT router rulesets for the lab, named by RFC 4787 behaviour (nftables, Linux conntrack)."""

from __future__ import annotations

NAT_KINDS = ("none", "cone", "full-cone", "symmetric")

# What each kind does, for reports and messages.
BEHAVIOUR = {
    "none": "public host, no NAT",
    "cone": "endpoint-independent mapping, address-and-port-dependent filtering",
    "full-cone": "endpoint-independent mapping and filtering",
    "symmetric": "mapping per destination (address-and-port-dependent)",
}


def router_ruleset(kind: str, lan_hosts: list[str], wan_if: str = "wan") -> str:
    """The nft ruleset of a router of `kind` whose LAN holds `lan_hosts`.

    Every router drops unsolicited packets arriving on its WAN, as real ones do; without that,
    a peer's early punch is confirmed by conntrack on the router's own stack and masquerade
    then picks another port for our outgoing packet (DESIGN.md).
    """
    if kind not in NAT_KINDS or kind == "none":
        raise ValueError(f"no router for NAT kind {kind!r}")
    masquerade = "masquerade fully-random" if kind == "symmetric" else "masquerade"
    # Endpoint-independent filtering: whatever arrives for a port goes to the LAN host, port
    # kept. Masquerade preserves the source port when it can, so this is the host's mapping.
    full_cone = (
        f'        iifname "{wan_if}" udp dport 1024-65535 dnat to {lan_hosts[0]}\n'
        if kind == "full-cone"
        else ""
    )
    allow_dnat = (
        f'        iifname "{wan_if}" ct status dnat accept\n' if kind == "full-cone" else ""
    )
    return f"""
table ip lab_nat {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
{full_cone}    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{wan_if}" {masquerade}
    }}
}}
table ip lab_filter {{
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{wan_if}" ct state new drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
{allow_dnat}        iifname "{wan_if}" ct state new drop
    }}
}}
"""
