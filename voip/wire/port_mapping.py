"""Asking the router for a port mapping: PCP MAP (RFC 6887) and NAT-PMP (RFC 6886) messages.

Both protocols are served on the default gateway's UDP port 5351 and tell the two apart by the
first byte (the version: 2 for PCP, 0 for NAT-PMP). A NAT-PMP-only router answers a PCP request
with NAT-PMP's "unsupported version" (RFC 6887 §9), which `parse_answer_untrusted` reports as a
NAT-PMP answer with result 1, so the client knows to ask again in NAT-PMP.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from voip.wire.stun import Address

SERVER_PORT = 5351  # both protocols, on the default gateway (RFC 6887 §19.1, RFC 6886 §3.1)
PCP_VERSION = 2
NATPMP_VERSION = 0
PCP_MAP = 1  # opcode (RFC 6887 §19.2)
NATPMP_EXTERNAL_ADDRESS = 0
NATPMP_MAP_UDP = 1
UDP = 17  # IANA protocol number, in the MAP payload
RESPONSE = 0x80  # the R bit (PCP) and the answer's opcode offset (NAT-PMP)
NONCE_BYTES = 12
PCP_HEADER = struct.Struct("!BBHI16s")  # version, R|opcode, reserved, lifetime, client IP
PCP_ANSWER_HEADER = struct.Struct("!BBBBII12x")  # version, R|opcode, -, result, lifetime, epoch
MAP_PAYLOAD = struct.Struct("!12sB3xHH16s")  # nonce, protocol, -, internal, external port, IP
NATPMP_MAP = struct.Struct("!BBHHHI")  # version, opcode, -, internal, suggested port, lifetime
NATPMP_ANSWER = struct.Struct("!BBHI")  # version, opcode, result, seconds since epoch

# Result codes, RFC 6887 §7.4 and RFC 6886 §3.5, for messages to users.
PCP_RESULTS = {
    1: "unsupported version",
    2: "not authorized",
    3: "malformed request",
    4: "unsupported opcode",
    5: "unsupported option",
    6: "malformed option",
    7: "network failure",
    8: "out of resources",
    9: "unsupported protocol",
    10: "user over quota",
    11: "cannot provide the external address",
    12: "address mismatch (the router saw us at another address)",
    13: "excessive remote peers",
}
NATPMP_RESULTS = {
    1: "unsupported version",
    2: "not authorized or refused",
    3: "network failure",
    4: "out of resources",
    5: "unsupported opcode",
}


class PortMappingError(ValueError):
    """Bytes that are not an answer we can use, from the gateway's port 5351."""


@dataclass(frozen=True)
class MapAnswer:
    """A router's answer to a mapping request (or to NAT-PMP's external-address request, where
    `internal_port` and `external_port` are 0 and `external_ip` is the point)."""

    protocol: str  # "PCP" or "NAT-PMP"
    result: int  # 0: success
    lifetime: int  # s the mapping lasts (0: deleted)
    epoch: int  # s since the router's mapping table began (it lost them if this goes back)
    internal_port: int = 0
    external_port: int = 0
    external_ip: str | None = None
    nonce: bytes = b""  # PCP's: an answer to our request carries our nonce
    opcode: int = PCP_MAP

    @property
    def ok(self) -> bool:
        return self.result == 0

    @property
    def external(self) -> Address | None:
        if self.external_ip is None or not self.external_port:
            return None
        return self.external_ip, self.external_port

    def reason(self) -> str:
        names = PCP_RESULTS if self.protocol == "PCP" else NATPMP_RESULTS
        return f"{self.protocol}: {names.get(self.result, f'result {self.result}')}"


def pcp_map_request(
    client_ip: str,
    internal_port: int,
    nonce: bytes,
    lifetime: int,
    suggested: Address | None = None,
) -> bytes:
    """A PCP MAP request for UDP (RFC 6887 §7.1, §11.1). Lifetime 0 deletes the mapping that
    `nonce` and `internal_port` made; `suggested` is the external address we would like (the
    same one again, when renewing)."""
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a PCP mapping nonce is {NONCE_BYTES} bytes")
    ext_ip, ext_port = suggested if suggested is not None else ("0.0.0.0", 0)  # noqa: S104
    header = PCP_HEADER.pack(PCP_VERSION, PCP_MAP, 0, lifetime, _ip16(client_ip))
    return header + MAP_PAYLOAD.pack(nonce, UDP, internal_port, ext_port, _ip16(ext_ip))


def natpmp_external_address_request() -> bytes:
    """NAT-PMP's request for the router's public IPv4 address (RFC 6886 §3.2)."""
    return bytes([NATPMP_VERSION, NATPMP_EXTERNAL_ADDRESS])


def natpmp_map_request(internal_port: int, lifetime: int, suggested_port: int = 0) -> bytes:
    """NAT-PMP's request to map a UDP port (RFC 6886 §3.3); lifetime 0 (and suggested port 0)
    deletes it."""
    return NATPMP_MAP.pack(
        NATPMP_VERSION, NATPMP_MAP_UDP, 0, internal_port, suggested_port, lifetime
    )


def parse_answer_untrusted(data: bytes) -> MapAnswer:
    """A PCP or NAT-PMP answer from the gateway; PortMappingError for anything else."""
    if len(data) < 2:
        raise PortMappingError("too short for PCP or NAT-PMP")
    if data[0] == PCP_VERSION:
        return _pcp_answer(data)
    if data[0] == NATPMP_VERSION:
        return _natpmp_answer(data)
    raise PortMappingError(f"unknown version {data[0]}")


def _pcp_answer(data: bytes) -> MapAnswer:
    if len(data) < PCP_ANSWER_HEADER.size or len(data) > 1100:  # RFC 6887 §7: at most 1100
        raise PortMappingError("not a PCP answer: wrong length")
    _, op, _, result, lifetime, epoch = PCP_ANSWER_HEADER.unpack_from(data)
    if not op & RESPONSE:
        raise PortMappingError("a PCP request, not an answer")
    if op & 0x7F != PCP_MAP:
        raise PortMappingError(f"PCP opcode {op & 0x7F}, not MAP")
    if len(data) < PCP_ANSWER_HEADER.size + MAP_PAYLOAD.size:
        if result == 0:
            raise PortMappingError("a PCP MAP success without its payload")
        return MapAnswer("PCP", result, lifetime, epoch)  # errors may come without it
    nonce, protocol, internal, external, ip16 = MAP_PAYLOAD.unpack_from(
        data, PCP_ANSWER_HEADER.size
    )
    if protocol != UDP:
        raise PortMappingError(f"a PCP answer for protocol {protocol}, not UDP")
    ip = _ip_from16(ip16)
    return MapAnswer("PCP", result, lifetime, epoch, internal, external, ip, nonce)


def _natpmp_answer(data: bytes) -> MapAnswer:
    if len(data) < NATPMP_ANSWER.size:
        raise PortMappingError("not a NAT-PMP answer: too short")
    _, op, result, epoch = NATPMP_ANSWER.unpack_from(data)
    if not op & RESPONSE:
        raise PortMappingError("a NAT-PMP request, not an answer")
    opcode = op & 0x7F
    if result != 0:  # errors carry no more than this (and "unsupported version" answers PCP)
        return MapAnswer("NAT-PMP", result, 0, epoch, opcode=opcode)
    if opcode == NATPMP_EXTERNAL_ADDRESS and len(data) >= 12:
        ip = str(ipaddress.IPv4Address(data[8:12]))
        return MapAnswer("NAT-PMP", 0, 0, epoch, external_ip=ip, opcode=opcode)
    if opcode == NATPMP_MAP_UDP and len(data) >= 16:
        internal, external, lifetime = struct.unpack_from("!HHI", data, 8)
        return MapAnswer("NAT-PMP", 0, lifetime, epoch, internal, external, opcode=opcode)
    raise PortMappingError(f"NAT-PMP opcode {opcode}: not one we asked, or cut short")


def _ip16(ip: str) -> bytes:
    """An address as PCP carries it: IPv6, or IPv4 mapped into IPv6 (RFC 6887 §5)."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv4Address):
        return bytes(10) + b"\xff\xff" + addr.packed
    return addr.packed


def _ip_from16(raw: bytes) -> str:
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(addr)
