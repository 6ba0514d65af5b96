"""What one rendezvous and relay will hold for strangers: every table a client can grow is capped.

Each cap is a `callpeer-rendezvous` option; the defaults fit one small public host. A request
past a cap gets 486 (this client's share is used up) or 508 (the server is full), as RFC 8656
answers for allocations, never a silent drop that would make the client retry.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    # the rendezvous
    names: int = 100_000  # registered names in all
    names_per_ip: int = 64  # names held from one public IP (a carrier-grade NAT shares one)
    candidates: int = 16  # host candidates kept per registration
    # names bound to keys (rendezvous/name_store.py): claims stay bound while seen, so a
    # stranger's are capped in all, per source and in time
    bindings: int = 1_000_000
    claims_per_ip: int = 64  # new names one public IP may claim in an hour
    claims_per_hour: int = 3_600  # new names from everyone together in an hour
    binding_days: int = 365  # a name unseen this long is released for anyone to claim
    # the relay (coturn's total-quota and user-quota, and per source address)
    allocations: int = 10_000
    allocations_per_user: int = 10
    allocations_per_ip: int = 32
    permissions_per_allocation: int = 64  # peer IPs
    channels_per_allocation: int = 64


# (option, field, help) for the command line; the defaults come from Limits.
OPTIONS = (
    ("--max-names", "names", "names registered in all"),
    ("--names-per-ip", "names_per_ip", "names held from one public IP address"),
    ("--max-candidates", "candidates", "host candidates kept per registration"),
    ("--max-bindings", "bindings", "names bound to keys in the store"),
    ("--claims-per-ip", "claims_per_ip", "new names one public IP may claim per hour"),
    ("--claims-per-hour", "claims_per_hour", "new names everyone together may claim per hour"),
    ("--forget-after", "binding_days", "days unseen after which a name is released"),
    ("--total-quota", "allocations", "relay allocations in all (coturn's total-quota)"),
    ("--quota", "allocations_per_user", "relay allocations per user (coturn's user-quota)"),
    ("--quota-per-ip", "allocations_per_ip", "relay allocations from one source IP address"),
    ("--max-permissions", "permissions_per_allocation", "peer IPs permitted per allocation"),
    ("--max-channels", "channels_per_allocation", "channels bound per allocation"),
)


def address_block(ip: str) -> str:
    """What one source is, for the caps per address: an IPv4 address, or the /64 an IPv6 one
    is in (one home or one phone holds a whole /64, RFC 6177)."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return ip
    return str(ipaddress.ip_network(f"{addr}/64", strict=False))
