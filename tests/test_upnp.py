"""UPnP IGD: SSDP, the device description and SOAP (voip.wire.ssdp, igd_description,
igd_control, upnp_http, upnp_xml) as bytes, hostile inputs refused, and the asyncio client
(voip.nat.upnp_client) against a fake IGD on 127.0.0.1 that answers with what miniupnpd
answered.

The answers in tests/captures/miniupnpd/ are miniupnpd 2.3.1's (Debian's miniupnpd-nftables),
captured in the lab (tests/test_lab_upnp.py's router, 198.18.1.1, asked by 198.18.1.2) and kept
byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import socket
import time
from collections.abc import Callable
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from typing import ParamSpec

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from voip.nat.upnp_client import DISCOVERY_WAIT
from voip.nat.upnp_client import Discovery
from voip.nat.upnp_client import UpnpError
from voip.nat.upnp_client import UpnpMapping
from voip.nat.upnp_client import discover
from voip.nat.upnp_client import map_port
from voip.wire.igd_control import add_port_mapping_request
from voip.wire.igd_control import delete_port_mapping_request
from voip.wire.igd_control import external_ip_untrusted
from voip.wire.igd_control import get_external_ip_request
from voip.wire.igd_control import parse_soap_answer_untrusted
from voip.wire.igd_control import reserved_port_untrusted
from voip.wire.igd_description import IgdService
from voip.wire.igd_description import parse_description_untrusted
from voip.wire.ssdp import MAX_SSDP
from voip.wire.ssdp import msearch
from voip.wire.ssdp import parse_ssdp_answer_untrusted
from voip.wire.upnp import IGD1
from voip.wire.upnp import WANIP1
from voip.wire.upnp import WANIP2
from voip.wire.upnp import WANPPP1
from voip.wire.upnp import UpnpParseError
from voip.wire.upnp_http import MAX_BODY
from voip.wire.upnp_http import HttpResponse
from voip.wire.upnp_http import HttpUrl
from voip.wire.upnp_http import http_get
from voip.wire.upnp_http import parse_http_response_untrusted
from voip.wire.upnp_xml import MAX_DEPTH

GATEWAY = "198.18.1.1"
HOST = "198.18.1.2"
LOCATION = HttpUrl(GATEWAY, 5000, "/rootDesc.xml")
CONTROL_V2 = IgdService(WANIP2, HttpUrl(GATEWAY, 5000, "/ctl/IPConn"))

# -- miniupnpd's answers, as captured ------------------------------------------------------

CAPTURES = Path(__file__).parent / "captures" / "miniupnpd"


def captured(name: str) -> bytes:
    """The capture tests/captures/miniupnpd/`name`.http, byte for byte."""
    return (CAPTURES / f"{name}.http").read_bytes()


# miniupnpd 2.3.1's answer to the unicast M-SEARCH for IGD:1 (it is an IGD:2)
SSDP_ANSWER = captured("ssdp_answer")
# GET /rootDesc.xml: Debian's build describes an IGD:2 with WANIPConnection:2
DESCRIPTION_V2 = captured("description_v2")
# the same with force_igd_desc_v1=yes: IGD:1, WANIPConnection:1
DESCRIPTION_V1 = captured("description_v1")
# GetExternalIPAddress (the address miniupnpd learned by STUN)
EXTERNAL_IP = captured("external_ip")
# AddPortMapping done
ADD_OK = captured("add_ok")
# AddAnyPortMapping done, on the port asked for
ADD_ANY_OK = captured("add_any_ok")
# DeletePortMapping done
DELETE_OK = captured("delete_ok")
# AddPortMapping for another host's address (secure_mode refuses it)
FAULT_718 = captured("fault_718")
# an action miniupnpd does not have
FAULT_401 = captured("fault_401")


def body_of(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


def edit(response: bytes, old: bytes, new: bytes) -> bytes:
    """`response` with `old` in its body made `new`, and its Content-Length to match."""
    head, _, body = response.partition(b"\r\n\r\n")
    assert old in body
    body = body.replace(old, new)
    head = re.sub(rb"Content-Length: \d+", b"Content-Length: %d" % len(body), head)
    return head + b"\r\n\r\n" + body


def http(response: bytes) -> HttpResponse:
    parsed = parse_http_response_untrusted(response, eof=True)
    assert parsed is not None
    return parsed


def description(services: str, *, url_base: str = "") -> bytes:
    """A root device description holding `services` (service elements)."""
    base = f"<URLBase>{url_base}</URLBase>" if url_base else ""
    return (
        '<?xml version="1.0"?><root xmlns="urn:schemas-upnp-org:device-1-0">'
        f"<specVersion><major>1</major><minor>0</minor></specVersion>{base}<device>"
        f"<deviceType>{IGD1}</deviceType><serviceList>{services}</serviceList>"
        "</device></root>"
    ).encode()


def service(service_type: str, control: str) -> str:
    kind = f"<serviceType>{service_type}</serviceType>"
    return f"<service>{kind}<controlURL>{control}</controlURL></service>"


# -- SSDP -----------------------------------------------------------------------------------


def test_msearch_is_laid_out_as_uda_says() -> None:
    assert msearch(IGD1) == (
        b"M-SEARCH * HTTP/1.1\r\n"
        b"HOST: 239.255.255.250:1900\r\n"
        b'MAN: "ssdp:discover"\r\n'
        b"MX: 1\r\n"
        b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
        b"\r\n"
    )
    # Unicast (UDA 1.1 §1.3.2): to the device's own address, and no MX.
    assert msearch(WANIP1, host=GATEWAY) == (
        b"M-SEARCH * HTTP/1.1\r\n"
        b"HOST: 198.18.1.1:1900\r\n"
        b'MAN: "ssdp:discover"\r\n'
        b"ST: urn:schemas-upnp-org:service:WANIPConnection:1\r\n"
        b"\r\n"
    )
    with pytest.raises(ValueError, match="search target"):
        msearch("ssdp:all\r\nX: 1")


def test_miniupnpds_ssdp_answer_points_at_its_description() -> None:
    answer = parse_ssdp_answer_untrusted(SSDP_ANSWER, GATEWAY)
    assert answer.location == LOCATION
    assert str(answer.location) == "http://198.18.1.1:5000/rootDesc.xml"
    assert answer.st == IGD1
    assert answer.server == "Debian/6.18.44-fc-v595 UPnP/1.1 MiniUPnPd/2.3.1"


@pytest.mark.parametrize(
    ("change", "error"),
    [
        # The answer came from the gateway, but sends us to another host: never fetched.
        ((b"198.18.1.1:5000", b"198.18.1.7:5000"), "another host"),
        ((b"http://198.18.1.1:5000", b"http://evil.example:5000"), "another host"),
        ((b"http://198.18.1.1:5000", b"http://198.18.1.1.:5000"), "another host"),
        ((b"http://198.18.1.1:5000", b"http://user@198.18.1.1:5000"), "user name"),
        ((b"http://", b"https://"), "not http"),
        ((b"http://", b"file://"), "not http"),
        ((b"http://198.18.1.1:5000", b""), "not http"),
        ((b":5000/", b":99999/"), "not a URL"),
        ((b"/rootDesc.xml", b"/root Desc.xml"), "request line"),
        ((b"/rootDesc.xml", b"/rootDesc.xml\tHost: x"), "characters"),
        ((b"LOCATION: http://198.18.1.1:5000/rootDesc.xml\r\n", b""), "without LOCATION"),
        ((b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found"), "status 404"),
        ((b"HTTP/1.1 200 OK", b"NOTIFY * HTTP/1.1"), "status line"),
        ((b"InternetGatewayDevice:1\r\nUSN", b"MediaRenderer:1\r\nUSN"), "internet gateway"),
        ((b"\r\n\r\n", b"\r\n"), "blank line"),
        ((b"EXT:", b"EXT"), "malformed"),
        ((b"CACHE", "CÄCHE".encode()), "ASCII"),
    ],
)
def test_an_ssdp_answer_that_leads_elsewhere_is_refused(
    change: tuple[bytes, bytes], error: str
) -> None:
    old, new = change
    assert old in SSDP_ANSWER
    with pytest.raises(UpnpParseError, match=error):
        parse_ssdp_answer_untrusted(SSDP_ANSWER.replace(old, new, 1), GATEWAY)


def test_an_ssdp_answer_is_held_to_its_sender_and_its_size() -> None:
    with pytest.raises(UpnpParseError, match="another host"):  # a LAN host answers for it
        parse_ssdp_answer_untrusted(SSDP_ANSWER, "198.18.1.7")
    padded = SSDP_ANSWER.replace(b"EXT:", b"X-PAD: " + b"x" * MAX_SSDP + b"\r\nEXT:")
    with pytest.raises(UpnpParseError, match="over 2048 bytes"):
        parse_ssdp_answer_untrusted(padded, GATEWAY)
    # An IGD:2 answering as such, and a service answer, are answers too.
    for target in (b"device:InternetGatewayDevice:2", b"service:WANIPConnection:2"):
        other = SSDP_ANSWER.replace(b"device:InternetGatewayDevice:1\r\nUSN", target + b"\r\nUSN")
        assert parse_ssdp_answer_untrusted(other, GATEWAY).st.endswith(target.decode())


# -- HTTP -----------------------------------------------------------------------------------


def test_http_answers_are_framed_by_length_chunks_or_the_end() -> None:
    whole = parse_http_response_untrusted(DESCRIPTION_V2, eof=False)
    assert whole is not None and whole.status == 200 and whole.reason == "OK"
    assert whole.headers["content-type"] == 'text/xml; charset="utf-8"'
    assert whole.body == body_of(DESCRIPTION_V2) and len(whole.body) == 3091
    for cut in (10, DESCRIPTION_V2.index(b"\r\n\r\n") + 2, len(DESCRIPTION_V2) - 1):
        assert parse_http_response_untrusted(DESCRIPTION_V2[:cut], eof=False) is None
        with pytest.raises(UpnpParseError, match="closed before"):
            parse_http_response_untrusted(DESCRIPTION_V2[:cut], eof=True)
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1;x=y\r\n!\r\n0\r\n\r\n"
    )
    assert http(chunked).body == b"hello!"
    assert parse_http_response_untrusted(chunked[:-7], eof=False) is None
    with pytest.raises(UpnpParseError, match="inside a chunked body"):
        parse_http_response_untrusted(chunked[:-7], eof=True)
    to_the_end = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n<root/>"
    assert parse_http_response_untrusted(to_the_end, eof=False) is None
    assert http(to_the_end).body == b"<root/>"


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n", "body over"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "not a number"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n", "not a number"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"x" * 9000 + b"\r\n\r\n", "headers over"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"x" * 9000, "headers over"),
        (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (MAX_BODY + 1), "body over"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 30000, "answer over"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "hexadecimal"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 70, "too long"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", "does not end"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffff\r\n", "body over"),
        (b"SIP/2.0 200 OK\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nNo colon\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nBad name: x\r\n\r\n", "malformed"),
    ],
)
def test_http_answers_past_the_caps_or_malformed_are_refused(response: bytes, error: str) -> None:
    with pytest.raises(UpnpParseError, match=error):
        parse_http_response_untrusted(response, eof=True)


def test_http_get_asks_the_gateway_for_the_description() -> None:
    assert http_get(LOCATION) == (
        b"GET /rootDesc.xml HTTP/1.1\r\nHost: 198.18.1.1:5000\r\nConnection: close\r\n\r\n"
    )


# -- the device description -----------------------------------------------------------------


def test_miniupnpds_descriptions_give_the_connection_service_and_its_control_url() -> None:
    assert parse_description_untrusted(body_of(DESCRIPTION_V2), LOCATION) == [CONTROL_V2]
    v1 = parse_description_untrusted(body_of(DESCRIPTION_V1), LOCATION)
    assert v1 == [IgdService(WANIP1, HttpUrl(GATEWAY, 5000, "/ctl/IPConn"))]
    assert (v1[0].name, v1[0].version, CONTROL_V2.name) == (
        "WANIPConnection:1",
        1,
        "WANIPConnection:2",
    )


def test_control_urls_resolve_against_urlbase_or_location_and_stay_on_the_gateway() -> None:
    both = service(WANPPP1, "ppp") + service(WANIP1, "http://198.18.1.1:49000/ip?x=1")
    found = parse_description_untrusted(description(both), LOCATION)
    assert found == [  # IP before PPP, each resolved
        IgdService(WANIP1, HttpUrl(GATEWAY, 49000, "/ip?x=1")),
        IgdService(WANPPP1, HttpUrl(GATEWAY, 5000, "/ppp")),
    ]
    based = description(service(WANIP1, "ctl"), url_base="http://198.18.1.1:80/upnp/")
    assert parse_description_untrusted(based, LOCATION)[0].control == HttpUrl(
        GATEWAY, 80, "/upnp/ctl"
    )


@pytest.mark.parametrize(
    ("document", "error"),
    [
        (description(service(WANIP1, "http://198.18.1.7/ctl")), "another host"),
        (description(service(WANIP1, "//203.0.113.66/ctl")), "another host"),
        (description(service(WANIP1, "ctl"), url_base="http://203.0.113.66/"), "another host"),
        (description(service(WANIP1, "/ctl x")), "request line"),
        (description(service(WANIP1, "/" + "x" * 600)), "too long"),
        (description(service(WANIP1, "http://[::1")), "not a URL"),
        (description(service(WANIP1, "/ctl&#0;")), "not well-formed"),
        (description(service(WANIP1, "/ctl&#9;x")), "characters"),
        (description(service(WANIP1, "https://198.18.1.1/ctl")), "not http"),
        (
            description(
                service(SERVICE_L3F := "urn:schemas-upnp-org:service:Layer3Forwarding:1", "/l3f")
            ),
            "no WANIPConnection",
        ),
        (description(service(WANIP1, "")), "no WANIPConnection"),
        (b"<scpd><serviceList/></scpd>", "not <root>"),
        (b"<root><device>", "not well-formed"),
        (b"", "not well-formed"),
        (b"<root>&undefined;</root>", "not well-formed"),
        (b"<root>" * (MAX_DEPTH + 1) + b"</root>" * (MAX_DEPTH + 1), "too deep"),
        (b"<root>" + b"<a/>" * 5000 + b"</root>", "too many"),
        (b"<root>" + b" " * MAX_BODY + b"</root>", "over 65536 bytes"),
    ],
)
def test_a_description_that_leads_elsewhere_or_is_malformed_is_refused(
    document: bytes, error: str
) -> None:
    with pytest.raises(UpnpParseError, match=error):
        parse_description_untrusted(document, LOCATION)


LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE root [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<root><device><serviceList><service>
<serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<controlURL>/ctl/&lol9;</controlURL></service></serviceList></device></root>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE root [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<root><URLBase>&secret;</URLBase></root>"""


@pytest.mark.parametrize("document", [LAUGHS, EXTERNAL_ENTITY, b"<!DOCTYPE root><root/>"])
def test_a_document_type_declaration_is_refused_so_no_entity_is_expanded(document: bytes) -> None:
    start = time.perf_counter()
    with pytest.raises(UpnpParseError, match="document type declaration"):
        parse_description_untrusted(document, LOCATION)
    with pytest.raises(UpnpParseError, match="document type declaration"):
        parse_soap_answer_untrusted(HttpResponse(200, "OK", {}, document), "GetExternalIPAddress")
    assert time.perf_counter() - start < 0.5  # refused at the DTD, not after expanding it


# -- SOAP -----------------------------------------------------------------------------------


def test_soap_requests_are_what_miniupnpd_took() -> None:
    request = add_port_mapping_request(
        CONTROL_V2, external_port=40000, internal_client=HOST, internal_port=40000, lease=3600
    )
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"POST /ctl/IPConn HTTP/1.1",
        b"Host: 198.18.1.1:5000",
        b'Content-Type: text/xml; charset="utf-8"',
        b'SOAPAction: "urn:schemas-upnp-org:service:WANIPConnection:2#AddPortMapping"',
        b"Content-Length: 593",
        b"Connection: close",
    ]
    assert len(body) == 593
    assert body == (
        b'<?xml version="1.0"?>\r\n'
        b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"'
        b' s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>'
        b'<u:AddPortMapping xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:2">'
        b"<NewRemoteHost></NewRemoteHost><NewExternalPort>40000</NewExternalPort>"
        b"<NewProtocol>UDP</NewProtocol><NewInternalPort>40000</NewInternalPort>"
        b"<NewInternalClient>198.18.1.2</NewInternalClient><NewEnabled>1</NewEnabled>"
        b"<NewPortMappingDescription>callpeer</NewPortMappingDescription>"
        b"<NewLeaseDuration>3600</NewLeaseDuration></u:AddPortMapping></s:Body></s:Envelope>\r\n"
    )
    any_port = add_port_mapping_request(
        CONTROL_V2,
        external_port=40000,
        internal_client=HOST,
        internal_port=40000,
        lease=0,
        any_port=True,
    )
    assert b"#AddAnyPortMapping" in any_port and b"<NewLeaseDuration>0<" in any_port
    delete = delete_port_mapping_request(CONTROL_V2, 40000)
    assert delete.endswith(
        b'<u:DeletePortMapping xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:2">'
        b"<NewRemoteHost></NewRemoteHost><NewExternalPort>40000</NewExternalPort>"
        b"<NewProtocol>UDP</NewProtocol></u:DeletePortMapping></s:Body></s:Envelope>\r\n"
    )
    assert b"<s:Body><u:GetExternalIPAddress " in get_external_ip_request(CONTROL_V2)
    v1 = IgdService(WANIP1, CONTROL_V2.control)
    with pytest.raises(ValueError, match="WANIPConnection:2"):
        add_port_mapping_request(
            v1, external_port=1, internal_client=HOST, internal_port=1, lease=0, any_port=True
        )
    for bad in ({"external_port": 0}, {"internal_client": "host"}, {"lease": 604801}):
        args: dict[str, object] = {
            "external_port": 40000,
            "internal_client": HOST,
            "internal_port": 40000,
            "lease": 60,
        } | bad
        with pytest.raises(ValueError):  # noqa: PT011 (each argument words its own)
            add_port_mapping_request(CONTROL_V2, **args)  # type: ignore[arg-type]


def test_miniupnpds_soap_answers() -> None:
    address = parse_soap_answer_untrusted(http(EXTERNAL_IP), "GetExternalIPAddress")
    assert address.ok and address.values == {"NewExternalIPAddress": "203.0.113.1"}
    assert external_ip_untrusted(address) == "203.0.113.1"
    added = parse_soap_answer_untrusted(http(ADD_OK), "AddPortMapping")
    assert added.ok and added.values == {}
    any_port = parse_soap_answer_untrusted(http(ADD_ANY_OK), "AddAnyPortMapping")
    assert reserved_port_untrusted(any_port) == 40000
    assert parse_soap_answer_untrusted(http(DELETE_OK), "DeletePortMapping").ok
    conflict = parse_soap_answer_untrusted(http(FAULT_718), "AddPortMapping")
    assert not conflict.ok
    assert (conflict.error_code, conflict.error_description) == (718, "ConflictInMappingEntry")
    assert conflict.reason() == (
        "AddPortMapping: UPnP error 718,"
        " ConflictInMappingEntry (the port is mapped to another host)"
    )
    unknown = parse_soap_answer_untrusted(http(FAULT_401), "NoSuchAction")
    assert unknown.error_code == 401


@pytest.mark.parametrize(
    ("response", "action", "error"),
    [
        (ADD_OK, "DeletePortMapping", "without <DeletePortMappingResponse>"),
        (
            FAULT_718.replace(b"<errorCode>718</errorCode>", b""),
            "AddPortMapping",
            "without a UPnP error",
        ),
        (FAULT_718.replace(b"718", b"71800"), "AddPortMapping", "without a UPnP error"),
        (
            FAULT_718.replace(b"HTTP/1.1 500 Internal Server Error", b"HTTP/1.1 404 Not Found"),
            "AddPortMapping",
            "HTTP 404 Not Found",
        ),
        (EXTERNAL_IP.replace(b"s:Envelope", b"s:Other"), "GetExternalIPAddress", "not <Envelope>"),
        (
            EXTERNAL_IP.replace(b"203.0.113.1<", b"<b>1</b><"),
            "GetExternalIPAddress",
            "not a short value",
        ),
    ],
)
def test_soap_answers_that_are_not_answers_are_refused(
    response: bytes, action: str, error: str
) -> None:
    with pytest.raises(UpnpParseError, match=error):
        parse_soap_answer_untrusted(http(response.replace(b"Content-Length", b"X-Length")), action)


def test_soap_output_values_are_checked() -> None:
    def answer_with(ip: bytes) -> HttpResponse:
        return http(edit(EXTERNAL_IP, b">203.0.113.1<", b">" + ip + b"<"))

    assert (
        external_ip_untrusted(parse_soap_answer_untrusted(answer_with(b""), "GetExternalIPAddress"))
        is None
    )
    assert (
        external_ip_untrusted(
            parse_soap_answer_untrusted(answer_with(b"0.0.0.0"), "GetExternalIPAddress")
        )
        is None
    )
    for bad in (b"::1", b"router.example", b"1.2.3.4.5"):
        with pytest.raises(UpnpParseError, match="IPv4"):
            external_ip_untrusted(
                parse_soap_answer_untrusted(answer_with(bad), "GetExternalIPAddress")
            )
    for port in (b"0", b"65536", b"000040000", b"-1", b""):
        reserved = http(edit(ADD_ANY_OK, b">40000<", b">" + port + b"<"))
        with pytest.raises(UpnpParseError, match="not a port"):
            reserved_port_untrusted(parse_soap_answer_untrusted(reserved, "AddAnyPortMapping"))


# Every parser, fed mutations of miniupnpd's own answers: UpnpParseError or a result, never
# anything else (bench/fuzz.py does the same for the other parsers, at a larger budget).
PARSERS: dict[str, tuple[bytes, Callable[[bytes], object]]] = {
    "ssdp": (SSDP_ANSWER, lambda data: parse_ssdp_answer_untrusted(data, GATEWAY)),
    "http": (DESCRIPTION_V2, lambda data: parse_http_response_untrusted(data, eof=True)),
    "description": (
        body_of(DESCRIPTION_V1),
        lambda data: parse_description_untrusted(data, LOCATION),
    ),
    "soap": (FAULT_718, lambda data: parse_soap_answer_untrusted(http(data), "AddPortMapping")),
}


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from(sorted(PARSERS)),
    at=st.integers(min_value=0, max_value=4000),
    cut=st.integers(min_value=0, max_value=64),
    insert=st.binary(max_size=16),
)
def test_mutated_answers_raise_the_parse_error_only(
    name: str, at: int, cut: int, insert: bytes
) -> None:
    seed, parse = PARSERS[name]
    at %= len(seed)
    data = seed[:at] + insert + seed[at + cut :]
    with contextlib.suppress(UpnpParseError):
        parse(data)


# -- the client, against a fake IGD on 127.0.0.1 --------------------------------------------

P = ParamSpec("P")


def in_a_loop(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """An async test, run by asyncio.run (no pytest plugin needed)."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


LOOPBACK = "127.0.0.1"
SOAP_ACTION = re.compile(rb'SOAPAction: "([^"#]+)#(\w+)"')


class FakeIgd:
    """miniupnpd's answers, on loopback: SSDP on a UDP port of its own (unicast only), the
    description and control on a TCP port. `answers` holds, per action, what to answer next
    (a captured answer once used up)."""

    def __init__(self, description: bytes = DESCRIPTION_V2, *, ssdp_from: str = LOOPBACK):
        self.description = description
        self.ssdp_from = ssdp_from
        self.location_host = LOOPBACK
        self.answers: dict[str, list[bytes]] = {}
        self.requests: list[tuple[str, bytes]] = []  # (action or "GET", request)
        self.stall = 0.0  # s before each HTTP answer
        self.ssdp_port = self.http_port = 0

    async def __aenter__(self) -> FakeIgd:
        loop = asyncio.get_running_loop()
        self.server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.http_port = self.server.sockets[0].getsockname()[1]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOOPBACK, 0))
        self.ssdp_port = sock.getsockname()[1]
        self.answer_from = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.answer_from.bind((self.ssdp_from, 0))
        igd = self

        class Ssdp(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
                igd.requests.append(("M-SEARCH", data))
                location = f"http://{igd.location_host}:{igd.http_port}/rootDesc.xml"
                answer = SSDP_ANSWER.replace(
                    b"http://198.18.1.1:5000/rootDesc.xml", location.encode()
                )
                igd.answer_from.sendto(answer, addr)

        self.transport, _ = await loop.create_datagram_endpoint(Ssdp, sock=sock)
        return self

    async def __aexit__(self, *_: object) -> None:
        self.transport.close()
        self.answer_from.close()
        self.server.close()
        await self.server.wait_closed()

    def actions(self) -> list[str]:
        return [action for action, _ in self.requests if action != "M-SEARCH"]

    def sent(self, action: str) -> list[bytes]:
        return [request for name, request in self.requests if name == action]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await self._answer(reader))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client gave up first
        finally:
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"Content-Length: (\d+)", head)
        request = head + (await reader.readexactly(int(length.group(1))) if length else b"")
        if head.startswith(b"GET /rootDesc.xml "):
            self.requests.append(("GET", request))
            answer = self.description
        else:
            found = SOAP_ACTION.search(head)
            assert found is not None
            action = found.group(2).decode()
            self.requests.append((action, request))
            queued = self.answers.get(action)
            answer = queued.pop(0) if queued else DEFAULT_ANSWERS[action]
        await asyncio.sleep(self.stall)
        return answer


DEFAULT_ANSWERS = {
    "GetExternalIPAddress": EXTERNAL_IP,
    "AddPortMapping": ADD_OK,
    "AddAnyPortMapping": ADD_ANY_OK,
    "DeletePortMapping": DELETE_OK,
}


def fault(code: int, words: str) -> bytes:
    """miniupnpd's SOAP fault, with another UPnP error in it."""
    coded = edit(FAULT_718, b">718<", f">{code}<".encode())
    return edit(coded, b">ConflictInMappingEntry<", f">{words}<".encode())


async def mapped(
    igd: FakeIgd, port: int = 41000, wait: float = DISCOVERY_WAIT, **timeouts: float
) -> UpnpMapping:
    how = Discovery(wait, igd.ssdp_port, multicast=False)
    return await map_port(LOOPBACK, LOOPBACK, port, 600, how=how, **timeouts)


def arg(request: bytes, name: str) -> str:
    found = re.search(rf"<{name}>([^<]*)</{name}>".encode(), request)
    assert found is not None
    return found.group(1).decode()


@in_a_loop
async def test_map_port_asks_for_our_own_port_then_renews_and_deletes_it() -> None:
    async with FakeIgd() as igd:
        mapping = await mapped(igd)
        assert mapping.public == ("203.0.113.1", 41000)
        assert (mapping.lifetime, mapping.internal) == (600, (LOOPBACK, 41000))
        assert mapping.description == "UPnP IGD (WANIPConnection:2)"
        assert igd.actions() == ["GET", "GetExternalIPAddress", "AddPortMapping"]
        add = igd.sent("AddPortMapping")[0]
        expected = {
            "NewRemoteHost": "",
            "NewExternalPort": "41000",
            "NewProtocol": "UDP",
            "NewInternalPort": "41000",
            "NewInternalClient": LOOPBACK,
            "NewPortMappingDescription": "callpeer",
            "NewLeaseDuration": "600",
        }
        assert {name: arg(add, name) for name in expected} == expected
        assert add.startswith(b"POST /ctl/IPConn HTTP/1.1\r\n")
        await mapping.renew()
        assert igd.sent("AddPortMapping")[1] == add
        await mapping.delete()
        assert arg(igd.sent("DeletePortMapping")[0], "NewExternalPort") == "41000"
        igd.answers["DeletePortMapping"] = [fault(714, "NoSuchEntryInArray")]
        await mapping.delete()  # gone already: fine
        igd.answers["DeletePortMapping"] = [fault(606, "Action not authorized")]
        with pytest.raises(UpnpError, match=r"would not delete the mapping: .* 606"):
            await mapping.delete()
        igd.answers["AddPortMapping"] = [fault(501, "ActionFailed")]
        with pytest.raises(UpnpError, match=r"would not renew the mapping: .* 501, Action Failed"):
            await mapping.renew()


@in_a_loop
async def test_a_port_taken_by_another_host_gets_the_router_to_pick_another() -> None:
    async with FakeIgd() as igd:  # IGD:2: AddAnyPortMapping, and the router says which port
        igd.answers["AddPortMapping"] = [fault(718, "ConflictInMappingEntry")]
        mapping = await mapped(igd)
        assert mapping.public == ("203.0.113.1", 40000)  # NewReservedPort
        assert igd.actions()[-2:] == ["AddPortMapping", "AddAnyPortMapping"]
    async with FakeIgd(DESCRIPTION_V1) as igd:  # IGD:1 has none: a random port of ours
        igd.answers["AddPortMapping"] = [fault(718, "ConflictInMappingEntry")] * 2
        mapping = await mapped(igd)
        ports = [arg(request, "NewExternalPort") for request in igd.sent("AddPortMapping")]
        assert len(ports) == 3 and ports[0] == "41000" and mapping.public[1] == int(ports[2])
        assert all(1024 <= int(port) <= 65535 for port in ports)
        assert mapping.description == "UPnP IGD (WANIPConnection:1)"


@in_a_loop
async def test_a_router_that_takes_only_permanent_leases_gets_one() -> None:
    async with FakeIgd(DESCRIPTION_V1) as igd:
        igd.answers["AddPortMapping"] = [fault(725, "OnlyPermanentLeasesSupported")]
        mapping = await mapped(igd)
        leases = [arg(request, "NewLeaseDuration") for request in igd.sent("AddPortMapping")]
        assert leases == ["600", "0"] and mapping.lifetime == 0


@pytest.mark.parametrize(
    ("answers", "error"),
    [
        (
            {"AddPortMapping": [fault(606, "Action not authorized")]},
            "would not map a port: .*606, Action not",
        ),
        (
            {"AddPortMapping": [fault(718, "x")] * 9, "AddAnyPortMapping": [fault(728, "y")]},
            "728, NoPortMaps",
        ),
        ({"AddPortMapping": [fault(999, "Mystery")]}, "999, Mystery"),
        ({"GetExternalIPAddress": [fault(501, "ActionFailed")]}, "no public address .*501"),
        (  # behind a carrier-grade NAT (RFC 6598): double NAT, NOT_PUBLIC refuses it
            {"GetExternalIPAddress": [edit(EXTERNAL_IP, b">203.0.113.1<", b">100.64.1.1<")]},
            "100.64.1.1 is a private one",
        ),
        (
            {"GetExternalIPAddress": [edit(EXTERNAL_IP, b">203.0.113.1<", b">0.0.0.0<")]},
            "does not know its own",
        ),
        (
            {"GetExternalIPAddress": [EXTERNAL_IP.replace(b"HTTP/1.1 200", b"HTTP/1.1 403")]},
            "HTTP 403",
        ),
        (
            {
                "AddAnyPortMapping": [edit(ADD_ANY_OK, b">40000<", b">0<")],
                "AddPortMapping": [fault(718, "")],
            },
            "not a port",
        ),
    ],
)
@in_a_loop
async def test_what_the_router_refuses_is_said(answers: dict[str, list[bytes]], error: str) -> None:
    async with FakeIgd() as igd:
        igd.answers = answers
        with pytest.raises(UpnpError, match=error):
            await mapped(igd)


@pytest.mark.parametrize(
    ("description", "error"),
    [
        (
            edit(DESCRIPTION_V2, b"WANIPConnection:2", b"WANIPv6FirewallControl:2"),
            "no WANIPConnection",
        ),
        (
            edit(DESCRIPTION_V2, b"<controlURL>/ctl/IPConn", b"<controlURL>http://127.0.0.2/ctl"),
            "another host",
        ),
        (
            DESCRIPTION_V2.replace(b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found"),
            "HTTP 404 Not Found",
        ),
        (DESCRIPTION_V2.replace(b"Content-Length: 3091", b"Content-Length: 99999"), "body over"),
        (edit(DESCRIPTION_V2, b"<root", b"<!DOCTYPE root><root"), "document type declaration"),
    ],
)
@in_a_loop
async def test_a_description_we_cannot_use_is_said(description: bytes, error: str) -> None:
    async with FakeIgd(description) as igd:
        with pytest.raises(UpnpError, match=error):
            await mapped(igd)
        assert igd.actions() == ["GET"]  # nothing posted anywhere


@in_a_loop
async def test_ssdp_answers_from_elsewhere_or_pointing_elsewhere_are_not_taken() -> None:
    async with FakeIgd(ssdp_from="127.0.0.2") as igd:  # another LAN host answers
        with pytest.raises(
            UpnpError, match=r"no UPnP internet gateway answered at 127\.0\.0\.1 within 200 ms"
        ):
            await mapped(igd, wait=0.2)
        assert igd.actions() == []
    async with FakeIgd() as igd:  # the gateway answers, pointing at another host
        igd.location_host = "127.0.0.2"
        with pytest.raises(UpnpError, match=r"its answer was refused: .*another host"):
            await mapped(igd, wait=0.2)
        assert igd.actions() == []


@in_a_loop
async def test_discovery_waits_its_time_asks_twice_and_then_says_so() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a port that never answers
    sock.bind((LOOPBACK, 0))
    sock.setblocking(False)
    try:
        start = time.perf_counter()
        with pytest.raises(UpnpError, match="no UPnP internet gateway answered"):
            await discover(LOOPBACK, LOOPBACK, Discovery(0.3, sock.getsockname()[1], False))
        assert 0.3 <= time.perf_counter() - start < 0.5
        searches = []
        while True:
            try:
                searches.append(sock.recv(2048))
            except BlockingIOError:
                break
        assert len(searches) == 6  # three search targets, sent twice
        assert all(s.startswith(b"M-SEARCH * HTTP/1.1\r\nHOST: 127.0.0.1:") for s in searches)
    finally:
        sock.close()


@in_a_loop
async def test_a_router_that_stalls_or_is_not_there_is_given_up_on() -> None:
    async with FakeIgd() as igd:
        igd.stall = 5.0
        start = time.perf_counter()
        with pytest.raises(
            UpnpError, match=r"\(http://127.0.0.1:\d+/rootDesc.xml\) did not answer within 200 ms"
        ):
            await mapped(igd, timeout=0.2)
        assert time.perf_counter() - start < 0.5
        port = igd.http_port
    async with FakeIgd() as igd:
        igd.http_port = port  # closed now: refused
        with pytest.raises(UpnpError, match="could not reach the router's UPnP server"):
            await mapped(igd)


@in_a_loop
async def test_map_port_is_held_to_its_total_time() -> None:
    async with FakeIgd() as igd:
        igd.stall = 0.15  # each exchange in time, not all of them
        start = time.perf_counter()
        with pytest.raises(UpnpError, match=r"took over 250 ms to map a port"):
            await mapped(igd, timeout=1.0, total_timeout=0.25)
        assert time.perf_counter() - start < 0.45
        assert igd.actions() == ["GET", "GetExternalIPAddress"]  # its answer never came
