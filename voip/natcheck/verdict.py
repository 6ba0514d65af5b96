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

import itertools
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from voip.wire.candidates import format_address
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
    hairpin: bool | None = None  # a request to our own public address came back in
    hairpin_source: Address | None = None  # where that request seemed to come from
    sender_local: Address | None = None  # the socket that sent it, and its public address
    sender_mapped: Address | None = None
    ports: list[tuple[int, int]] = field(default_factory=list)  # (local, public), in order
    lifetime: tuple[float, float | None] | None = None  # (alive after, gone by) in s
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
    hairpinning: str | None = None
    port_allocation: str | None = None
    lifetime: str | None = None

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
            "hairpinning": self.hairpinning,
            "port_allocation": self.port_allocation,
            "lifetime": self.lifetime,
            "lifetime_s": None
            if tests.lifetime is None
            else {"alive_after": tests.lifetime[0], "gone_by": tests.lifetime[1]},
            "tests": {
                "mapped_primary": addr(tests.mapped1),
                "mapped_alternate_ip": addr(tests.mapped2),
                "mapped_alternate_ip_port": addr(tests.mapped3),
                "answer_from_other_ip_and_port": tests.filter_any,
                "answer_from_other_port": tests.filter_port,
                "server_other_address": addr(tests.other),
                "hairpin_arrived": tests.hairpin,
                "hairpin_source": addr(tests.hairpin_source),
                "hairpin_sender_public": addr(tests.sender_mapped),
                "ports_local_public": [list(p) for p in tests.ports],
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
    allocation = port_allocation(t.ports, behind, mapping_ports(t))
    sequential = allocation is not None and allocation.startswith(SEQUENTIAL)
    return NatVerdict(
        True,
        behind,
        mapping,
        filtering,
        *_words(behind, mapping, filtering, sequential=sequential),
        hairpinning=hairpinning(t),
        port_allocation=allocation,
        lifetime=lifetime_words(t.lifetime),
    )


def hairpinning(t: NatTests) -> str | None:
    if t.hairpin is None:
        return None
    if not t.hairpin:
        return (
            "no: a packet to your own public address does not come back in, so two people "
            "behind this router reach each other only by their local addresses"
        )
    if t.hairpin_source is not None and t.hairpin_source == t.sender_mapped:
        return "yes, from the sender's public address (RFC 4787 REQ-9)"
    if t.hairpin_source is not None and t.hairpin_source == t.sender_local:
        return (
            "yes, but from the sender's local address, not its public one (RFC 4787 REQ-9 "
            "wants the public one): a peer's checks may not match"
        )
    return "yes"


SEQUENTIAL_STEP = 16  # largest step between consecutive new public ports still called sequential
SEQUENTIAL = "sequential"


def mapping_ports(t: NatTests) -> list[int]:
    """The public port of every new mapping the tests made, in the order they were made.

    Between the first socket's Binding (`ports[0]`) and the second socket's, the mapping tests
    sent from the first socket to the alternate address: behind a NAT that maps per
    destination each new destination there was a new mapping too, and took a port. A NAT
    that allocates in sequence gives the second socket the port after those, not after the
    first socket's."""
    public = [p for _, p in t.ports]
    between = []
    if t.mapped1 is not None and t.mapped2 is not None and t.mapped2 != t.mapped1:
        between.append(t.mapped2[1])
        if t.mapped3 is not None and t.mapped3 != t.mapped2:
            between.append(t.mapped3[1])
    return public[:1] + between + public[1:]


def port_allocation(
    ports: list[tuple[int, int]], behind: bool, order: list[int] | None = None
) -> str | None:
    """How public ports are chosen, from (local, public) pairs of fresh sockets in order, and
    `order`, the public ports of every new mapping in the order made (mapping_ports; by
    default the fresh sockets' alone)."""
    if len(ports) < 3:
        return None
    if not behind:
        return "not translated: your public port is your local port"
    if all(local == public for local, public in ports):
        return "preserved: your public port is your local port"
    public = [p for _, p in ports] if order is None else order
    steps = [b - a for a, b in itertools.pairwise(public)]
    if all(0 < s <= SEQUENTIAL_STEP for s in steps):
        return (
            f"{SEQUENTIAL} (steps of {'/'.join(str(s) for s in sorted(set(steps)))}): the next "
            "public port can be predicted"
        )
    return "random: the next public port cannot be predicted"


def lifetime_words(lifetime: tuple[float, float | None] | None) -> str | None:
    if lifetime is None:
        return None
    alive, gone = lifetime
    if gone is None:
        return f"over {alive:.0f} s (the longest quiet tried)"
    return (
        f"between {alive:.1f} and {gone:.1f} s of quiet; a keepalive every "
        f"{keepalive_interval(alive):.0f} s holds it"
    )


def keepalive_interval(lifetime: float, default: float = 10.0) -> float:
    """How often to send on an idle mapping that lives `lifetime` s: a third, so two lost
    keepalives in a row still hold it, and never slower than `default`."""
    return max(1.0, min(default, lifetime / 3))


# -- the mapping lifetime search (pure planning; the client runs the probes) ------------------
COARSE_WAITS = (2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 240.0, 480.0)
REFINE_POINTS = 4


def coarse_waits(limit: float) -> list[float]:
    """Quiet periods for the first round: doubling-ish, up to and including `limit`."""
    return [w for w in COARSE_WAITS if w < limit] + [limit]


def refine_waits(alive: float, gone: float, points: int = REFINE_POINTS) -> list[float]:
    """Quiet periods for the second round, evenly inside (alive, gone)."""
    return [alive + (gone - alive) * i / (points + 1) for i in range(1, points + 1)]


def bounds(
    results: dict[float, bool], alive: float = 0.0, gone: float | None = None
) -> tuple[float, float | None]:
    """(longest quiet a mapping outlived, shortest it did not) from {wait: outlived}."""
    for wait, lived in results.items():
        if lived:
            alive = max(alive, wait)
        elif gone is None or wait < gone:
            gone = wait
    return alive, gone


def _words(
    behind: bool, mapping: str | None, filtering: str | None, *, sequential: bool = False
) -> tuple[str, str, str]:
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
    advice = (
        "a router (or a setting, often called endpoint-independent mapping or 'NAT type "
        "open') that keeps one public port per socket; or UPnP/PCP; or IPv6"
    )
    if sequential:
        return (
            "symmetric, in sequence: a new public port for every destination, each the next "
            "one, so the port a peer will see is not the one the server saw but can be "
            "predicted",
            "peers whose NAT keeps one port per socket (cone, full cone or none): callpeer "
            "aims at the ports this NAT will give next (port prediction); a peer behind "
            "another symmetric NAT goes through the relay",
            advice,
        )
    return (
        "symmetric: a new public port for every destination, so the port the server saw is "
        "not the one a peer would see",
        "only peers whose NAT lets in any port of an address it has sent to (full cone or "
        "no NAT); everyone else goes through the relay",
        advice,
    )
