"""Asking the router for a port mapping with UPnP IGD, over asyncio: the thin shell around
voip.wire's ssdp, igd_description and igd_control (voip.wire.upnp tells the steps), for routers
that answer neither PCP nor NAT-PMP (voip.nat.port_mapper).

How to call it (from a coroutine; the call's UDP socket is bound to `port`)::

    from voip.host_addresses import gateway_for_port_mapping
    from voip.nat.upnp_client import UpnpError, map_port

    gateway_ip, own_ip = gateway_for_port_mapping()  # None: no default route, no router
    try:
        mapping = await map_port(gateway_ip, own_ip, port, lifetime=600)
    except UpnpError as error:
        ...  # str(error) says why, for the user: nothing answered, the router refused, ...
    else:
        mapping.public  # (ip, port): what the router forwards to own_ip:port; offer it
        # before mapping.lifetime s have passed (at half of it, say): await mapping.renew()
        # at the end of the call: await mapping.delete()

Timing. Discovery sends its M-SEARCHes at once (to 239.255.255.250:1900 and to the gateway's
port 1900, from a socket of its own) and again after RESEND_AFTER (0.2 s), and waits at most
DISCOVERY_WAIT (0.5 s) for an answer: that is what map_port costs on a LAN whose router does
not speak UPnP, the common case (it fails after 0.5 s). A router that answers does so at once
(miniupnpd waits 50 ms before its SSDP answer); then come HTTP exchanges with it (the
description, GetExternalIPAddress, AddPortMapping, and a retry or two on a conflict), each held
to HTTP_TIMEOUT (1 s) and all together to MAP_TIMEOUT (3 s). So map_port returns or raises
within DISCOVERY_WAIT + MAP_TIMEOUT = 3.5 s at worst (a router that answers SSDP and then
stalls). renew() and delete() are one exchange each: at most HTTP_TIMEOUT. In the lab
(miniupnpd on the LAN's router, tests/test_lab_upnp.py; 40 runs on a busy 2-core machine)
map_port took 65-275 ms (median 100 ms on an IGD:2, 170 on an IGD:1), discovery 55-140 ms of
it (miniupnpd delays its SSDP answer 50 ms), and delete 1-90 ms (median 6-18). Cancelling
map_port (to hold it to a shorter deadline of the caller's) is safe: it closes what it
opened.

What it raises: UpnpError, with a reason a user can read, for everything the network or the
router does (no answer, a timeout, a refused connection, a hostile or malformed answer, a
UPnP error, a router with no public address of its own); ValueError only for arguments that
are wrong in themselves (a port out of range, an address that is not IPv4). Cancelling the
coroutine cancels it (asyncio.CancelledError), leaving nothing open.

It talks to `gateway_ip` only: SSDP answers from any other address are dropped unread, and a
LOCATION or control URL on another host is refused (voip.wire.upnp_http). It asks for UDP from
any remote host, external port = internal port first; if that port is mapped to someone else
(718, 729), an IGD:2 is asked with AddAnyPortMapping and an IGD:1 for a random port; a
router that takes only permanent leases (725) is asked again with lease 0, and such a
mapping's lifetime is 0: it never needs renewing, and must be deleted at the end.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
from dataclasses import dataclass
from dataclasses import field

from voip.wire.igd_control import CONFLICT_IN_MAPPING_ENTRY
from voip.wire.igd_control import CONFLICT_WITH_OTHER_MECHANISMS
from voip.wire.igd_control import NO_SUCH_ENTRY
from voip.wire.igd_control import ONLY_PERMANENT_LEASES
from voip.wire.igd_control import SoapAnswer
from voip.wire.igd_control import add_port_mapping_request
from voip.wire.igd_control import delete_port_mapping_request
from voip.wire.igd_control import external_ip_untrusted
from voip.wire.igd_control import get_external_ip_request
from voip.wire.igd_control import parse_soap_answer_untrusted
from voip.wire.igd_control import reserved_port_untrusted
from voip.wire.igd_description import IgdService
from voip.wire.igd_description import parse_description_untrusted
from voip.wire.ssdp import SEARCH_TARGETS
from voip.wire.ssdp import SSDP_GROUP
from voip.wire.ssdp import SSDP_PORT
from voip.wire.ssdp import SsdpAnswer
from voip.wire.ssdp import msearch
from voip.wire.ssdp import parse_ssdp_answer_untrusted
from voip.wire.upnp import UpnpParseError
from voip.wire.upnp_http import HttpResponse
from voip.wire.upnp_http import HttpUrl
from voip.wire.upnp_http import http_get
from voip.wire.upnp_http import parse_http_response_untrusted

DISCOVERY_WAIT = 0.5  # s for the gateway's SSDP answer
RESEND_AFTER = 0.2  # s before the M-SEARCHes go again (UDP; UDA §1.3.2 says send more than once)
HTTP_TIMEOUT = 1.0  # s for one HTTP exchange with the gateway, connecting included
MAP_TIMEOUT = 3.0  # s for all of map_port's HTTP exchanges together
MAX_SERVICES = 3  # connection services of a description tried, for one with a public address
MULTICAST_TTL = 2  # UDA §1.1.2's default for SSDP
READ_SIZE = 4096
MAX_ADD_TRIES = 4  # AddPortMapping and its retries (permanent lease, another port)
# Addresses a router's "public" address cannot usefully be: it sits behind another NAT (or
# does not know its address), so a mapping on it reaches no one on the internet.
NOT_PUBLIC = [
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT (RFC 6598)
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/3",
    )
]


class UpnpError(Exception):
    """UPnP IGD could not give us a mapping; str() says why, for the user."""


@dataclass
class UpnpMapping:
    """A UDP port the gateway forwards to us: `public` on its WAN side to `internal`."""

    public: tuple[str, int]
    lifetime: int  # s the router holds it unless renewed; 0: permanent (delete it at the end)
    internal: tuple[str, int]
    service: IgdService  # the WANIPConnection (or WANPPPConnection) that made it
    timeout: float = field(default=HTTP_TIMEOUT, repr=False)

    @property
    def description(self) -> str:
        """For messages: "UPnP IGD (WANIPConnection:2)"."""
        return f"UPnP IGD ({self.service.name})"

    async def renew(self) -> None:
        """Ask again for the same mapping and lease (a router overwrites its own client's
        mapping: WANIPConnection:1 §2.2.20). UpnpError if it will not, or keeps silent."""
        answer = await _soap(
            self.service,
            add_port_mapping_request(
                self.service,
                external_port=self.public[1],
                internal_client=self.internal[0],
                internal_port=self.internal[1],
                lease=self.lifetime,
            ),
            "AddPortMapping",
            self.internal[0],
            self.timeout,
        )
        if not answer.ok:
            raise UpnpError(f"the router would not renew the mapping: {answer.reason()}")

    async def delete(self) -> None:
        """Remove the mapping (one that is already gone, 714, counts as removed). UpnpError
        if the router refuses or keeps silent."""
        answer = await _soap(
            self.service,
            delete_port_mapping_request(self.service, self.public[1]),
            "DeletePortMapping",
            self.internal[0],
            self.timeout,
        )
        if not answer.ok and answer.error_code != NO_SUCH_ENTRY:
            raise UpnpError(f"the router would not delete the mapping: {answer.reason()}")


@dataclass(frozen=True)
class Discovery:
    """How `discover` asks: M-SEARCHes to SSDP `port` (tests on loopback use their own) at the
    multicast group unless not `multicast` and at the gateway unless not `unicast`, an answer
    awaited `wait` s at most."""

    wait: float = DISCOVERY_WAIT
    port: int = SSDP_PORT
    multicast: bool = True
    unicast: bool = True


async def map_port(
    gateway_ip: str,
    own_ip: str,
    internal_port: int,
    lifetime: int,
    *,
    how: Discovery = Discovery(),
    timeout: float = HTTP_TIMEOUT,
    total_timeout: float = MAP_TIMEOUT,
) -> UpnpMapping:
    """Ask the UPnP IGD at `gateway_ip` (the default gateway), found `how` it says, to forward
    a UDP port on its WAN side to `own_ip`:`internal_port` for `lifetime` s (1-604800). See
    the module's docstring for the timing and what it raises."""
    ipaddress.IPv4Address(gateway_ip)
    ipaddress.IPv4Address(own_ip)
    if not 1 <= internal_port <= 65535 or not 1 <= lifetime <= 604800:
        raise ValueError("a port is 1-65535 and a UPnP lease 1-604800 s")
    found = await discover(gateway_ip, own_ip, how)
    try:
        async with asyncio.timeout(total_timeout):
            return await _map(found, own_ip, internal_port, lifetime, timeout)
    except TimeoutError:  # all together; each exchange's own timeout is an UpnpError already
        raise UpnpError(
            f"the router's UPnP server ({found.location}) took over"
            f" {total_timeout * 1000:.0f} ms to map a port"
        ) from None


async def _map(
    found: SsdpAnswer, own_ip: str, internal_port: int, lifetime: int, timeout: float
) -> UpnpMapping:
    response = await _exchange(found.location, http_get(found.location), own_ip, timeout)
    if response.status != 200:
        status = f"HTTP {response.status} {response.reason}".strip()
        raise UpnpError(f"the router's device description ({found.location}): {status}")
    try:
        services = parse_description_untrusted(response.body, found.location)
    except UpnpParseError as error:
        raise UpnpError(f"the router's device description ({found.location}): {error}") from None
    reasons = []
    for service in services[:MAX_SERVICES]:  # usually one; PPP and IP where the WAN has both
        public_ip = await _public_ip(service, own_ip, timeout)
        if public_ip.ip is not None:
            return await _add(
                service,
                public_ip.ip,
                own_ip=own_ip,
                internal_port=internal_port,
                lifetime=lifetime,
                timeout=timeout,
            )
        reasons.append(f"{service.name}: {public_ip.reason}")
    raise UpnpError("the router has no public address to map a port on: " + "; ".join(reasons))


async def discover(gateway_ip: str, own_ip: str, how: Discovery = Discovery()) -> SsdpAnswer:
    """The gateway's answer to an SSDP M-SEARCH for an IGD, sent from `own_ip` `how` it says;
    the first valid one from `gateway_ip` wins. UpnpError if none comes within `how.wait` s."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((own_ip, 0))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(own_ip))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, MULTICAST_TTL)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
        transport, listener = await loop.create_datagram_endpoint(
            lambda: _SsdpListener(gateway_ip), sock=sock
        )
    except OSError as error:
        sock.close()
        raise UpnpError(f"could not open a socket for UPnP discovery: {error}") from None
    hosts = [gateway_ip] * how.unicast + [SSDP_GROUP] * how.multicast
    searches = [
        (msearch(target, host=host, port=how.port), (host, how.port))
        for host in hosts
        for target in SEARCH_TARGETS
    ]

    def search() -> None:
        for data, destination in searches:
            transport.sendto(data, destination)  # errors go to error_received

    try:
        async with asyncio.timeout(how.wait):
            search()
            done, _ = await asyncio.wait({listener.answer}, timeout=RESEND_AFTER)
            if not done:
                search()
            return await listener.answer
    except TimeoutError:
        why = f" (its answer was refused: {listener.refused})" if listener.refused else ""
        raise UpnpError(
            f"no UPnP internet gateway answered at {gateway_ip}"
            f" within {how.wait * 1000:.0f} ms{why}"
        ) from None
    finally:
        transport.close()


class _SsdpListener(asyncio.DatagramProtocol):
    def __init__(self, gateway_ip: str):
        self.gateway_ip = gateway_ip
        self.answer: asyncio.Future[SsdpAnswer] = asyncio.get_running_loop().create_future()
        self.refused = ""  # why the gateway's last answer was not taken

    def datagram_received(self, data: bytes, addr: tuple[str | int, int]) -> None:
        if addr[0] != self.gateway_ip or self.answer.done():
            return  # only the gateway is asked anything
        try:
            self.answer.set_result(parse_ssdp_answer_untrusted(data, self.gateway_ip))
        except UpnpParseError as error:
            self.refused = str(error)

    def error_received(self, exc: Exception) -> None:
        pass  # a multicast send with no route, an ICMP error: the wait ends it

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.cancel()


@dataclass(frozen=True)
class _PublicIp:
    ip: str | None  # None: not one to map a port on, for `reason`
    reason: str = ""


async def _public_ip(service: IgdService, own_ip: str, timeout: float) -> _PublicIp:
    answer = await _soap(
        service, get_external_ip_request(service), "GetExternalIPAddress", own_ip, timeout
    )
    if not answer.ok:
        return _PublicIp(None, answer.reason())
    try:
        ip = external_ip_untrusted(answer)
    except UpnpParseError as error:
        return _PublicIp(None, str(error))
    if ip is None:
        return _PublicIp(None, "it does not know its own")
    if any(ipaddress.IPv4Address(ip) in net for net in NOT_PUBLIC):
        return _PublicIp(None, f"{ip} is a private one (the router sits behind another NAT)")
    return _PublicIp(ip)


async def _add(
    service: IgdService,
    public_ip: str,
    *,
    own_ip: str,
    internal_port: int,
    lifetime: int,
    timeout: float,
) -> UpnpMapping:
    external, lease, any_port = internal_port, lifetime, False
    for _ in range(MAX_ADD_TRIES):
        action = "AddAnyPortMapping" if any_port else "AddPortMapping"
        request = add_port_mapping_request(
            service,
            external_port=external,
            internal_client=own_ip,
            internal_port=internal_port,
            lease=lease,
            any_port=any_port,
        )
        answer = await _soap(service, request, action, own_ip, timeout)
        if answer.ok:
            if any_port:
                try:
                    external = reserved_port_untrusted(answer)
                except UpnpParseError as error:
                    raise UpnpError(f"the router's answer to {action}: {error}") from None
            internal = (own_ip, internal_port)
            return UpnpMapping((public_ip, external), lease, internal, service, timeout)
        if answer.error_code == ONLY_PERMANENT_LEASES and lease != 0:
            lease = 0
        elif answer.error_code in (CONFLICT_IN_MAPPING_ENTRY, CONFLICT_WITH_OTHER_MECHANISMS):
            if service.version >= 2:
                any_port = True  # the router picks a free port near ours
            else:
                external = 1024 + secrets.randbelow(65536 - 1024)
        else:
            break
    raise UpnpError(f"the router would not map a port: {answer.reason()}")


async def _soap(
    service: IgdService, request: bytes, action: str, own_ip: str, timeout: float
) -> SoapAnswer:
    response = await _exchange(service.control, request, own_ip, timeout)
    try:
        return parse_soap_answer_untrusted(response, action)
    except UpnpParseError as error:
        raise UpnpError(f"the router's answer to {action}: {error}") from None


async def _exchange(url: HttpUrl, request: bytes, own_ip: str, timeout: float) -> HttpResponse:
    """One HTTP request to `url` from `own_ip` (the address the router must see: it maps
    ports to the host that asks), and its answer, read to at most MAX_RESPONSE bytes."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                url.host, url.port, local_addr=(own_ip, 0)
            )
            writer.write(request)
            await writer.drain()
            data = b""
            while True:
                chunk = await reader.read(READ_SIZE)
                data += chunk
                response = parse_http_response_untrusted(data, eof=not chunk)
                if response is not None:
                    return response
                if not chunk:  # the parser says what is missing at the end; never loop on
                    raise UpnpParseError("the connection closed before the answer ended")
    except TimeoutError:
        raise UpnpError(
            f"the router's UPnP server ({url}) did not answer within {timeout * 1000:.0f} ms"
        ) from None
    except OSError as error:
        raise UpnpError(f"could not reach the router's UPnP server ({url}): {error}") from None
    except UpnpParseError as error:
        raise UpnpError(f"the router's UPnP server ({url}) answered: {error}") from None
    finally:
        if writer is not None:
            writer.close()
