"""NAT router rulesets for the lab, named by RFC 4787 behaviour (nftables, Linux conntrack)."""

from __future__ import annotations

from collections.abc import Sequence

from voip.lab.echo import ECHO_PORT

NAT_KINDS = ("none", "cone", "full-cone", "symmetric", "symmetric-sequential")

# What each kind does, for reports and messages.
BEHAVIOUR = {
    "none": "public host, no NAT",
    "cone": "endpoint-independent mapping, address-and-port-dependent filtering",
    "full-cone": "endpoint-independent mapping and filtering",
    "symmetric": "mapping per destination (address-and-port-dependent)",
    "symmetric-sequential": "mapping per destination, public ports allocated in sequence",
}

# The public ports a symmetric-sequential router hands out, one after another, then again from
# the first: one block, as a carrier-grade NAT gives a subscriber (port block allocation; never
# the well-known ports, RFC 6888), below Linux's ephemeral range (32768-60999, where the LAN
# hosts' own ports, a cone router's preserved ones, miniupnpd's mappings and the router's own
# sockets live) and clear of every fixed port the lab uses (7, 3478, 5351, 9000).
SEQUENTIAL_FIRST, SEQUENTIAL_PORTS = 20480, 4096  # 20480-24575


MAPPING_MEMORY = 300  # s: how long a hairpinning router remembers which LAN host a port maps to


def router_ruleset(
    kind: str,
    lan_hosts: list[str],
    wan_if: str = "wan",
    *,
    hairpin: bool = False,
    wan_ip: str | None = None,
    lan_if: str = "lan",
    port_mapping: bool = False,
    stun_servers: Sequence[str] = (),
) -> str:
    """The nft ruleset of a router of `kind` whose LAN (a /24) holds `lan_hosts`.

    Every router drops unsolicited packets arriving on its WAN, as real ones do (but for the
    lab's baseline echo on the router's own port 7, which no call uses); without that,
    a peer's early punch is confirmed by conntrack on the router's own stack and masquerade
    then picks another port for our outgoing packet.

    With `hairpin`, a packet from the LAN to one of the router's own public mappings is turned
    back to the LAN host that owns it, with the sender's public mapping as its source (RFC 4787
    REQ-9). Conntrack cannot look a mapping up by its public port, so the router learns them as
    they leave: after source NAT, each outgoing packet records public port -> (LAN host, port).

    Only the LAN's packets are masqueraded: the router's own (miniupnpd's STUN) leave from its
    WAN address and ports as they are, so a symmetric router does not randomize them.

    With `port_mapping` (miniupnpd, voip.lab.port_mapping, adds DNAT rules in a table of its
    own), what those rules let in passes the forward filter, and the answers of the STUN test
    miniupnpd runs at start against `stun_servers` (the rendezvous's two addresses, from which
    its CHANGE-REQUEST answers come as new flows) reach the router's own sockets. Nothing else
    changes: a packet for a port no socket of the router holds (a LAN host's mapping) is
    still dropped, and conntrack never confirms an entry for it.
    """
    if kind not in NAT_KINDS or kind == "none":
        raise ValueError(f"no router for NAT kind {kind!r}")
    if hairpin and wan_ip is None:
        raise ValueError("a hairpinning router needs its WAN address")
    if port_mapping and not stun_servers:
        raise ValueError("a port-mapping router needs the STUN server miniupnpd tests against")
    lan_net = lan_hosts[0].rsplit(".", 1)[0] + ".0/24"
    lan_out = f'oifname "{wan_if}" ip saddr {lan_net}'
    snat = []
    if kind == "symmetric-sequential":
        # The nat chain sees only the first packet of each new conntrack flow, so the counter
        # moves once per new mapping: every destination gets the next port of the block. The
        # counter goes through a map because nft 1.0.6 hands `numgen` (a 32-bit number in
        # host order) to NAT as a port unconverted: on this little-endian machine `numgen inc
        # mod N offset 20000` gave ports 8270, 8526, 8782... (20000 byte-swapped, steps of 256).
        # When the counter wraps, a port held towards other destinations serves a new one
        # (conntrack needs only the reply tuple unique); one held by a flow to the same
        # destination is taken all the same: conntrack cannot confirm the clashing entry and
        # drops that first packet, and the packet sent again gets the next port (with every
        # port of the block held towards one destination, nothing new gets through to it).
        # Other protocols than UDP get a random port per destination.
        ports = ", ".join(f"{i} : {SEQUENTIAL_FIRST + i}" for i in range(SEQUENTIAL_PORTS))
        snat.append(
            f"{lan_out} meta l4proto udp masquerade to : "
            f"numgen inc mod {SEQUENTIAL_PORTS} map {{ {ports} }}"
        )
    snat.append(f"{lan_out} masquerade" + (" fully-random" if kind.startswith("symmetric") else ""))
    # `socket transparent 0` matches only when one of the router's own sockets holds the
    # destination port (miniupnpd's STUN sockets while it tests).
    for_the_router = (
        f'iifname "{wan_if}" ip saddr {{ {", ".join(stun_servers)} }} socket transparent 0'
    )
    prerouting = []
    if kind == "full-cone" and port_mapping:
        # Not turned to the LAN host by the catch-all below: it is an answer to the router.
        prerouting.append(f"{for_the_router} accept")
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
        f'        iifname "{wan_if}" ct status dnat accept\n'
        if kind == "full-cone" or port_mapping
        else ""
    )
    allow_stun = f"        {for_the_router} accept\n" if port_mapping else ""
    pre = "".join(f"        {rule}\n" for rule in prerouting)
    post = "".join(f"        {rule}\n" for rule in snat)
    return f"""
table ip lab_nat {{{learn}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
{pre}    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
{post}{hairpin_snat}    }}
}}
table ip lab_filter {{
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{wan_if}" udp dport {ECHO_PORT} accept
{allow_stun}        iifname "{wan_if}" ct state new drop
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
{allow_dnat}        iifname "{wan_if}" ct state new drop
    }}
}}
"""
