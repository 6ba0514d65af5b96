"""SSDP discovery of an internet gateway, sans-IO (UDA 1.1 §1.3): the M-SEARCH and its answers.

An answer is taken only when its LOCATION is on the host the answer came from.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from voip.wire.upnp import IGD1
from voip.wire.upnp import IGD2
from voip.wire.upnp import WANIP1
from voip.wire.upnp import WANIP2
from voip.wire.upnp import WANPPP1
from voip.wire.upnp import UpnpParseError
from voip.wire.upnp import printable
from voip.wire.upnp_http import TOKEN
from voip.wire.upnp_http import HttpUrl
from voip.wire.upnp_http import head_untrusted
from voip.wire.upnp_http import parse_url_untrusted

SSDP_GROUP = "239.255.255.250"  # UDA 1.1 §1: SSDP's IPv4 multicast address and port
SSDP_PORT = 1900
MX = 1  # s a device may wait before answering a multicast M-SEARCH (1-5; UDA §1.3.2)

# What we search for: an IGD:2 answers a search for IGD:1 too (UDA §1.3.2, "devices MUST
# respond to M-SEARCH requests for any supported version"), but some answer only their own.
SEARCH_TARGETS = (IGD1, IGD2, WANIP1)
# SSDP answers we take: the types we searched for, and the ones devices say instead.
ANSWER_TYPES = (*SEARCH_TARGETS, WANIP2, WANPPP1)

MAX_SSDP = 2048  # bytes in an SSDP answer (one datagram; miniupnpd's are about 450)

_VERSIONED_TYPE = re.compile(r"(urn:schemas-upnp-org:(?:device|service):[A-Za-z]+):([1-9])")
_ANSWER_FAMILIES = {t.rsplit(":", 1)[0] for t in ANSWER_TYPES}


@dataclass(frozen=True)
class SsdpAnswer:
    """A device's answer to an M-SEARCH (UDA §1.3.3)."""

    location: HttpUrl  # its root device description, on the host that answered
    st: str  # the search target it answers for
    server: str = ""  # "OS/version UPnP/1.1 product/version", printable, cut short


def msearch(target: str, *, host: str = SSDP_GROUP, port: int = SSDP_PORT) -> bytes:
    """An SSDP M-SEARCH for `target` (UDA §1.3.2). To the multicast group it carries MX (how
    long a device may wait before it answers); a unicast one, to `host`, carries none and is
    answered at once."""
    if not TOKEN.fullmatch(target.replace(":", "")):
        raise ValueError(f"not a search target: {target!r}")
    ipaddress.IPv4Address(host)  # raises ValueError for anything but an address
    lines = ["M-SEARCH * HTTP/1.1", f"HOST: {host}:{port}", 'MAN: "ssdp:discover"']
    if host == SSDP_GROUP:
        lines.append(f"MX: {MX}")
    lines += [f"ST: {target}", "", ""]
    return "\r\n".join(lines).encode("ascii")


def parse_ssdp_answer_untrusted(data: bytes, source_ip: str) -> SsdpAnswer:
    """An answer to our M-SEARCH that came from `source_ip`. Its LOCATION must be an http URL
    on `source_ip` itself; UpnpParseError for that, for any other host, and for anything
    that is not an answer for an IGD or one of its connection services."""
    if len(data) > MAX_SSDP:
        raise UpnpParseError(f"an SSDP answer over {MAX_SSDP} bytes")
    head, sep, _ = data.partition(b"\r\n\r\n")
    if not sep:
        raise UpnpParseError("an SSDP answer without the blank line that ends its headers")
    status, _, headers = head_untrusted(head)
    if status != 200:
        raise UpnpParseError(f"SSDP status {status}, not 200")
    st = headers.get("st", "")
    if _unversioned(st) not in _ANSWER_FAMILIES:  # any version of the types we take
        raise UpnpParseError("an SSDP answer for something other than an internet gateway")
    if "location" not in headers:
        raise UpnpParseError("an SSDP answer without LOCATION")
    location = parse_url_untrusted(headers["location"], host=source_ip)
    return SsdpAnswer(location, st, printable(headers.get("server", "")))


def _unversioned(service_type: str) -> str | None:
    match = _VERSIONED_TYPE.fullmatch(service_type)
    return match.group(1) if match else None
