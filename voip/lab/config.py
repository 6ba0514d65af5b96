"""The lab's configuration (what to build) and its nodes (what was built)."""

from __future__ import annotations

from dataclasses import dataclass

from voip.lab.nat import NAT_KINDS
from voip.lab.netns import LabError
from voip.lab.port_mapping import NATPMP_PCP


@dataclass
class LabConfig:
    nat_a: str = "cone"
    nat_b: str = "cone"
    same_nat: bool = False  # b sits on a's LAN, behind a's router
    hairpin: bool = False  # routers turn packets for their own public addresses back inside
    delay_a: float = 0.0  # ms, one way, on the way in to a's link
    delay_b: float = 0.0
    delay_relay: float = 0.0
    delay_server: float = 0.0
    jitter: float = 0.0  # ms, uniform extra delay on a's and b's links
    loss: float = 0.0  # percent, on a's and b's links (each direction of a call once)
    udp_timeout: int | None = None  # s, conntrack UDP timeout on both routers (mapping lifetime)
    udp_timeout_a: int | None = None  # per router, overriding udp_timeout
    udp_timeout_b: int | None = None

    def timeout_for(self, side: str) -> int | None:
        own = self.udp_timeout_a if side == "a" else self.udp_timeout_b
        return own if own is not None else self.udp_timeout

    seed: int | None = None
    # The router runs miniupnpd: LAN hosts may ask it for port mappings (NAT-PMP, PCP on
    # 198.18.x.1:5351) once `Lab.start_port_mapping` has started it, the rendezvous being up.
    port_mapping_a: bool = False
    port_mapping_b: bool = False
    port_mapping_protocols: tuple[str, ...] = NATPMP_PCP  # or ("upnp",): UPnP IGD alone
    block_udp: tuple[str, ...] = ()  # sides whose router lets no UDP out, only TCP
    ipv6: bool = False  # every node an IPv6 address too (ipv6.py): no NAT, routers firewall

    def port_mapping_for(self, side: str) -> bool:
        return self.port_mapping_a if side == "a" else self.port_mapping_b

    def validate(self) -> None:
        for side, kind in (("a", self.nat_a), ("b", self.nat_b)):
            if kind not in NAT_KINDS:
                raise LabError(f"--nat-{side}: {kind!r} is not one of {', '.join(NAT_KINDS)}")
        if self.same_nat and self.nat_a == "none":
            raise LabError("same-NAT needs a NAT: --nat-a cannot be none")
        for name in ("delay_a", "delay_b", "delay_relay", "delay_server", "jitter"):
            if not 0 <= getattr(self, name) <= 10_000:
                raise LabError(f"{name.replace('_', '-')} must be 0-10000 ms")
        if not 0 <= self.loss <= 100:
            raise LabError("loss must be 0-100 %")
        for side, kind in (("a", self.nat_a), ("b", self.nat_b)):
            if self.port_mapping_for(side) and kind == "none":
                raise LabError(f"port mapping on {side} needs a router: nat_{side} cannot be none")
        if self.port_mapping_b and self.same_nat:
            raise LabError("port mapping on b needs b's own router; same-NAT puts b behind a's")
        for side in self.block_udp:
            if side not in ("a", "b") or {"a": self.nat_a, "b": self.nat_b}[side] == "none":
                raise LabError(f"blocking UDP needs side a or b with a router, not {side!r}")
            if side == "b" and self.same_nat:
                raise LabError("blocking UDP on b needs b's own router; same-NAT puts b behind a's")


@dataclass
class Node:
    ns: str
    ip: str  # its own address
    public_ip: str  # the address the internet sees for it
    nat: str  # the kind of NAT in front of it
    router_ns: str | None = None
    ip6: str | None = None  # its own IPv6 address, in a lab with IPv6 (no NAT: also public)
