"""Which peers a TURN relay may send to (RFC 8656 §21.1; IANA special-purpose address registries).

A relay that sends wherever a client asks is an open door into its own network: to services on
the relay host (its loopback, or its own public address where a service listens on 0.0.0.0), to
private networks beside it, and through IPv4-mapped IPv6 addresses to all of those again. So:

- the relay's own addresses are refused always (a relay on loopback that allows loopback peers
  excepted: there every peer is on its address); the relay reaches its own allocations inside
  itself, never through the network (rendezvous/turn_server.py);
- addresses that reach no one or everyone (unspecified, broadcast, multicast) are refused always,
  as coturn does since CVE-2020-26262;
- by default, every range the IANA registries mark "not globally reachable" is refused (the set
  coturn's documentation recommends for `denied-peer-ip`), including the documentation ranges;
  `allowed` opens a range again (`--allow-peer CIDR`), the one way to do so;
- IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64's well-known
  prefix, 6to4) are judged by the IPv4 address inside.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Never relayed to, whatever is allowed: no one, or everyone.
NEVER = _nets(
    "0.0.0.0/8",  # "this network" (RFC 791); 0.0.0.0 reaches the relay host itself
    "224.0.0.0/4",  # multicast (RFC 5771)
    "255.255.255.255/32",  # limited broadcast (RFC 919)
    "::/128",  # unspecified (RFC 4291)
    "ff00::/8",  # multicast (RFC 4291)
)
LOOPBACK = _nets("127.0.0.0/8", "::1/128")
OWN_CACHE = 4096  # peer addresses whose own-or-not answer is kept (a stranger can make more)
# IANA IPv4 and IPv6 Special-Purpose Address Registries, entries with "Globally Reachable: False"
# (RFC 6890 and its updates), refused unless allowed.
NOT_GLOBAL = _nets(
    "10.0.0.0/8",  # private (RFC 1918)
    "100.64.0.0/10",  # shared address space, carrier-grade NAT (RFC 6598)
    "169.254.0.0/16",  # link-local (RFC 3927)
    "172.16.0.0/12",  # private (RFC 1918)
    "192.0.0.0/24",  # IETF protocol assignments (RFC 6890)
    "192.0.2.0/24",  # TEST-NET-1 (RFC 5737)
    "192.88.99.0/24",  # deprecated 6to4 relay anycast (RFC 7526)
    "192.168.0.0/16",  # private (RFC 1918)
    "198.18.0.0/15",  # benchmarking (RFC 2544)
    "198.51.100.0/24",  # TEST-NET-2 (RFC 5737)
    "203.0.113.0/24",  # TEST-NET-3 (RFC 5737)
    "240.0.0.0/4",  # reserved (RFC 1112)
    "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation (RFC 8215)
    "100::/64",  # discard-only (RFC 6666)
    "2001::/23",  # IETF protocol assignments (RFC 2928)
    "2001:db8::/32",  # documentation (RFC 3849)
    "3fff::/20",  # documentation (RFC 9637)
    "5f00::/16",  # segment routing SIDs (RFC 9602)
    "fc00::/7",  # unique local (RFC 4193)
    "fe80::/10",  # link-local (RFC 4291)
)
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's well-known prefix
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated by RFC 4291, still routable inward


def embedded_ipv4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if it is one of the forms that carry one."""
    if isinstance(addr, ipaddress.IPv4Address):
        return None
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in NAT64 or (addr in IPV4_COMPATIBLE and int(addr) > 1):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def family_of(ip: str) -> int:
    """4 or 6, as XOR-PEER-ADDRESS carries it: an IPv4-mapped address is an IPv6 address on the
    wire, which an IPv4 allocation cannot take (RFC 8656 443, Peer Address Family Mismatch)."""
    return ipaddress.ip_address(ip).version


@dataclass
class PeerFilter:
    allowed: list[IPNetwork] = field(default_factory=list)
    own: set[IPAddress] = field(default_factory=set)  # the relay's own addresses
    allow_loopback: bool = False  # only for a relay that is itself on loopback
    _own_cache: dict[str, bool] = field(default_factory=dict, repr=False)

    def add_own(self, ips: Iterable[str]) -> None:
        self._own_cache.clear()
        for ip in ips:
            addr = ipaddress.ip_address(ip)
            # A relay on loopback that allows loopback peers shares its address with them all.
            if not addr.is_unspecified and not (self.allow_loopback and addr.is_loopback):
                self.own.add(addr)

    def is_own(self, ip: str) -> bool:
        """Whether `ip` (or the IPv4 address it carries) is one of the relay's own: asked for
        every relayed datagram, so the answers for recent peers are kept."""
        known = self._own_cache.get(ip)
        if known is None:
            if len(self._own_cache) >= OWN_CACHE:
                self._own_cache.clear()
            known = self._own_cache[ip] = self._is_own(ip)
        return known

    def _is_own(self, ip: str) -> bool:
        try:
            addr: IPAddress = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return addr in self.own or embedded_ipv4(addr) in self.own

    def refusal(self, ip: str) -> str | None:
        """Why a peer address may not be relayed to, or None when it may. Fixed text: it goes
        into reason phrases, which never echo what a client sent."""
        try:
            addr: IPAddress = ipaddress.ip_address(ip)
        except ValueError:
            return "not an IP address"
        judged = [addr]
        if (inner := embedded_ipv4(addr)) is not None:
            judged.append(inner)
        for a in judged:
            if why := self._refusal(a):
                return why
        return None

    def _refusal(self, addr: IPAddress) -> str | None:
        if any(addr in n for n in NEVER):
            return "unspecified, broadcast or multicast"
        loopback = any(addr in n for n in LOOPBACK)
        if loopback:
            return None if self.allow_loopback else "loopback"
        if addr in self.own:
            return "the relay's own address"
        if any(addr in n for n in self.allowed):
            return None
        if any(addr in n for n in NOT_GLOBAL):
            return "a special-purpose range that is not globally reachable"
        return None
