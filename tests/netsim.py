"""A deterministic network simulator with NATs, for driving sans-IO objects in tests.

Hosts have addresses; a host behind a NAT sends through it. A NAT maps endpoint-independently
("cone") or per destination, at random ports ("symmetric", seeded: the same every run) or at
the next port ("symmetric-sequential"), and filters by address and port unless it is
"full-cone". Delivery is by simulated time with per-link one-way delays; nothing sleeps.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Protocol

Address = tuple[str, int]
Transmit = tuple[bytes, Address]


class Endpoint(Protocol):
    def handle(self, data: bytes, src: Address, now: float) -> list[Transmit]: ...
    def poll(self, now: float) -> list[Transmit]: ...
    def next_deadline(self) -> float | None: ...


class Responder:
    """An endpoint that only answers what it is sent: it sends nothing of its own and keeps no
    timer (subclasses give `handle`)."""

    def poll(self, now: float) -> list[Transmit]:
        return []

    def next_deadline(self) -> float | None:
        return None


@dataclass
class Nat:
    public_ip: str
    kind: str = "cone"  # "cone", "full-cone", "symmetric" or "symmetric-sequential"
    hairpin: bool = False
    next_port: int = 40000
    mappings: dict[tuple[Address, Address | None], int] = field(default_factory=dict)
    reverse: dict[int, Address] = field(default_factory=dict)
    permitted: set[tuple[int, Address]] = field(default_factory=set)
    dropped: int = 0
    # Ports opened on request (PCP): public port -> LAN address, open to every sender; and the
    # senders seen on them, whose replies leave from the same port (as conntrack's DNAT does).
    opened: dict[int, Address] = field(default_factory=dict)
    opened_to: set[tuple[int, Address]] = field(default_factory=set)
    rng: random.Random = field(default_factory=lambda: random.Random(5))

    def _new_port(self) -> int:
        """The port for a new mapping: the next one, or a random free one (symmetric)."""
        if self.kind != "symmetric":
            self.next_port += 1
            return self.next_port - 1
        while (port := self.rng.randrange(1024, 65536)) in self.reverse or port in self.opened:
            pass
        return port

    def open_port(self, internal: Address) -> int:
        port = next((p for p, a in self.opened.items() if a == internal), None)
        port = self._new_port() if port is None else port
        self.opened[port] = internal
        return port

    def outbound(self, src: Address, dst: Address) -> Address:
        for port, internal in self.opened.items():
            if internal == src and (port, dst) in self.opened_to:
                return self.public_ip, port
        key = (src, dst if self.kind.startswith("symmetric") else None)
        if key not in self.mappings:
            self.mappings[key] = new = self._new_port()
            self.reverse[new] = src
        port = self.mappings[key]
        self.permitted.add((port, dst))
        return self.public_ip, port

    def inbound(self, dst_port: int, src: Address) -> Address | None:
        if dst_port in self.opened:
            self.opened_to.add((dst_port, src))
            return self.opened[dst_port]
        internal = self.reverse.get(dst_port)
        if internal is None:
            self.dropped += 1
            return None
        if self.kind != "full-cone" and (dst_port, src) not in self.permitted:
            self.dropped += 1  # address-and-port-dependent filtering
            return None
        return internal


class PcpGateway(Responder):
    """A router's PCP server on its LAN address (RFC 6887 MAP for UDP, as miniupnpd answers),
    opening ports on its `Nat`; with `answer` False, a router that does not speak PCP."""

    def __init__(self, nat: Nat, answer: bool = True):
        self.nat, self.answer = nat, answer
        self.requests: list[bytes] = []

    def handle(self, data: bytes, src: Address, now: float) -> list[Transmit]:
        self.requests.append(data)
        if not self.answer or len(data) != 60 or data[:2] != b"\x02\x01":
            return []
        lifetime, nonce, internal = data[4:8], data[24:36], int.from_bytes(data[40:42], "big")
        if lifetime == bytes(4):
            port = next((p for p, a in self.nat.opened.items() if a == (src[0], internal)), 0)
            self.nat.opened.pop(port, None)
        else:
            port = self.nat.open_port((src[0], internal))
        public = bytes(10) + b"\xff\xff" + bytes(int(x) for x in self.nat.public_ip.split("."))
        header = b"\x02\x81\x00\x00" + lifetime + int(now).to_bytes(4, "big") + bytes(12)
        payload = nonce + b"\x11\x00\x00\x00" + data[40:42] + port.to_bytes(2, "big") + public
        return [(header + payload, src)]


class Network:
    def __init__(self, delay: Callable[[Address, Address], float] | None = None):
        self.now = 0.0
        self.delay = delay or (lambda s, d: 0.005)
        self.hosts: dict[Address, Endpoint] = {}
        self.nat_of: dict[str, Nat] = {}  # private IP -> its NAT
        self.nats: dict[str, Nat] = {}  # public IP -> NAT
        self.sent: list[tuple[float, Address, Address, bytes]] = []  # after translation
        self._queue: list[tuple[float, int, bytes, Address, Address]] = []
        self._seq = itertools.count()
        self.cuts: set[frozenset[str]] = set()  # IP pairs between which nothing gets through

    def cut(self, ip_a: str, ip_b: str) -> None:
        """From now on drop everything between two public addresses (a path dies)."""
        self.cuts.add(frozenset((ip_a, ip_b)))

    def restore(self, ip_a: str, ip_b: str) -> None:
        self.cuts.discard(frozenset((ip_a, ip_b)))

    def add_nat(self, nat: Nat) -> Nat:
        self.nats[nat.public_ip] = nat
        return nat

    def attach(self, addr: Address, endpoint: Endpoint, nat: Nat | None = None) -> None:
        self.hosts[addr] = endpoint
        if nat is not None:
            self.nat_of[addr[0]] = nat

    def send(self, src: Address, datagrams: list[Transmit]) -> None:
        for data, dst in datagrams:
            nat = self.nat_of.get(src[0])
            wire_src = src
            if (
                nat is not None
                and dst[0] != nat.public_ip
                and dst in self.hosts
                and self.nat_of.get(dst[0]) is nat
            ):
                pass  # same LAN: delivered directly, no translation
            elif nat is not None:
                if dst[0] == nat.public_ip and not nat.hairpin:
                    nat.dropped += 1
                    continue
                wire_src = nat.outbound(src, dst)
            if frozenset((wire_src[0], dst[0])) in self.cuts:
                continue
            self.sent.append((self.now, wire_src, dst, data))
            heapq.heappush(
                self._queue,
                (self.now + self.delay(wire_src, dst), next(self._seq), data, wire_src, dst),
            )

    def _deliver(self, data: bytes, src: Address, dst: Address) -> None:
        if dst[0] in self.nats:
            internal = self.nats[dst[0]].inbound(dst[1], src)
            if internal is None:
                return
            dst = internal
        endpoint = self.hosts.get(dst)
        if endpoint is not None:
            self.send(dst, endpoint.handle(data, src, self.now))

    def run(self, until: float, stop: Callable[[], bool] = lambda: False) -> None:
        while self.now < until and not stop():
            deadlines = [
                (d, a) for a, e in self.hosts.items() if (d := e.next_deadline()) is not None
            ]
            next_timer = min(deadlines, default=(float("inf"), None))
            next_packet = self._queue[0][0] if self._queue else float("inf")
            t = min(next_timer[0], next_packet, until)
            self.now = max(self.now, t)
            if next_packet <= next_timer[0] and self._queue and next_packet <= until:
                _, _, data, src, dst = heapq.heappop(self._queue)
                self._deliver(data, src, dst)
            elif next_timer[1] is not None and next_timer[0] <= until:
                addr = next_timer[1]
                self.send(addr, self.hosts[addr].poll(self.now))


def forget_mappings(nat: Nat) -> None:
    """The NAT forgets every mapping and what it let in (a router's `conntrack -F`, or a
    reboot): the next packet out gets a new public port, and packets to the old ones are
    dropped."""
    nat.mappings.clear()
    nat.reverse.clear()
    nat.permitted.clear()


def detach_ip(net: Network, ip: str) -> dict[Address, Endpoint]:
    """Take every host at `ip` off the network, as a process killed without a word: nothing is
    delivered to it and it sends nothing more (what is already in flight still arrives)."""
    gone = {addr: host for addr, host in net.hosts.items() if addr[0] == ip}
    for addr in gone:
        del net.hosts[addr]
    return gone
