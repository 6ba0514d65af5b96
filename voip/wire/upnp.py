"""Asking the router for a port mapping with UPnP IGD, sans-IO: SSDP, the device description and
SOAP control, as UPnP Device Architecture 1.1 (UDA) lays them out for an InternetGatewayDevice
(IGD:1 and IGD:2) and its WANIPConnection:1/:2 or WANPPPConnection:1 service.

1. Discovery (UDA §1.3): an SSDP M-SEARCH (`msearch`), HTTP over UDP, to 239.255.255.250:1900
   and to the gateway's port 1900; the gateway answers from port 1900 with a LOCATION
   (`parse_ssdp_answer_untrusted`), an http URL of its device description.
2. Description (UDA §2.3): `http_get` of that URL, and `parse_description_untrusted` of its XML
   for the connection services and their controlURLs.
3. Control (UDA §3.2): SOAP 1.1 over HTTP POST (`get_external_ip_request`,
   `add_port_mapping_request`, `delete_port_mapping_request`), answered by a SOAP response or
   by a SOAP fault that carries a UPnPError errorCode (`parse_soap_answer_untrusted`).

Everything here comes from the LAN, unauthenticated: any host there can answer an M-SEARCH, and
the router's answers are as hostile as anyone's. So every parser is `*_untrusted`, caps its
input (MAX_SSDP, MAX_HEAD, MAX_BODY, MAX_XML with MAX_DEPTH and MAX_ELEMENTS), raises
UpnpParseError and nothing else, and URLs are held to the address we asked: a LOCATION must be
an http URL whose host is the address the SSDP answer came from, and a controlURL (after
URLBase) must be on that same host, so nothing an answer says can send us anywhere else. Every
URL path that goes on a request line is printable ASCII without spaces (no header injection).

XML is parsed with the standard library's expat feeding an ElementTree TreeBuilder, with any
document type declaration refused: without a DTD no entity can be declared, so none is ever
expanded (no billion laughs, no external entity fetched). That is what defusedxml's
forbid_dtd does, in a few lines and without a dependency. Names are kept without their
namespace prefix, which is all the lookups here need.
"""

from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from urllib.parse import urljoin
from urllib.parse import urlsplit
from xml.parsers import expat
from xml.sax.saxutils import escape

SSDP_GROUP = "239.255.255.250"  # UDA 1.1 §1: SSDP's IPv4 multicast address and port
SSDP_PORT = 1900
MX = 1  # s a device may wait before answering a multicast M-SEARCH (1-5; UDA §1.3.2)

DEVICE = "urn:schemas-upnp-org:device:"
SERVICE = "urn:schemas-upnp-org:service:"
IGD1 = DEVICE + "InternetGatewayDevice:1"
IGD2 = DEVICE + "InternetGatewayDevice:2"
WANIP1 = SERVICE + "WANIPConnection:1"
WANIP2 = SERVICE + "WANIPConnection:2"
WANPPP1 = SERVICE + "WANPPPConnection:1"
# What we search for: an IGD:2 answers a search for IGD:1 too (UDA §1.3.2, "devices MUST
# respond to M-SEARCH requests for any supported version"), but some answer only their own.
SEARCH_TARGETS = (IGD1, IGD2, WANIP1)
# The services that map ports, best first: IGD:2's has AddAnyPortMapping (the router picks a
# free port when ours is taken); a PPP one is an IGD:1 on a PPPoE link.
SERVICE_TYPES = (WANIP2, WANIP1, WANPPP1)
# SSDP answers we take: the types we searched for, and the ones devices say instead.
ANSWER_TYPES = (*SEARCH_TARGETS, WANIP2, WANPPP1)

DESCRIPTION = "callpeer"  # NewPortMappingDescription: what the router's mapping list shows
MAX_LEASE = 604800  # s: IGD:2's longest lease (WANIPConnection:2 §2.3.17); 0 means permanent

MAX_SSDP = 2048  # bytes in an SSDP answer (one datagram; miniupnpd's are about 450)
MAX_HEAD = 8192  # bytes of an HTTP answer's status line and headers
MAX_BODY = 65536  # bytes of an HTTP answer's body (miniupnpd's description is about 3100)
MAX_RESPONSE = MAX_HEAD + 2 * MAX_BODY  # bytes read for one HTTP answer, chunk framing and all
MAX_XML = MAX_BODY
MAX_DEPTH = 24  # nested XML elements (a description nests about ten)
MAX_ELEMENTS = 4096  # XML elements in one document
MAX_URL = 512  # characters in a URL we would fetch or post to
MAX_VALUE = 256  # characters of one SOAP output argument
MAX_TEXT = 120  # characters of a server's words (SERVER, errorDescription) we repeat to users

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

_STATUS_LINE = re.compile(r"HTTP/1\.[01] ([1-5][0-9][0-9])(?: (.*))?")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_REQUEST_TARGET = re.compile(r"/[\x21-\x7e]*")  # printable ASCII, no space, from the root
_VERSIONED_TYPE = re.compile(r"(urn:schemas-upnp-org:(?:device|service):[A-Za-z]+):([1-9])")
_HEX = re.compile(rb"[0-9a-fA-F]{1,8}")
_ANSWER_FAMILIES = {t.rsplit(":", 1)[0] for t in ANSWER_TYPES}


class UpnpParseError(ValueError):
    """Bytes or text from the LAN that are not a UPnP answer we can use (or point elsewhere)."""


@dataclass(frozen=True)
class HttpUrl:
    """An http URL on the gateway: `target` is what goes on the request line."""

    host: str  # an IPv4 literal
    port: int
    target: str  # path and query, from "/"

    def __str__(self) -> str:
        return f"http://{self.host}:{self.port}{self.target}"


@dataclass(frozen=True)
class SsdpAnswer:
    """A device's answer to an M-SEARCH (UDA §1.3.3)."""

    location: HttpUrl  # its root device description, on the host that answered
    st: str  # the search target it answers for
    server: str = ""  # "OS/version UPnP/1.1 product/version", printable, cut short


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


@dataclass(frozen=True)
class HttpResponse:
    status: int
    reason: str
    headers: dict[str, str]  # names lower-cased; a repeated one keeps its last value
    body: bytes


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


# -- discovery ------------------------------------------------------------------------------


def msearch(target: str, *, host: str = SSDP_GROUP, port: int = SSDP_PORT) -> bytes:
    """An SSDP M-SEARCH for `target` (UDA §1.3.2). To the multicast group it carries MX (how
    long a device may wait before it answers); a unicast one, to `host`, carries none and is
    answered at once."""
    if not _TOKEN.fullmatch(target.replace(":", "")):
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
    status, _, headers = _head_untrusted(head)
    if status != 200:
        raise UpnpParseError(f"SSDP status {status}, not 200")
    st = headers.get("st", "")
    if _unversioned(st) not in _ANSWER_FAMILIES:  # any version of the types we take
        raise UpnpParseError("an SSDP answer for something other than an internet gateway")
    if "location" not in headers:
        raise UpnpParseError("an SSDP answer without LOCATION")
    location = parse_url_untrusted(headers["location"], host=source_ip)
    return SsdpAnswer(location, st, _printable(headers.get("server", "")))


def parse_url_untrusted(text: str, *, host: str) -> HttpUrl:
    """An absolute http URL whose host is the IPv4 address `host`; UpnpParseError otherwise."""
    if len(text) > MAX_URL or not text.isascii() or not text.isprintable():
        raise UpnpParseError("a URL too long or with characters a URL does not have")
    try:
        parts = urlsplit(text.strip())
        port = parts.port or 80
    except ValueError as error:  # a port out of range, a bad IPv6 literal
        raise UpnpParseError(f"not a URL: {error}") from None
    if parts.scheme.lower() != "http":
        raise UpnpParseError(f"a {parts.scheme or 'relative'} URL, not http")
    if parts.username is not None or parts.password is not None:
        raise UpnpParseError("a URL with a user name or password")
    if parts.hostname != host:
        raise UpnpParseError(f"a URL on another host than {host}, which answered")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not _REQUEST_TARGET.fullmatch(target):
        raise UpnpParseError("a URL path with spaces or characters a request line cannot carry")
    return HttpUrl(host, port, target)


# -- HTTP ---------------------------------------------------------------------------------


def http_get(url: HttpUrl) -> bytes:
    """An HTTP/1.1 GET of `url`, asking the server to close the connection after answering."""
    head = f"GET {url.target} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nConnection: close\r\n\r\n"
    return head.encode("ascii")


def parse_http_response_untrusted(data: bytes, *, eof: bool) -> HttpResponse | None:
    """The HTTP answer in `data`, everything received so far; None while more is needed
    (before `eof`). The body is framed by Content-Length, chunked transfer coding, or the end
    of the connection. UpnpParseError past the caps or for anything malformed."""
    if len(data) > MAX_RESPONSE:
        raise UpnpParseError(f"an HTTP answer over {MAX_RESPONSE} bytes")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HEAD:
            raise UpnpParseError(f"HTTP headers over {MAX_HEAD} bytes")
        if eof:
            raise UpnpParseError("the connection closed before the HTTP headers ended")
        return None
    if end > MAX_HEAD:
        raise UpnpParseError(f"HTTP headers over {MAX_HEAD} bytes")
    status, reason, headers = _head_untrusted(data[:end])
    rest = data[end + 4 :]
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _dechunk_untrusted(rest, eof=eof)
    elif "content-length" in headers:
        length_text = headers["content-length"]
        if not length_text.isdigit() or len(length_text) > 9:
            raise UpnpParseError("a Content-Length that is not a number")
        length = int(length_text)
        if length > MAX_BODY:
            raise UpnpParseError(f"an HTTP body over {MAX_BODY} bytes")
        if len(rest) < length:
            if eof:
                raise UpnpParseError("the connection closed before the HTTP body ended")
            return None
        body = rest[:length]
    else:  # the body runs to the end of the connection
        if len(rest) > MAX_BODY:
            raise UpnpParseError(f"an HTTP body over {MAX_BODY} bytes")
        body = rest if eof else None
    if body is None:
        return None
    return HttpResponse(status, reason, headers, body)


def _head_untrusted(head: bytes) -> tuple[int, str, dict[str, str]]:
    """Status, reason and headers of an HTTP (or SSDP) answer's head, without its blank line."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise UpnpParseError("HTTP headers that are not ASCII") from None
    lines = text.split("\r\n")
    status_line = _STATUS_LINE.fullmatch(lines[0])
    if status_line is None:
        raise UpnpParseError("not an HTTP/1.x status line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise UpnpParseError("a malformed HTTP header line")
        headers[name.lower()] = value.strip()
    return int(status_line.group(1)), _printable(status_line.group(2) or ""), headers


def _dechunk_untrusted(data: bytes, *, eof: bool) -> bytes | None:
    """A chunked body (RFC 9112 §7.1), or None while it has not ended; trailers are dropped."""
    body = bytearray()
    at = 0
    while True:
        line_end = data.find(b"\r\n", at)
        if line_end < 0:
            if len(data) - at > 64:
                raise UpnpParseError("a chunk size line too long")
            break
        size_text = data[at:line_end].split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_text):
            raise UpnpParseError("a chunk size that is not hexadecimal")
        size = int(size_text, 16)
        if size == 0:
            return bytes(body)  # trailers, if any, are not needed
        if len(body) + size > MAX_BODY:
            raise UpnpParseError(f"an HTTP body over {MAX_BODY} bytes")
        start = line_end + 2
        if len(data) < start + size + 2:
            break
        if data[start + size : start + size + 2] != b"\r\n":
            raise UpnpParseError("a chunk that does not end where its size says")
        body += data[start : start + size]
        at = start + size + 2
    if eof:
        raise UpnpParseError("the connection closed inside a chunked body")
    return None


# -- the device description -----------------------------------------------------------------


def parse_description_untrusted(body: bytes, location: HttpUrl) -> list[IgdService]:
    """The services of a root device description (UDA §2.3) that map ports, best first (see
    SERVICE_TYPES), each with its controlURL resolved against URLBase or `location` and held
    to `location`'s host. UpnpParseError if there is none, or for anything malformed."""
    root = _xml_untrusted(body, "the device description")
    if root.tag != "root":
        raise UpnpParseError(f"a device description whose root is <{root.tag}>, not <root>")
    base = str(location)
    url_base = root.find("URLBase")
    if url_base is not None and (url_base.text or "").strip():
        base = (url_base.text or "").strip()
        parse_url_untrusted(base, host=location.host)  # a base on another host is refused
    found: list[IgdService] = []
    for service in root.iter("service"):
        service_type = _child_text(service, "serviceType")
        control = _child_text(service, "controlURL")
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


# -- SOAP control ---------------------------------------------------------------------------


def soap_request(service: IgdService, action: str, args: Sequence[tuple[str, str]]) -> bytes:
    """An HTTP POST of a SOAP action to the service's controlURL (UDA §3.2.1), the arguments
    in the order the service's description gives them (some routers read them by position)."""
    if not _TOKEN.fullmatch(action) or not all(_TOKEN.fullmatch(name) for name, _ in args):
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
    root = _xml_untrusted(response.body, f"the answer to {action}")
    if root.tag != "Envelope":
        raise UpnpParseError(f"a SOAP answer whose root is <{root.tag}>, not <Envelope>")
    if response.status == 500:
        error = next(root.iter("UPnPError"), None)
        code_text = _child_text(error, "errorCode") if error is not None else ""
        if not code_text.isdigit() or len(code_text) > 4:
            raise UpnpParseError(f"HTTP 500 without a UPnP error code for {action}")
        words = _printable(_child_text(error, "errorDescription")) if error is not None else ""
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


# -- XML ------------------------------------------------------------------------------------


def _xml_untrusted(data: bytes, what: str) -> ET.Element:
    """`data` as an element tree, tags without their namespace prefixes. A DTD is refused
    (so no entity is ever declared or expanded), and so are documents past the caps."""
    if len(data) > MAX_XML:
        raise UpnpParseError(f"{what}: over {MAX_XML} bytes")
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    depth = elements = 0

    def start(name: str, _attributes: dict[str, str]) -> None:
        nonlocal depth, elements
        depth += 1
        elements += 1
        if depth > MAX_DEPTH or elements > MAX_ELEMENTS:
            raise UpnpParseError(f"{what}: nested too deep or too many elements")
        builder.start(_local(name), {})

    def end(name: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(_local(name))

    def refuse_dtd(*_: object) -> None:
        raise UpnpParseError(f"{what}: a document type declaration (refused, and its entities)")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_dtd
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(data, True)
    except expat.ExpatError as error:
        raise UpnpParseError(f"{what}: not well-formed XML ({error})") from None
    return builder.close()  # expat saw every element closed


def _local(name: str) -> str:
    return name.rpartition(":")[2]


def _child_text(element: ET.Element, tag: str) -> str:
    child = element.find(tag)
    return (child.text or "").strip() if child is not None else ""


def _unversioned(service_type: str) -> str | None:
    match = _VERSIONED_TYPE.fullmatch(service_type)
    return match.group(1) if match else None


def _printable(text: str) -> str:
    """Someone else's words, safe to show: printable ASCII only, cut to MAX_TEXT."""
    kept = "".join(c for c in text if c.isascii() and c.isprintable())
    return kept[:MAX_TEXT]


def _check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ValueError(f"not a port: {port}")
