"""Birthday punching for one hard side, sans-IO (Tailscale, "How NAT traversal works").

When our NAT gives every destination a new random port (symmetric) and the peer's keeps one
port for all (cone), the peer cannot learn which port our NAT will use toward it, and its
filter drops our packets until it has sent to that very port. So both sides guess, the birthday
paradox's way:

- the *hard* side opens SOCKETS extra sockets; each sends one Binding indication to the peer's
  public address, which makes our NAT open one more random public port toward exactly that
  address (the indication is dropped by the peer's NAT, and needs no answer);
- the *easy* side sends authenticated checks to random ports of the hard side's public IP,
  PROBE_BATCH every PROBE_INTERVAL, at most MAX_PROBES in all. Each one opens the easy side's
  filter for the port it went to, and one that lands on an open port reaches an extra socket.

With 256 of ~64,500 ports open, each probe hits with p = 1/252: 1,000 probes find one in 98 % of
calls, 2,048 in 99.97 %. The socket that hears an authenticated check is adopted as a base of
its own (pairs.Base.BIRTHDAY) and answers like any ICE agent: the check's answer and a
triggered check back go through the mapping it opened, which the easy side learns as a
peer-reflexive candidate and proves both ways. The rest of the sockets are closed then, or
after GIVE_UP if none is heard. Nothing is sent to an IP the rendezvous did not give.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from voip.wire.stun import Address
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import encode

SOCKETS = 256  # hard side: extra sockets, each one random public port toward the peer
PROBE_BATCH = 10  # easy side: checks per batch...
PROBE_INTERVAL = 0.02  # ...one batch a media frame: 500 probes/s, about 60 kB/s
MAX_PROBES = 2048  # in all: 99.97 % of calls find an open port by then (about 4 s)
# The hard side opens its ports when introduced, as the easy side starts: the first batches
# would find fewer open ports, so the easy side waits that long.
PROBE_DELAY = 0.1
GIVE_UP = 6.0  # s after the start: the hard side closes its sockets, none having been heard
PORTS = range(1024, 65536)  # where NATs put mappings (Linux masquerade's default range)


MakeCheck = Callable[[Address], bytes]  # an authenticated check to this address


@dataclass(frozen=True)
class SideSend:
    """A datagram to send from extra socket `index` (not the call's own socket)."""

    index: int
    data: bytes
    dest: Address


class Prober:
    """The easy side: checks to random ports of the hard side's public IP, bounded."""

    def __init__(
        self,
        ip: str,
        known_ports: set[int],
        now: float,
        total: int = MAX_PROBES,
        rng: random.Random | None = None,  # tests give a seeded one
    ):
        self.ip = ip
        self.started = now
        # Random order without repeats; the ports the rendezvous gave are checked anyway.
        ports = (rng or secrets.SystemRandom()).sample(PORTS, total + len(known_ports))
        self._ports = [p for p in ports if p not in known_ports][:total]
        self._probed: set[int] = set()
        self._next: float | None = now + PROBE_DELAY
        self.found: tuple[int, float] | None = None  # (probes sent, s) when one was heard

    @property
    def sent(self) -> int:
        return len(self._probed)

    def next_deadline(self) -> float | None:
        return self._next

    def poll(self, now: float, make_check: MakeCheck) -> list[tuple[bytes, Address]]:
        """The batch due now, each an authenticated check made by `make_check(dest)`."""
        if self._next is None or now < self._next:
            return []
        batch = self._ports[self.sent : self.sent + PROBE_BATCH]
        self._probed.update(batch)
        more = self.sent < len(self._ports)
        self._next = now + PROBE_INTERVAL if more else None
        return [(make_check((self.ip, port)), (self.ip, port)) for port in batch]

    def heard(self, src: Address, now: float) -> bool:
        """A check or answer from `src`: True (once) if it came from a port we probed."""
        if self.found is not None or src[0] != self.ip or src[1] not in self._probed:
            return False
        self.found = (self.sent, now - self.started)
        self.stop()
        return True

    def stop(self) -> None:
        self._next = None

    def describe(self) -> str | None:
        if self.found is None:
            return None
        probes, took = self.found
        return f"birthday, {probes} probes, {took:.1f} s"


class Opener:
    """The hard side: SOCKETS extra sockets, each opening a port toward the peer."""

    def __init__(self, peer: Address, now: float, count: int = SOCKETS):
        self.peer = peer
        self.started = now
        self.count = count  # sockets the shell should hold open (`open`)
        self.winner: int | None = None  # the socket the peer's check reached
        self._opened = False
        self._deadline: float | None = now + GIVE_UP
        self.found_after: float | None = None

    @property
    def open(self) -> tuple[int, ...]:
        """The extra sockets that should be open now: all while guessing, then the winner's."""
        if self.winner is not None:
            return (self.winner,)
        return tuple(range(self.count)) if self._deadline is not None else ()

    def next_deadline(self) -> float | None:
        return self._deadline

    def poll(self, now: float) -> list[SideSend]:
        """One Binding indication from each socket, once: a port opened toward the peer."""
        if self._deadline is not None and now >= self._deadline and self.winner is None:
            self._deadline = None  # none was heard: close them all
            return []
        if self._opened or self._deadline is None:
            return []
        self._opened = True
        return [SideSend(i, _indication(), self.peer) for i in range(self.count)]

    def adopt(self, index: int, now: float) -> bool:
        """An authenticated check reached socket `index`: it becomes our birthday base (the
        first one only; later ones are ignored)."""
        if self.winner is not None or not 0 <= index < self.count or self._deadline is None:
            return index == self.winner
        self.winner = index
        self.found_after = now - self.started
        self._deadline = None
        return True

    def give_up(self) -> None:
        """Close every extra socket (a direct path was found some other way, or none here)."""
        self._deadline = None

    def describe(self) -> str | None:
        if self.found_after is None:
            return None
        return f"birthday, {self.count} ports opened, {self.found_after:.1f} s"


def _indication() -> bytes:
    """A Binding indication (RFC 8489 §6.3): nothing answers it, and it opens the mapping."""
    return encode(Message(Method.BINDING, Class.INDICATION), fingerprint=True)
