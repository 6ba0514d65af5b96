"""STUN client transactions: retransmission schedule and matching, sans-IO (RFC 8489 §6.2.1)."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from typing import Generic
from typing import TypeVar

from voip.wire.deadlines import Deadlines
from voip.wire.stun import Address
from voip.wire.stun import Message

T = TypeVar("T")

# RFC 8489 §6.2.1 defaults: RTO starts at 500 ms and doubles; Rc = 7 sends; after the last send
# the client waits Rm = 16 RTOs for the answer.
DEFAULT_RTO = 0.5
DEFAULT_RC = 7
DEFAULT_RM = 16


@dataclass(frozen=True)
class Schedule:
    rto: float
    rc: int
    rm: int


# For requests to a server a round trip away (rendezvous, TURN): a quicker first retransmission
# than the RFC's 500 ms, and failure declared after 9.75 s (last send at 7.75 s), not 39.5 s.
SERVER_SCHEDULE = Schedule(rto=0.25, rc=6, rm=8)
# For a server that has answered us and that we may leave for another (a caller given several
# rendezvous servers): failure declared after 2.75 s (sends at 0, 0.25, 0.75 and 1.75 s), so a
# dead one is left within seconds. Four sends lost in a row are rare enough, and a move to an
# equal server costs one round trip more.
FAILOVER_SCHEDULE = Schedule(rto=0.25, rc=4, rm=4)


@dataclass
class Transaction(Generic[T]):
    """One outstanding request: the bytes to (re)send, where to, and when."""

    transaction_id: bytes
    data: bytes
    dest: Address
    context: T
    rto: float = DEFAULT_RTO
    rc: int = DEFAULT_RC
    rm: int = DEFAULT_RM
    sent: int = 0
    started: float = 0.0
    last_sent: float = 0.0
    deadline: float = 0.0
    _interval: float = field(default=0.0, repr=False)

    @classmethod
    def scheduled(
        cls, transaction_id: bytes, data: bytes, dest: Address, context: T, schedule: Schedule
    ) -> Transaction[T]:
        return cls(transaction_id, data, dest, context, schedule.rto, schedule.rc, schedule.rm)

    def first_send(self, now: float) -> bytes:
        self.started = self.last_sent = now
        self.sent = 1
        self._interval = self.rto
        self.deadline = now + (self.rto if self.rc > 1 else self.rto * self.rm)
        return self.data

    def on_deadline(self, now: float) -> bytes | None:
        """Past the deadline: the bytes to send again, or None when the transaction has failed."""
        if self.sent >= self.rc:
            return None
        self.sent += 1
        self.last_sent = now
        self._interval *= 2
        # After the last retransmission, wait Rm * RTO in all (§6.2.1: 39.5 s with defaults).
        wait = self.rto * self.rm if self.sent == self.rc else self._interval
        self.deadline = now + wait
        return self.data


class TransactionTable(Generic[T]):
    """Outstanding client transactions keyed by transaction ID.

    The owner calls `start` to send, `match` with every response it parses, and `poll` at
    `next_deadline()`; poll returns what to resend and what timed out. Deadlines sit in a heap,
    so a server with many transactions out pays O(log n) per one, not a scan of all of them.
    """

    def __init__(self) -> None:
        self._pending: dict[bytes, Transaction[T]] = {}
        self._deadlines: Deadlines[bytes] = Deadlines()

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, transaction_id: bytes) -> bool:
        return transaction_id in self._pending

    def start(self, now: float, txn: Transaction[T]) -> bytes:
        self._pending[txn.transaction_id] = txn
        data = txn.first_send(now)
        self._deadlines.set(txn.transaction_id, txn.deadline)
        return data

    def match(self, response: Message) -> Transaction[T] | None:
        """The transaction this response answers, removed from the table; None for a stray."""
        self._deadlines.discard(response.transaction_id)
        return self._pending.pop(response.transaction_id, None)

    def restore(self, txn: Transaction[T]) -> None:
        """Put back a transaction that `match` took for an answer that turned out not to be one."""
        self._pending[txn.transaction_id] = txn
        self._deadlines.set(txn.transaction_id, txn.deadline)

    def pending(self) -> list[Transaction[T]]:
        return list(self._pending.values())

    def cancel(self, transaction_id: bytes) -> None:
        self._pending.pop(transaction_id, None)
        self._deadlines.discard(transaction_id)

    def cancel_all(self) -> None:
        self._pending.clear()
        self._deadlines.clear()

    def next_deadline(self) -> float | None:
        return self._deadlines.next()

    def poll(self, now: float) -> tuple[list[Transaction[T]], list[Transaction[T]]]:
        """(transactions to send again now, transactions that timed out) as of `now`.

        A transaction to resend carries its bytes, destination and context.
        """
        resend: list[Transaction[T]] = []
        failed: list[Transaction[T]] = []
        for tid in self._deadlines.due(now):
            txn = self._pending[tid]
            if txn.on_deadline(now) is None:
                del self._pending[tid]
                failed.append(txn)
            else:
                resend.append(txn)
                self._deadlines.set(tid, txn.deadline)
        return resend, failed
