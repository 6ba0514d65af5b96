"""ICE candidates and their priorities (RFC 8445 §5.1.2, §6.1.2.3)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import IntEnum

from voip.wire.stun import Address


class CandidateType(IntEnum):
    HOST = 0
    SRFLX = 1  # server-reflexive: the NAT's public mapping, as the rendezvous saw it
    PRFLX = 2  # peer-reflexive: learned from a check that arrived from an unknown address
    RELAY = 3
    # A public port our router opened for us on request (PCP, NAT-PMP): RFC 8445 counts it as
    # server-reflexive; it has its own kind so a path found through it can be told apart.
    MAPPED = 4
    # A public port our NAT has not given yet, predicted from the last ones (a NAT that maps
    # per destination in sequence): server-reflexive too, guessed rather than seen.
    PREDICTED = 5


# RFC 8445 §5.1.2.2 recommended type preferences.
TYPE_PREFERENCE = {
    CandidateType.HOST: 126,
    CandidateType.PRFLX: 110,
    CandidateType.MAPPED: 105,  # open to anyone, unlike a srflx behind a filtering NAT
    CandidateType.PREDICTED: 101,  # a guess: below the mapped port, above what was seen
    CandidateType.SRFLX: 100,
    CandidateType.RELAY: 0,
}


def candidate_priority(
    kind: CandidateType, local_preference: int = 65535, component: int = 1
) -> int:
    """RFC 8445 §5.1.2.1: 2^24 * type pref + 2^8 * local pref + (256 - component ID)."""
    return (TYPE_PREFERENCE[kind] << 24) + (local_preference << 8) + (256 - component)


def pair_priority(controlling: int, controlled: int) -> int:
    """RFC 8445 §6.1.2.3: 2^32 * MIN(G,D) + 2 * MAX(G,D) + (G > D ? 1 : 0)."""
    g, d = controlling, controlled
    return (min(g, d) << 32) + 2 * max(g, d) + (1 if g > d else 0)


@dataclass(frozen=True)
class Candidate:
    kind: CandidateType
    address: Address
    priority: int

    @classmethod
    def make(
        cls, kind: CandidateType, address: Address, local_preference: int = 65535
    ) -> Candidate:
        return cls(kind, address, candidate_priority(kind, local_preference))

    def __str__(self) -> str:
        return f"{self.kind.name.lower()} {format_address(self.address)}"


def format_address(addr: Address) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(
    text: str, default_port: int | None = None, allow_any_port: bool = False
) -> Address:
    """'host:port', '[v6]:port' or (with a default port) a bare IP; raises ValueError clearly.

    `allow_any_port` accepts port 0, "any free port", which only makes sense for listening.
    """
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if text.startswith("["):
        if "]" not in text:
            raise ValueError(f"bad address {text!r}: missing ']'")
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif not sep or ":" in host:  # no colon, or a bare IPv6 address
        host, port_text = text, ""
    if not host:
        raise ValueError(f"bad address {text!r}: no host")
    if not port_text:
        if default_port is None:
            raise ValueError(f"bad address {text!r}: expected HOST:PORT")
        port = default_port
    else:
        lowest = 0 if allow_any_port else 1
        if not port_text.isdigit() or not lowest <= int(port_text) < 65536:
            raise ValueError(f"bad address {text!r}: port must be {lowest}-65535")
        port = int(port_text)
    return host, port


def is_usable_host_ip(ip: str) -> bool:
    """Host candidates worth offering: not loopback, link-local, multicast or unspecified."""
    addr = ipaddress.ip_address(ip)
    return not (addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_unspecified)
