"""The relays a rendezvous offers (--turn-url given more than once) and which of them answer,
sans-IO.

Every PROBE_EVERY seconds each relay gets a STUN Binding request from the rendezvous's main
port (every TURN server answers Binding: coturn, and callpeer-rendezvous); one that leaves
DOWN_AFTER rounds in a row unanswered is left out of the offer until it answers again. They
share one REST secret, so the credentials a caller gets are good on every one of them; the
caller measures its round trip to each and allocates on the nearest (voip/nat/relay_choice.py).
"""

from __future__ import annotations

from collections import Counter

from rendezvous.turn_server import Out
from voip.wire.stun import Address
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import encode

PROBE_EVERY = 5.0  # s between rounds of probes
DOWN_AFTER = 2  # rounds in a row unanswered: the relay is left out of the offer
MAX_RELAYS = 8  # offered at most: a PEER-READY and an answer must stay one small datagram


class RelayFleet:
    def __init__(self, relays: tuple[Address, ...], stats: Counter[str] | None = None):
        if not 1 <= len(relays) <= MAX_RELAYS:
            raise ValueError(f"--turn-url: 1 to {MAX_RELAYS} relays")
        self.relays = relays
        self.stats = stats if stats is not None else Counter()
        self._missed = dict.fromkeys(relays, 0)
        self._asked: dict[bytes, Address] = {}  # transaction ID of a probe in flight: its relay
        self._next = float("-inf")  # the first round goes at once

    def up(self) -> list[Address]:
        """The relays to offer, in the order given: those that answer; all of them if none
        does (a relay down is no worse than none, and the caller falls back to direct)."""
        live = [r for r in self.relays if self._missed[r] < DOWN_AFTER]
        return live or list(self.relays)

    def next_deadline(self) -> float:
        return self._next

    def poll(self, now: float) -> list[Out]:
        if now < self._next:
            return []
        self._next = now + PROBE_EVERY
        for relay in self._asked.values():  # unanswered for a whole round
            self._missed[relay] += 1
            if self._missed[relay] == DOWN_AFTER:
                self.stats["relay_down"] += 1
        self._asked.clear()
        out = []
        for relay in self.relays:
            req = Message(Method.BINDING, Class.REQUEST)
            self._asked[req.transaction_id] = relay
            out.append(Out(encode(req, fingerprint=True), relay))
        return out

    def answered(self, msg: Message) -> bool:
        """Whether `msg` answers one of our probes (its transaction ID is ours alone)."""
        relay = self._asked.pop(msg.transaction_id, None)
        if relay is None or msg.cls != Class.SUCCESS:
            return False
        if self._missed[relay] >= DOWN_AFTER:
            self.stats["relay_back"] += 1
        self._missed[relay] = 0
        return True
