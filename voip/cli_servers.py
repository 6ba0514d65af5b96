"""Where a call's rendezvous servers are: --server (repeatable) or config 'server', resolved."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from rich.console import Console

from rendezvous.local import DEFAULT_SERVER
from rendezvous.local import find_or_host
from voip.cli_output import UsageError
from voip.transport import resolve_all
from voip.wire.candidates import format_address
from voip.wire.candidates import parse_address
from voip.wire.stun import Address


@dataclass
class Servers:
    """The addresses in order (a name's several addresses in the resolver's order), each once;
    the name each one's TLS certificate must carry; a rendezvous hosted in this process."""

    addresses: list[Address] = field(default_factory=list)
    names: dict[Address, str] = field(default_factory=dict)
    hosted: Any = None  # the RendezvousServer hosted here, to close after the call

    def describe(self) -> str:
        first, *others = (format_address(a) for a in self.addresses)
        return first + (f" (then {', '.join(others)} if it stops answering)" if others else "")


def tls_name(host: str | None) -> str | None:
    """The name a server's TLS certificate must carry: the host as typed, unless it is an IP
    address (then the certificate must carry that address)."""
    if host is None:
        return None
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    return None


async def call_servers(
    typed: list[str] | None, configured: tuple[str, ...], err: Console
) -> Servers:
    """--server as given (each HOST:PORT checked before any is looked up), else config 'server',
    else the default rendezvous, hosted here if none answers there; UsageError naming a bad one."""
    texts = typed or list(configured)
    if not texts:
        address, hosted = await find_or_host(DEFAULT_SERVER)
        if hosted is not None:
            err.print(
                f"no rendezvous answered on {format_address(DEFAULT_SERVER)}; hosting one in "
                "this process (it lives as long as this call)",
                highlight=False,
            )
        return Servers([address], {}, hosted)
    option = "--server" if typed else "config 'server'"
    parsed: list[tuple[str, int]] = []
    for text in texts:
        try:
            parsed.append(parse_address(text, default_port=3478))
        except ValueError as exc:
            raise UsageError(f"{option}: {exc}") from exc  # it names the address
    servers = Servers()
    for host, port in parsed:
        try:
            found = await resolve_all(host, port)
        except OSError as exc:
            why = exc.strerror or exc
            raise UsageError(f"{option}: cannot resolve {host!r}: {why}") from exc
        for address in found:
            if address not in servers.addresses:
                servers.addresses.append(address)
                if (name := tls_name(host)) is not None:
                    servers.names[address] = name
    return servers
