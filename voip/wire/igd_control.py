"""SOAP control of a UPnP IGD, sans-IO (UDA 1.1 §3.2, WANIPConnection §2): port mappings.

The requests that get the public address and add or delete a UDP port mapping, and their answers
or UPnP errors.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from xml.sax.saxutils import escape

from voip.wire.igd_description import IgdService
from voip.wire.upnp import UpnpParseError
from voip.wire.upnp import printable
from voip.wire.upnp_http import TOKEN
from voip.wire.upnp_http import HttpResponse
from voip.wire.upnp_xml import child_text
from voip.wire.upnp_xml import xml_untrusted

DESCRIPTION = "callpeer"  # NewPortMappingDescription: what the router's mapping list shows
MAX_LEASE = 604800  # s: IGD:2's longest lease (WANIPConnection:2 §2.3.17); 0 means permanent
MAX_VALUE = 256  # characters of one SOAP output argument

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP_ENCODING = "http://schemas.xmlsoap.org/soap/encoding/"

# UPnP errors a port mapping may meet: UDA §3.2.2 (4xx, 5xx, 6xx) and WANIPConnection:1 §2.5 /
# WANIPConnection:2 §2.5 (7xx), with what they mean for a user.
ERRORS = {
    401: "Invalid Action (the router does not have this action)",
    402: "Invalid Args",
    501: "Action Failed",
    606: "Action not authorized (the router does not let this host map ports)",
    714: "NoSuchEntryInArray (no such mapping)",
    715: "WildCardNotPermittedInSrcIP",
    716: "WildCardNotPermittedInExtPort",
    718: "ConflictInMappingEntry (the port is mapped to another host)",
    724: "SamePortValuesRequired (external and internal ports must match)",
    725: "OnlyPermanentLeasesSupported",
    726: "RemoteHostOnlySupportsWildcard",
    727: "ExternalPortOnlySupportsWildcard",
    728: "NoPortMapsAvailable (the router has no free port left)",
    729: "ConflictWithOtherMechanisms (the port is taken by other means)",
    732: "WildCardNotPermittedInIntPort",
}
CONFLICT_IN_MAPPING_ENTRY = 718
ONLY_PERMANENT_LEASES = 725
NO_SUCH_ENTRY = 714
CONFLICT_WITH_OTHER_MECHANISMS = 729


@dataclass(frozen=True)
class SoapAnswer:
    """A control action's answer: its output arguments, or the UPnP error it failed with."""

    action: str
    values: dict[str, str] = field(default_factory=dict)  # e.g. NewExternalIPAddress
    error_code: int | None = None
    error_description: str = ""  # the router's words, printable, cut short

    @property
    def ok(self) -> bool:
        return self.error_code is None

    def reason(self) -> str:
        if self.error_code is None:
            return f"{self.action}: done"
        known = ERRORS.get(self.error_code)
        words = known or self.error_description or "an error UPnP does not name"
        return f"{self.action}: UPnP error {self.error_code}, {words}"


def soap_request(service: IgdService, action: str, args: Sequence[tuple[str, str]]) -> bytes:
    """An HTTP POST of a SOAP action to the service's controlURL (UDA §3.2.1), the arguments
    in the order the service's description gives them (some routers read them by position)."""
    if not TOKEN.fullmatch(action) or not all(TOKEN.fullmatch(name) for name, _ in args):
        raise ValueError(f"not an action or argument name: {action!r}")
    inner = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in args)
    body = (
        '<?xml version="1.0"?>\r\n'
        f'<s:Envelope xmlns:s="{SOAP_ENV}" s:encodingStyle="{SOAP_ENCODING}">'
        f'<s:Body><u:{action} xmlns:u="{service.service_type}">{inner}</u:{action}></s:Body>'
        "</s:Envelope>\r\n"
    ).encode()
    url = service.control
    head = (
        f"POST {url.target} HTTP/1.1\r\n"
        f"Host: {url.host}:{url.port}\r\n"
        'Content-Type: text/xml; charset="utf-8"\r\n'
        f'SOAPAction: "{service.service_type}#{action}"\r\n'
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode("ascii")
    return head + body


def get_external_ip_request(service: IgdService) -> bytes:
    """GetExternalIPAddress: the router's public address (answered as NewExternalIPAddress)."""
    return soap_request(service, "GetExternalIPAddress", [])


def add_port_mapping_request(
    service: IgdService,
    *,
    external_port: int,
    internal_client: str,
    internal_port: int,
    lease: int,
    any_port: bool = False,
    description: str = DESCRIPTION,
) -> bytes:
    """AddPortMapping for UDP from any remote host: the router's `external_port` to
    `internal_client`:`internal_port` for `lease` s (0: permanent, where the router allows
    it). With `any_port` (IGD:2 only), AddAnyPortMapping: the router may pick another external
    port when ours is taken, and says which (NewReservedPort)."""
    _check_port(external_port)
    _check_port(internal_port)
    ipaddress.IPv4Address(internal_client)
    if not 0 <= lease <= MAX_LEASE:
        raise ValueError(f"a UPnP lease is 0-{MAX_LEASE} s")
    if any_port and service.version < 2:
        raise ValueError("AddAnyPortMapping is WANIPConnection:2's")
    action = "AddAnyPortMapping" if any_port else "AddPortMapping"
    args = [
        ("NewRemoteHost", ""),
        ("NewExternalPort", str(external_port)),
        ("NewProtocol", "UDP"),
        ("NewInternalPort", str(internal_port)),
        ("NewInternalClient", internal_client),
        ("NewEnabled", "1"),
        ("NewPortMappingDescription", description),
        ("NewLeaseDuration", str(lease)),
    ]
    return soap_request(service, action, args)


def delete_port_mapping_request(service: IgdService, external_port: int) -> bytes:
    """DeletePortMapping of the UDP mapping of the router's `external_port`."""
    _check_port(external_port)
    args = [("NewRemoteHost", ""), ("NewExternalPort", str(external_port)), ("NewProtocol", "UDP")]
    return soap_request(service, "DeletePortMapping", args)


def parse_soap_answer_untrusted(response: HttpResponse, action: str) -> SoapAnswer:
    """The answer to `action`: HTTP 200 with <actionResponse> and its output arguments, or
    HTTP 500 with a SOAP fault whose detail is a UPnPError (UDA §3.2.2). UpnpParseError for
    any other status or anything malformed."""
    if response.status not in (200, 500):
        raise UpnpParseError(f"HTTP {response.status} {response.reason}".strip())
    root = xml_untrusted(response.body, f"the answer to {action}")
    if root.tag != "Envelope":
        raise UpnpParseError(f"a SOAP answer whose root is <{root.tag}>, not <Envelope>")
    if response.status == 500:
        error = next(root.iter("UPnPError"), None)
        code_text = child_text(error, "errorCode") if error is not None else ""
        if not code_text.isdigit() or len(code_text) > 4:
            raise UpnpParseError(f"HTTP 500 without a UPnP error code for {action}")
        words = printable(child_text(error, "errorDescription")) if error is not None else ""
        return SoapAnswer(action, error_code=int(code_text), error_description=words)
    answer = next(root.iter(f"{action}Response"), None)
    if answer is None:
        raise UpnpParseError(f"a SOAP answer without <{action}Response>")
    values: dict[str, str] = {}
    for arg in answer:
        text = (arg.text or "").strip()
        if len(arg) or len(text) > MAX_VALUE:
            raise UpnpParseError(f"an output argument <{arg.tag}> that is not a short value")
        values[arg.tag] = text
    return SoapAnswer(action, values)


def external_ip_untrusted(answer: SoapAnswer) -> str | None:
    """GetExternalIPAddress's NewExternalIPAddress as an IPv4 address; None when the router
    does not know it (the empty string, WANIPConnection:2 §2.3.13, or 0.0.0.0)."""
    text = answer.values.get("NewExternalIPAddress", "")
    if text in ("", "0.0.0.0"):  # noqa: S104
        return None
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise UpnpParseError("a NewExternalIPAddress that is not an IPv4 address") from None


def reserved_port_untrusted(answer: SoapAnswer) -> int:
    """AddAnyPortMapping's NewReservedPort: the external port the router mapped."""
    text = answer.values.get("NewReservedPort", "")
    if not text.isdigit() or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise UpnpParseError("a NewReservedPort that is not a port")
    return int(text)


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"not a port: {port}")
