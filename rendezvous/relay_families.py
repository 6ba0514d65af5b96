"""Which relayed addresses an Allocate asks for, and the relay's sockets of each family
(RFC 8656 §7.2), sans-IO.

An Allocate asks for one IPv4 relayed address (no family attribute), one of the family that
REQUESTED-ADDRESS-FAMILY names, or with ADDITIONAL-ADDRESS-FAMILY (IPv6) for a dual allocation:
an IPv4 address and an IPv6 one. Both attributes at once is a bad request (400); a family the
relay has no address of is 440 (Address Family not Supported), except the additional one: the
IPv4 allocation succeeds alone, its answer carrying ADDRESS-ERROR-CODE for the IPv6 one.
"""

from __future__ import annotations

from typing import NamedTuple
from typing import Protocol

from voip.wire.stun import Address
from voip.wire.stun import Attr
from voip.wire.stun import Message
from voip.wire.stun import StunError
from voip.wire.stun import encode_xor_address
from voip.wire.stun import u32
from voip.wire.turn import address_family_untrusted
from voip.wire.turn import encode_address_error


class RelayPorts(Protocol):
    def open(self) -> Address | None:
        """A new relayed transport address (a bound socket), or None if none can be had."""

    def close(self, relayed: Address) -> None: ...


class Refusal(NamedTuple):
    code: int
    reason: str


BAD_REQUEST = Refusal(400, "Bad Request")
NO_FAMILY = Refusal(440, "Address Family not Supported")
NO_CAPACITY = Refusal(508, "Insufficient Capacity")


class Opened(NamedTuple):
    relayed: Address  # the first family's
    also: Address | None = None  # a dual allocation's IPv6 one
    six_refused: Refusal | None = None  # why a dual allocation has no IPv6 address


class Asked(NamedTuple):
    family: int  # of the (first) relayed address: 4 or 6
    dual: bool = False  # an IPv6 relayed address besides the IPv4 one


def asked_untrusted(msg: Message) -> Asked | Refusal:
    """The relayed addresses an Allocate asks for, or why it is refused."""
    requested = msg.get(Attr.REQUESTED_ADDRESS_FAMILY)
    additional = msg.get(Attr.ADDITIONAL_ADDRESS_FAMILY)
    try:
        if additional is not None:
            if requested is not None:  # one or the other (§7.2)
                return BAD_REQUEST
            # IPv6 is the one value it may carry: IPv4 is what the allocation has anyway.
            return Asked(4, dual=True) if address_family_untrusted(additional) == 6 else BAD_REQUEST
        if requested is None:
            return Asked(4)
        family = address_family_untrusted(requested)
    except StunError:  # a value of the wrong length
        return BAD_REQUEST
    return NO_FAMILY if family is None else Asked(family)


def is_six(ip: str) -> bool:
    """Whether `ip` is an IPv6 address (as XOR-PEER-ADDRESS carries it: an IPv4-mapped address
    is IPv6 on the wire); cheap enough for every relayed datagram."""
    return ":" in ip


class RelayFamilies:
    """The relay's sockets by family: `ports` where IPv4 allocations are (on a relay with an
    IPv6 address alone, that one: its allocations are IPv6 whatever was asked, as before there
    were families), `ports6` where IPv6 ones are, if the relay has an IPv6 address."""

    def __init__(self, ports: RelayPorts, ports6: RelayPorts | None = None):
        self.ports, self.ports6 = ports, ports6

    def open(self, asked: Asked) -> Opened | Refusal:
        """The relayed addresses asked for (for a dual allocation that got no IPv6 address,
        why), or why there are none."""
        first = self.ports6 if asked.family == 6 else self.ports
        if first is None:
            return NO_FAMILY
        relayed = first.open()
        if relayed is None:  # out of ports or file descriptors
            return NO_CAPACITY
        if not asked.dual:
            return Opened(relayed)
        if self.ports6 is None or is_six(relayed[0]):
            return Opened(relayed, six_refused=NO_FAMILY)
        also = self.ports6.open()
        return Opened(relayed, six_refused=NO_CAPACITY) if also is None else Opened(relayed, also)

    def close(self, relayed: Address) -> None:
        ports = self.ports6 if self.ports6 is not None and is_six(relayed[0]) else self.ports
        ports.close(relayed)


def allocate_answer(
    opened: Opened, lifetime: int, client: Address, tid: bytes
) -> list[tuple[int, bytes]]:
    """The attributes of an Allocate success: each relayed address (IPv4 first), the lifetime,
    the client's mapped address; and, for a dual allocation that got no IPv6 address, why."""
    relayed = [opened.relayed] + ([opened.also] if opened.also is not None else [])
    attrs = [(int(Attr.XOR_RELAYED_ADDRESS), encode_xor_address(r, tid)) for r in relayed]
    attrs += [
        (Attr.LIFETIME, u32(lifetime)),
        (Attr.XOR_MAPPED_ADDRESS, encode_xor_address(client, tid)),
    ]
    if opened.six_refused is not None:  # the IPv4 allocation stands alone (§7.2)
        attrs.append((Attr.ADDRESS_ERROR_CODE, encode_address_error(6, *opened.six_refused)))
    return attrs
