"""Learn the NAT's mapping behaviour with one Binding at registration, sans-IO (RFC 5780 test II).

The REGISTER answer gives our public address as the server's primary address saw it, and the
server's alternate address. One Binding to the alternate IP (primary port) from the same socket
shows whether the NAT kept the same public address for another destination: endpoint-
independent mapping, or a mapping per destination (symmetric), where punching to a peer who
also maps per destination cannot work. Advice only: no answer in time means unknown.
"""

from __future__ import annotations

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

Transmit = tuple[bytes, Address]


class MappingProbe:
    def __init__(self, primary_mapped: Address, server: Address, other: Address):
        self.primary_mapped = primary_mapped
        # Test II: the alternate IP with the primary port, so only the address differs.
        self.dest = (other[0], server[1])
        self.result: str | None = None
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
        return True
