"""A lab router's set-up in its namespace: IP forwarding, no ICMP redirects, its NAT ruleset
(voip.lab.nat), its mapping lifetime (conntrack's UDP timeouts), and UDP blocked if asked."""

from __future__ import annotations

from collections.abc import Sequence

from voip.lab.nat import router_ruleset
from voip.lab.netns import run


def configure_router(
    router: str,
    kind: str,
    lan_hosts: list[str],
    *,
    wan_ip: str,
    hairpin: bool,
    port_mapping: bool,
    stun_servers: Sequence[str],
    udp_timeout: int | None,
    block_udp: bool = False,
) -> None:
    """Set up the namespace `router` (its "lan" and "wan" links already addressed) as a NAT
    of `kind` for `lan_hosts`; `udp_timeout` (s), when given, is its UDP mappings' lifetime;
    with `block_udp`, nothing its LAN sends over UDP reaches the internet."""
    run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=router)
    # A hairpinned packet leaves by the interface it came in on: no ICMP redirects.
    for conf in ("all", "default", "lan"):
        run(["sysctl", "-qw", f"net.ipv4.conf.{conf}.send_redirects=0"], ns=router)
    ruleset = router_ruleset(
        kind,
        lan_hosts,
        hairpin=hairpin,
        wan_ip=wan_ip,
        port_mapping=port_mapping,
        stun_servers=stun_servers,
    )
    run(["nft", "-f", "-"], ns=router, input_text=ruleset)
    if udp_timeout is not None:
        # Per namespace: each router keeps its own mapping lifetime.
        for key in ("nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"):
            run(["sysctl", "-qw", f"net.netfilter.{key}={udp_timeout}"], ns=router)
    if block_udp:
        run(["nft", "-f", "-"], ns=router, input_text=BLOCK_UDP)


# A hotel's or an office's network: only TCP gets out (IPv6 too: the table is inet). The router
# drops silently, as such firewalls mostly do, so a caller learns it only by hearing nothing.
# Its own packets (miniupnpd's STUN) are not forwarded, and pass.
BLOCK_UDP = """
table inet lab_block_udp {
    chain forward {
        type filter hook forward priority filter - 5; policy accept;
        iifname "lan" oifname "wan" meta l4proto udp drop
    }
}
"""
