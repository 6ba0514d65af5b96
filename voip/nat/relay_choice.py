"""Which of the relays a rendezvous offers is nearest, sans-IO: the first to answer a Binding."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from voip.wire.stun import Address
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.stun import check_fingerprint
from voip.wire.stun import encode
from voip.wire.stun import parse_message_untrusted

Transmit = tuple[bytes, Address]
MAX_OFFERED = 8  # relays read from one answer: no rendezvous offers more (its MAX_RELAYS)
# s from the first probes to the fallback: bounded, as it delays asking for the peer (ICE
# gathers first), and a relay a second away is no relay to carry a call through.
CHOICE_WAIT = 1.0
FIRST_RTO = 0.1  # s before the first retransmission, doubling: sends at 0, 0.1, 0.3 and 0.7 s


@dataclass(frozen=True)
class RelayChosen:
    """The relay a caller allocates on, and the round trip measured to each one offered."""

    server: Address  # the first to answer; the first offered if none did
    rtts: tuple[tuple[Address, float | None], ...]  # every relay offered, in order: RTT in s

    @property
    def answered(self) -> bool:
        return any(rtt is not None for _, rtt in self.rtts)


@dataclass(frozen=True)
class _Probe:
    relay: Address
    sent: float


class RelayChooser:
    """A rendezvous with a fleet of relays (callpeer-rendezvous --turn-url given more than
    once) offers every one that answers it, with credentials good on all; which is nearest only
    the caller can tell, from where it is. So each gets a STUN Binding request from the call's
    socket at once (every TURN server answers Binding), and the caller allocates on the first
    to answer: a round trip to the nearest relay is all the choice costs. Probes go again, on
    a short schedule, to those that have not answered; after CHOICE_WAIT with no answer at
    all, the first relay offered is used, as before there were several. The others' answers
    are still timed until every relay has answered or CHOICE_WAIT is over, for the report
    (`result`). One relay offered is no choice: no probe is sent, and it is chosen at once."""

    def __init__(self, relays: Sequence[Address], now: float, wait: float = CHOICE_WAIT):
        """Probe `relays` (in the rendezvous's order, duplicates dropped) from the first `poll`,
        due at `now`: sent when they leave, not when the offer came, so the time taken to read
        the offer is not counted in any round trip."""
        self.relays = tuple(dict.fromkeys(relays))[:MAX_OFFERED]
        if not self.relays:
            raise ValueError("no relay to choose from")
        self.wait = wait
        alone = len(self.relays) == 1
        self.chosen: Address | None = self.relays[0] if alone else None
        self.done = alone  # every relay answered, or the wait is over: the figures are final
        self.rtts: dict[Address, float] = {}
        self.forged = 0  # answers with one of our transaction IDs, from elsewhere
        # Each send has its own transaction ID, so an answer says which send it answers and
        # its round trip is timed from that send (no ambiguity after a retransmission).
        self._asked: dict[bytes, _Probe] = {}
        self._next: float | None = None if alone else now
        self._rto = FIRST_RTO
        self._end: float | None = None

    def next_deadline(self) -> float | None:
        return None if self.done else self._next

    def poll(self, now: float) -> list[Transmit]:
        """Probes due now (the first round, or again to the relays still silent); past the wait,
        the choice is made with what answered, or falls back to the first relay offered."""
        if self.done or self._next is None or now < self._next:
            return []
        if self._end is None:
            self._end = now + self.wait
        elif now >= self._end:
            self._finish()
            return []
        out = []
        for relay in self.relays:
            if relay not in self.rtts:
                req = Message(Method.BINDING, Class.REQUEST)
                self._asked[req.transaction_id] = _Probe(relay, now)
                out.append((encode(req, fingerprint=True), relay))
        self._next = min(now + self._rto, self._end)
        self._rto *= 2
        return out

    def handle_untrusted(self, data: bytes, src: Address, now: float) -> bool:
        """A datagram off the socket: True if it answered one of our probes."""
        try:
            msg = parse_message_untrusted(data)
        except StunError:
            return False
        return self.handle(msg, src, now)

    def handle(self, msg: Message, src: Address, now: float) -> bool:
        """A parsed STUN message: True if it carries one of our transaction IDs (it is ours to
        take, whatever it says); its round trip is counted only if it came from the relay that
        probe went to, as a success, with a FINGERPRINT that is right if it has one."""
        probe = self._asked.get(msg.transaction_id)
        answer = msg.cls in (Class.SUCCESS, Class.ERROR)
        if probe is None or msg.method != Method.BINDING or not answer:
            return False
        if src != probe.relay or (msg.fingerprint_at is not None and not check_fingerprint(msg)):
            self.forged += 1  # the real answer may still come: the probe stays asked
            return True
        del self._asked[msg.transaction_id]
        if msg.cls != Class.SUCCESS or probe.relay in self.rtts or self.done:
            return True  # an error, a relay timed already, or too late to count
        self.rtts[probe.relay] = now - probe.sent
        if self.chosen is None:
            self.chosen = probe.relay  # the first to answer: the nearest, as far as we can tell
        if len(self.rtts) == len(self.relays):
            self._finish()
        return True

    def result(self) -> RelayChosen | None:
        """The choice with every relay's round trip, once the figures are final."""
        if not self.done or self.chosen is None:
            return None
        return RelayChosen(self.chosen, tuple((r, self.rtts.get(r)) for r in self.relays))

    def _finish(self) -> None:
        self.done = True
        self._next = None
        if self.chosen is None:
            self.chosen = self.relays[0]  # none answered: the rendezvous's first, as before
