"""The gateway's device description, sans-IO (UDA 1.1 §2.3): its port-mapping services.

Those are WANIPConnection:1/:2 and WANPPPConnection:1, with control URLs held to the gateway.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urljoin

from voip.wire.upnp import WANIP1
from voip.wire.upnp import WANIP2
from voip.wire.upnp import WANPPP1
from voip.wire.upnp import UpnpParseError
from voip.wire.upnp_http import MAX_URL
from voip.wire.upnp_http import HttpUrl
from voip.wire.upnp_http import parse_url_untrusted
from voip.wire.upnp_xml import child_text
from voip.wire.upnp_xml import xml_untrusted

# The services that map ports, best first: IGD:2's has AddAnyPortMapping (the router picks a
# free port when ours is taken); a PPP one is an IGD:1 on a PPPoE link.
SERVICE_TYPES = (WANIP2, WANIP1, WANPPP1)


@dataclass(frozen=True)
class IgdService:
    """A connection service of the gateway that maps ports, and where to control it."""

    service_type: str  # one of SERVICE_TYPES
    control: HttpUrl

    @property
    def name(self) -> str:
        """ "WANIPConnection:2", for messages and reports."""
        return self.service_type.rsplit(":", 2)[-2] + ":" + self.version_text

    @property
    def version_text(self) -> str:
        return self.service_type.rsplit(":", 1)[1]

    @property
    def version(self) -> int:
        return int(self.version_text)


def parse_description_untrusted(body: bytes, location: HttpUrl) -> list[IgdService]:
    """The services of a root device description (UDA §2.3) that map ports, best first (see
    SERVICE_TYPES), each with its controlURL resolved against URLBase or `location` and held
    to `location`'s host. UpnpParseError if there is none, or for anything malformed."""
    root = xml_untrusted(body, "the device description")
    if root.tag != "root":
        raise UpnpParseError(f"a device description whose root is <{root.tag}>, not <root>")
    base = str(location)
    url_base = root.find("URLBase")
    if url_base is not None and (url_base.text or "").strip():
        base = (url_base.text or "").strip()
        parse_url_untrusted(base, host=location.host)  # a base on another host is refused
    found: list[IgdService] = []
    for service in root.iter("service"):
        service_type = child_text(service, "serviceType")
        control = child_text(service, "controlURL")
        if service_type not in SERVICE_TYPES or not control:
            continue
        if len(control) > MAX_URL or not control.isascii() or not control.isprintable():
            raise UpnpParseError("a controlURL too long or with characters a URL does not have")
        try:
            joined = urljoin(base, control)
        except ValueError as error:  # a bad IPv6 literal
            raise UpnpParseError(f"a controlURL that is not a URL: {error}") from None
        url = parse_url_untrusted(joined, host=location.host)
        found.append(IgdService(service_type, url))
    if not found:
        raise UpnpParseError(
            "the device description has no WANIPConnection or WANPPPConnection service"
        )
    return sorted(found, key=lambda s: SERVICE_TYPES.index(s.service_type))
