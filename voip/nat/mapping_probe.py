"""Learn the NAT's mapping behaviour with one Binding at registration, sans-IO (RFC 5780 test II).

The REGISTER answer gives our public address as the server's primary address saw it, and the
server's alternate address. One Binding to the alternate IP (primary port) from the same socket
shows whether the NAT kept the same public address for another destination: endpoint-
independent mapping, or a mapping per destination (symmetric), where punching to a peer who
also maps per destination cannot work. Advice only: no answer in time means unknown.

A NAT that maps per destination may still be predictable: a carrier-grade NAT often gives each
new mapping the next port (or the next but a fixed step). When the alternate's port is a small
step above the primary's, `predicted` offers the next ports as candidates (port prediction).
"""

from __future__ import annotations

from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.signal import MAPPING_DEPENDENT
from voip.wire.signal import MAPPING_INDEPENDENT
from voip.wire.stun import Address
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.stun import encode
from voip.wire.transactions import Schedule
from voip.wire.transactions import Transaction
from voip.wire.transactions import TransactionTable

# About a second in all: it runs alongside the relay's allocation, which takes two round trips,
# and must not hold up asking for the peer when the alternate address does not answer.
PROBE_SCHEDULE = Schedule(rto=0.25, rc=3, rm=1)
# The largest step between two new public ports still called sequential (as natcheck's "public
# ports" test): a random NAT lands this close by chance once in 4,000 calls.
SEQUENTIAL_STEP = 16
PREDICTED = 8  # ports offered past the last one seen: the mappings a call makes at its start

Transmit = tuple[bytes, Address]


class MappingProbe:
    def __init__(self, primary_mapped: Address, server: Address, other: Address):
        self.primary_mapped = primary_mapped
        # Test II: the alternate IP with the primary port, so only the address differs.
        self.dest = (other[0], server[1])
        self.result: str | None = None
        self.step: int | None = None  # with a NAT that maps in sequence: its step
        self.last: Address | None = None  # the newest mapping seen (the alternate's)
        self.offered: tuple[Candidate, ...] = ()  # the predicted ports we offered last
        self.done = False
        self._txns: TransactionTable[None] = TransactionTable()

    def start(self, now: float) -> list[Transmit]:
        req = Message(Method.BINDING, Class.REQUEST)
        txn = Transaction.scheduled(
            req.transaction_id, encode(req, fingerprint=True), self.dest, None, PROBE_SCHEDULE
        )
        return [(self._txns.start(now, txn), self.dest)]

    def next_deadline(self) -> float | None:
        return self._txns.next_deadline()

    def poll(self, now: float) -> list[Transmit]:
        resend, failed = self._txns.poll(now)
        if failed:
            self.done = True  # unknown: no alternate answered
        return [(t.data, t.dest) for t in resend]

    def handle(self, msg: Message, src: Address) -> bool:
        """True if `msg` was our answer (whatever it said)."""
        if msg.method != Method.BINDING or msg.transaction_id not in self._txns:
            return False
        self._txns.match(msg)
        self.done = True
        if msg.cls != Class.SUCCESS:
            return True
        try:
            mapped = msg.xor_address()
        except StunError:
            return True
        if mapped is not None:
            same = mapped == self.primary_mapped
            self.result = MAPPING_INDEPENDENT if same else MAPPING_DEPENDENT
            step = mapped[1] - self.primary_mapped[1]
            if mapped[0] == self.primary_mapped[0] and 0 < step <= SEQUENTIAL_STEP:
                self.step, self.last = step, mapped
        return True

    def predicted(self, since: Address | None = None) -> tuple[Candidate, ...]:
        """The ports our NAT will give the next new mappings, if it maps in sequence: the
        first checks to the peer take them in order (voip/nat/checklist.py). `since`: a
        mapping made after the probe's (the relay's allocation, to another address), which
        took the next port itself."""
        if self.step is None or self.last is None:
            return ()
        ip, last = self.last
        if since is not None and since[0] == ip and 0 < since[1] - last <= self.step * PREDICTED:
            last = since[1]
        ports = [last + self.step * i for i in range(1, PREDICTED + 1)]
        self.offered = tuple(
            Candidate.make(CandidateType.PREDICTED, (ip, port), 65535 - i)
            for i, port in enumerate(ports)
            if port <= 65535
        )
        return self.offered
