"""UPnP IGD's shared vocabulary (UDA 1.1, IGD:1/:2): the parse error, device and service types.

Asking the router for a port mapping with UPnP IGD, sans-IO, as UPnP Device Architecture 1.1
(UDA) lays it out for an InternetGatewayDevice (IGD:1 and IGD:2) and its WANIPConnection:1/:2 or
WANPPPConnection:1 service, in three steps, each a module of its own:

1. Discovery (UDA §1.3, voip.wire.ssdp): an SSDP M-SEARCH (`msearch`), HTTP over UDP, to
   239.255.255.250:1900 and to the gateway's port 1900; the gateway answers from port 1900
   with a LOCATION (`parse_ssdp_answer_untrusted`), an http URL of its device description.
2. Description (UDA §2.3, voip.wire.igd_description): `http_get` of that URL
   (voip.wire.upnp_http), and `parse_description_untrusted` of its XML for the connection
   services and their controlURLs.
3. Control (UDA §3.2, voip.wire.igd_control): SOAP 1.1 over HTTP POST
   (`get_external_ip_request`, `add_port_mapping_request`, `delete_port_mapping_request`),
   answered by a SOAP response or by a SOAP fault that carries a UPnPError errorCode
   (`parse_soap_answer_untrusted`).

Everything there comes from the LAN, unauthenticated: any host there can answer an M-SEARCH, and
the router's answers are as hostile as anyone's. So every parser is `*_untrusted`, caps its
input (MAX_SSDP, MAX_HEAD, MAX_BODY, MAX_XML with MAX_DEPTH and MAX_ELEMENTS), raises
UpnpParseError and nothing else, and URLs are held to the address we asked: a LOCATION must be
an http URL whose host is the address the SSDP answer came from, and a controlURL (after
URLBase) must be on that same host, so nothing an answer says can send us anywhere else. Every
URL path that goes on a request line is printable ASCII without spaces (no header injection).
"""

from __future__ import annotations

DEVICE = "urn:schemas-upnp-org:device:"
SERVICE = "urn:schemas-upnp-org:service:"
IGD1 = DEVICE + "InternetGatewayDevice:1"
IGD2 = DEVICE + "InternetGatewayDevice:2"
WANIP1 = SERVICE + "WANIPConnection:1"
WANIP2 = SERVICE + "WANIPConnection:2"
WANPPP1 = SERVICE + "WANPPPConnection:1"

MAX_TEXT = 120  # characters of a server's words (SERVER, errorDescription) we repeat to users


class UpnpParseError(ValueError):
    """Bytes or text from the LAN that are not a UPnP answer we can use (or point elsewhere)."""


def printable(text: str) -> str:
    """Someone else's words, safe to show: printable ASCII only, cut to MAX_TEXT."""
    kept = "".join(c for c in text if c.isascii() and c.isprintable())
    return kept[:MAX_TEXT]
