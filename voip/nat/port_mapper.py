"""Asking our router to open a port for the call, sans-IO: PCP first, NAT-PMP where PCP is not.

A router that maps a public port to our socket on request (RFC 6887 PCP, RFC 6886 NAT-PMP)
forwards whatever arrives there to us, whoever sends it: the mapped address is a candidate that
needs no punching, so even two NATs that map per destination go direct when one of them maps.
The mapper asks the default gateway from the call's own socket, keeps the mapping alive at half
its lifetime, and deletes it when the call ends. Most gateways answer in a millisecond or not at
all, so the call waits for it at most ASK_WAIT before it asks for the peer without one.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.port_mapping import NATPMP_EXTERNAL_ADDRESS
from voip.wire.port_mapping import NATPMP_MAP_UDP
from voip.wire.port_mapping import PCP_MAP
from voip.wire.port_mapping import SERVER_PORT
from voip.wire.port_mapping import MapAnswer
from voip.wire.port_mapping import PortMappingError
from voip.wire.port_mapping import natpmp_external_address_request
from voip.wire.port_mapping import natpmp_map_request
from voip.wire.port_mapping import parse_answer_untrusted
from voip.wire.port_mapping import pcp_map_request
from voip.wire.sans_io import EventQueue
from voip.wire.stun import Address

Transmit = tuple[bytes, Address]
LIFETIME = 600  # s asked for: a crashed caller's mapping goes within ten minutes
RETRIES = (0.25, 0.5, 1.0)  # s between tries: RFC 6886's 250 ms, doubling (a LAN hop away)
ASK_WAIT = 0.1  # s a call waits for the mapping before it asks for the peer without one (a LAN
# gateway that maps answers in a few ms; one that does not may not answer at all)
UNSUPPORTED_VERSION = 1  # NAT-PMP's answer to a PCP request it cannot serve (RFC 6887 §9)
UPNP = "UPnP IGD"  # asked by the shell over HTTP (voip/call_upnp.py), told here
# s the ask waits for UPnP when the shell asks with it too: its discovery waits 0.5 s for an
# answer, and a router that speaks it answers within about 0.2 s (miniupnpd: 65-275 ms)
UPNP_WAIT = 0.6


@dataclass(frozen=True)
class PortMapped:
    public: Address
    protocol: str  # "PCP", "NAT-PMP" or "UPnP IGD"
    lifetime: int


@dataclass(frozen=True)
class PortMappingFailed:
    reason: str


PortMappingEvent = PortMapped | PortMappingFailed


class PortMapper(EventQueue[PortMappingEvent]):
    def __init__(self, gateway_ip: str, client_ip: str, internal_port: int):
        super().__init__()
        self.gateway: Address = (gateway_ip, SERVER_PORT)
        self.client_ip, self.internal_port = client_ip, internal_port
        self.protocol = "PCP"
        self.public: Address | None = None  # the mapping, while we hold one
        self.failed: str | None = None
        self.renewals = 0
        self._nonce = secrets.token_bytes(12)  # ties PCP answers (and a delete) to this mapping
        self._natpmp_ip: str | None = None  # NAT-PMP tells the address and the port apart
        self._natpmp_port = 0
        self._natpmp_lifetime = LIFETIME
        self._started = 0.0
        self._tries = 0
        self._next: float | None = None  # next request (a retry or a renewal)
        self._expires: float | None = None
        self._released = False
        self._upnp_until: float | None = None  # while UPnP is asked: how long the ask waits
        self._upnp_failed: str | None = None

    def next_deadline(self) -> float | None:
        return self._next

    @property
    def ask_by(self) -> float:
        """When the caller asks for the peer without our mapping, if it has none by then."""
        return max(self._started + ASK_WAIT, self._upnp_until or 0.0)

    def waiting(self, now: float) -> bool:
        """Worth holding the ask back for: no answer yet, and not for long."""
        if self.public is not None:
            return False
        upnp = self._upnp_until is not None and now < self._upnp_until
        return upnp or (self.failed is None and now < self._started + ASK_WAIT)

    def upnp_asking(self, now: float) -> None:
        """The shell asks the router with UPnP IGD as well: the ask waits for it a while."""
        self._upnp_until = now + UPNP_WAIT

    def upnp_mapped(self, public: Address, lifetime: int) -> bool:
        """UPnP opened `public` (the shell renews and deletes it); False if PCP or NAT-PMP
        opened one first, or the call is over: then the shell deletes this one at once."""
        self._upnp_until = None
        if self.public is not None or self._released:
            return False
        self.protocol, self.public = UPNP, public
        self._next = self._expires = None  # PCP and NAT-PMP are not asked again
        self._events.append(PortMapped(public, UPNP, lifetime))
        return True

    def upnp_failed(self, reason: str) -> None:
        self._upnp_until, self._upnp_failed = None, reason
        if self.failed is not None and self.public is None:
            self._tell_failure()

    def candidates(self, seen_at: Address | None) -> tuple[Candidate, ...]:
        """Our mapping as a candidate for the peer, unless the rendezvous sees us there already
        (`seen_at`: our server-reflexive address)."""
        public = self.public
        return (
            (Candidate.make(CandidateType.MAPPED, public),) if public and public != seen_at else ()
        )

    def start(self, now: float) -> list[Transmit]:
        self._started = now
        return self._request(now)

    def poll(self, now: float) -> list[Transmit]:
        if self._next is None or now < self._next:
            return []
        if self._expires is not None and now >= self._expires:  # renewals went unanswered
            self.public = self._expires = None
            self._tries = 0
            if self.failed is not None:  # or were refused: the router will not map for us
                self._next = None
                return []
        if self.public is None and self._tries > len(RETRIES):
            self._fail("no answer from the router to PCP or NAT-PMP")
            return []
        return self._request(now)

    def handle(self, data: bytes, src: Address, now: float) -> list[Transmit]:
        """An answer from the gateway (anything else is not ours to read)."""
        if src != self.gateway or self.failed is not None or self._released:
            return []  # the answer to our delete, too, says nothing we need
        try:
            answer = parse_answer_untrusted(data)
        except PortMappingError:
            return []
        if answer.protocol == "PCP":
            return self._pcp(answer, now)
        if self.protocol == "PCP" and answer.result == UNSUPPORTED_VERSION:
            self.protocol, self._tries = "NAT-PMP", 0  # a NAT-PMP router: ask it its way
            return self._request(now)
        return self._natpmp(answer, now)

    def release(self, now: float) -> list[Transmit]:
        """The call is over: delete the mapping (best effort: its lifetime ends it anyway)."""
        self._next, self._released = None, True
        if self.protocol == UPNP:
            self.public = None  # the shell deletes it, over HTTP
            return []
        # Asked and not refused: a late answer may hold a port for us still. Delete it too.
        if self.public is None and (self._tries == 0 or self.failed is not None):
            return []
        self.public = None
        if self.protocol == "PCP":
            return [
                (pcp_map_request(self.client_ip, self.internal_port, self._nonce, 0), self.gateway)
            ]
        return [(natpmp_map_request(self.internal_port, 0), self.gateway)]

    # -- inside ---------------------------------------------------------------------------
    def _request(self, now: float) -> list[Transmit]:
        if self.public is None or self._expires is None:
            step = RETRIES[min(self._tries, len(RETRIES) - 1)]
        else:  # renewing: back off, and try again before the mapping runs out (RFC 6887 §8.1.1)
            step = max(min(RETRIES[0] * 2**self._tries, (self._expires - now) / 2), 1.0)
        self._next = now + step
        self._tries += 1
        if self.protocol == "PCP":
            data = pcp_map_request(
                self.client_ip, self.internal_port, self._nonce, LIFETIME, self.public
            )
            return [(data, self.gateway)]
        out = [(natpmp_map_request(self.internal_port, LIFETIME, self._natpmp_port), self.gateway)]
        if self._natpmp_ip is None:
            out.append((natpmp_external_address_request(), self.gateway))
        return out

    def _pcp(self, answer: MapAnswer, now: float) -> list[Transmit]:
        if answer.nonce and (
            answer.nonce != self._nonce or answer.internal_port != self.internal_port
        ):
            return []  # another mapping's answer (or a forgery off the LAN): not ours
        if not answer.ok:
            self._fail(answer.reason())
            return []
        if answer.external is None or answer.opcode != PCP_MAP:
            return []
        self._mapped(answer.external, answer.lifetime, now)
        return []

    def _natpmp(self, answer: MapAnswer, now: float) -> list[Transmit]:
        if not answer.ok:
            self._fail(answer.reason())
            return []
        if answer.opcode == NATPMP_EXTERNAL_ADDRESS and answer.external_ip is not None:
            self._natpmp_ip = answer.external_ip
        elif answer.opcode == NATPMP_MAP_UDP and answer.internal_port == self.internal_port:
            self._natpmp_port, self._natpmp_lifetime = answer.external_port, answer.lifetime
        if self._natpmp_ip is not None and self._natpmp_port:
            self._mapped((self._natpmp_ip, self._natpmp_port), self._natpmp_lifetime, now)
        return []

    def _mapped(self, public: Address, lifetime: int, now: float) -> None:
        if lifetime <= 0:
            return  # a mapping that ends now is no mapping
        renewed = self.public == public  # a router that lost its table may map anew
        self.public, self._tries = public, 0
        self._expires = now + lifetime
        self._next = now + max(lifetime / 2, 1.0)  # renew at half (RFC 6887 §11.2.1)
        if renewed:
            self.renewals += 1
        else:
            self._events.append(PortMapped(public, self.protocol, lifetime))

    def _fail(self, reason: str) -> None:
        first = self.failed is None
        self.failed = reason
        if first and self.public is None:
            self._tell_failure()
        # A refused renewal: the mapping lasts its lifetime still, and is not asked for again.
        self._next = self._expires if self.public is not None else None

    def _tell_failure(self) -> None:
        """No mapping from PCP or NAT-PMP; said once UPnP, if asked too, has failed as well."""
        if self._upnp_until is not None or self.failed is None:
            return
        upnp = f"; {UPNP}: {self._upnp_failed}" if self._upnp_failed else ""
        self._events.append(PortMappingFailed(self.failed + upnp))
