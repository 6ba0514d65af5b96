"""NAT router rulesets for the lab, named by RFC 4787 behaviour (nftables, Linux conntrack)."""

from __future__ import annotations

from voip.lab.echo import ECHO_PORT

NAT_KINDS = ("none", "cone", "full-cone", "symmetric")

# What each kind does, for reports and messages.
BEHAVIOUR = {
    "none": "public host, no NAT",
    "cone": "endpoint-independent mapping, address-and-port-dependent filtering",
    "full-cone": "endpoint-independent mapping and filtering",
    "symmetric": "mapping per destination (address-and-port-dependent)",
}

MAPPING_MEMORY = 300  # s: how long a hairpinning router remembers which LAN host a port maps to


def router_ruleset(
    kind: str,
    lan_hosts: list[str],
    wan_if: str = "wan",
    *,
    hairpin: bool = False,
    wan_ip: str | None = None,
    lan_if: str = "lan",
) -> str:
    """The nft ruleset of a router of `kind` whose LAN holds `lan_hosts`.

    Every router drops unsolicited packets arriving on its WAN, as real ones do (but for the
    lab's baseline echo on the router's own port 7, which no call uses); without that,
    a peer's early punch is confirmed by conntrack on the router's own stack and masquerade
    then picks another port for our outgoing packet.

    With `hairpin`, a packet from the LAN to one of the router's own public mappings is turned
    back to the LAN host that owns it, with the sender's public mapping as its source (RFC 4787
    REQ-9). Conntrack cannot look a mapping up by its public port, so the router learns them as
    they leave: after source NAT, each outgoing packet records public port -> (LAN host, port).
    """
    if kind not in NAT_KINDS or kind == "none":
        raise ValueError(f"no router for NAT kind {kind!r}")
    if hairpin and wan_ip is None:
        raise ValueError("a hairpinning router needs its WAN address")
    masquerade = "masquerade fully-random" if kind == "symmetric" else "masquerade"
    prerouting = []
    if kind == "full-cone":
        # Endpoint-independent filtering: whatever arrives for a port goes to the LAN host,
        # port kept. Masquerade preserves the source port when it can, so this is its mapping.
        prerouting.append(f'iifname "{wan_if}" udp dport 1024-65535 dnat to {lan_hosts[0]}')
    learn = ""
    learned = "udp sport : ct original ip saddr . ct original proto-src"
    if hairpin:
        prerouting.append(
            f'iifname "{lan_if}" ip daddr {wan_ip} dnat ip to udp dport map @public_ports'
        )
        learn = f"""
    map public_ports {{
        type inet_service : ipv4_addr . inet_service
        flags dynamic,timeout
        timeout {MAPPING_MEMORY}s
    }}
    chain learn {{
        type filter hook postrouting priority srcnat + 10; policy accept;
        oifname "{wan_if}" meta l4proto udp update @public_ports {{ {learned} }}
    }}"""
    hairpin_snat = (
        f'        iifname "{lan_if}" oifname "{lan_if}" ct status dnat snat to {wan_ip}\n'
        if hairpin
        else ""
    )
    allow_dnat = (
        f'        iifname "{wan_if}" ct status dnat accept\n' if kind == "full-cone" else ""
    )
    pre = "".join(f"        {rule}\n" for rule in prerouting)
    return f"""
table ip lab_nat {{{learn}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
{pre}    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{wan_if}" {masquerade}
{hairpin_snat}    }}
}}
table ip lab_filter {{
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{wan_if}" udp dport {ECHO_PORT} accept
        iifname "{wan_if}" ct state new drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
{allow_dnat}        iifname "{wan_if}" ct state new drop
    }}
}}
"""
