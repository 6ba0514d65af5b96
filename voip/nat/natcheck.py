"""What kind of NAT this is, from RFC 5780 tests, and what that means for calls (pure logic).

Mapping (RFC 5780 §4.3), all from one socket:
  I   Binding to the server's primary address: our mapped address M1, and its OTHER-ADDRESS.
  II  Binding to the alternate IP, primary port: M2. M2 == M1: endpoint-independent.
  III Binding to the alternate IP and port: M3. M3 == M2: address-dependent, else
      address-and-port-dependent.
Filtering (§4.4):
  II  Binding asking for the answer from the alternate IP and port: it arrives only if the NAT
      lets in anything to our mapping (endpoint-independent).
  III Binding asking for the answer from the alternate port only: it arrives if the NAT filters
      by address alone (address-dependent); else address-and-port-dependent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from voip.nat.candidates import format_address
from voip.wire.stun import Address

EIM = "endpoint-independent"
ADM = "address-dependent"
APDM = "address-and-port-dependent"


@dataclass
class NatTests:
    """What each test saw; None for a request that got no answer."""

    local: Address
    server: Address
    other: Address | None = None  # the server's OTHER-ADDRESS; None: it cannot do RFC 5780
    mapped1: Address | None = None
    mapped2: Address | None = None
    mapped3: Address | None = None
    filter_any: bool | None = None  # answer from the other IP and port arrived
    filter_port: bool | None = None  # answer from the other port arrived
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NatVerdict:
    reachable: bool
    behind_nat: bool | None
    mapping: str | None
    filtering: str | None
    kind: str  # in plain words
    direct_with: str  # which peers a direct call works with
    advice: str

    def to_dict(self, tests: NatTests) -> dict[str, Any]:
        def addr(a: Address | None) -> str | None:
            return None if a is None else format_address(a)

        return {
            "server": addr(tests.server),
            "local": addr(tests.local),
            "public": addr(tests.mapped1),
            "behind_nat": self.behind_nat,
            "mapping": self.mapping,
            "filtering": self.filtering,
            "kind": self.kind,
            "direct_with": self.direct_with,
            "advice": self.advice,
            "tests": {
                "mapped_primary": addr(tests.mapped1),
                "mapped_alternate_ip": addr(tests.mapped2),
                "mapped_alternate_ip_port": addr(tests.mapped3),
                "answer_from_other_ip_and_port": tests.filter_any,
                "answer_from_other_port": tests.filter_port,
                "server_other_address": addr(tests.other),
            },
            "notes": tests.notes,
        }


def classify(t: NatTests) -> NatVerdict:
    if t.mapped1 is None:
        return NatVerdict(
            False,
            None,
            None,
            None,
            "no answer from the STUN server",
            "unknown",
            "check that UDP to the server is allowed at all",
        )
    behind = t.mapped1 != t.local
    mapping = None
    if t.mapped2 is not None:
        if t.mapped2 == t.mapped1:
            mapping = EIM
        elif t.mapped3 is not None:
            mapping = ADM if t.mapped3 == t.mapped2 else APDM
    filtering = None
    if t.filter_any is not None:
        if t.filter_any:
            filtering = EIM
        elif t.filter_port is not None:
            filtering = ADM if t.filter_port else APDM
    return NatVerdict(True, behind, mapping, filtering, *_words(behind, mapping, filtering))


def _words(behind: bool, mapping: str | None, filtering: str | None) -> tuple[str, str, str]:
    if mapping is None or filtering is None:
        return (
            "partly known: the server cannot answer from a second address (no "
            "OTHER-ADDRESS), so only your public address was learned",
            "unknown",
            "run natcheck against a server with --alt-address",
        )
    if not behind and filtering == EIM:
        return (
            "no NAT and no firewall: a public address",
            "anyone: peers reach you directly whatever their NAT",
            "nothing to do",
        )
    if not behind:
        how = "by address" if filtering == ADM else "by address and port"
        return (
            f"no NAT, but a stateful firewall that filters {how}",
            "peers whose NAT keeps one port per socket (cone, full cone or none)",
            "nothing needed for most peers; opening the port helps symmetric ones",
        )
    if mapping == EIM and filtering == EIM:
        return (
            "full cone: one public port for you whatever the destination, open to all",
            "anyone, even peers behind a symmetric NAT",
            "nothing to do",
        )
    if mapping == EIM:
        how = "by address" if filtering == ADM else "by address and port"
        return (
            f"cone (port-restricted: it filters {how}): one public port for you whatever "
            "the destination, the kind most home routers are",
            "peers whose NAT also keeps one port per socket (cone, full cone or none); "
            "a peer behind a symmetric NAT goes through the relay",
            "for symmetric peers too: endpoint-independent filtering (full cone) on the "
            "router, or a port forward for the call",
        )
    return (
        "symmetric: a new public port for every destination, so the port the server saw is "
        "not the one a peer would see",
        "only peers whose NAT lets in any port of an address it has sent to (full cone or "
        "no NAT); everyone else goes through the relay",
        "a router (or a setting, often called endpoint-independent mapping or 'NAT type "
        "open') that keeps one public port per socket; or UPnP/PCP; or IPv6",
    )
