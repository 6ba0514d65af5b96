"""Going direct through a NAT that maps per destination, sans-IO: which technique, and its state.

What the registration probe learned (voip/nat/mapping_probe.py) and the peer's introduction say
which of these a call uses, if any:

- our NAT maps in sequence: we offered predicted ports when we asked (`MappingProbe.predicted`),
  the peer checks them like any candidate, and the checklist sends the checks that take our
  next ports first (voip/nat/checklist.py). Nothing more happens here;
- ours maps per destination at random and the peer's keeps one port: we are birthday
  punching's hard side (`birthday.Opener`: extra sockets, one random port each);
- ours keeps one port and the peer's maps per destination at random, with no predicted or
  router-mapped port offered: we are its easy side (`birthday.Prober`: checks to random ports).

Both stop as soon as a direct pair found some other way proves itself.
"""

from __future__ import annotations

import random

from voip.nat.birthday import Opener
from voip.nat.birthday import Prober
from voip.nat.birthday import SideSend
from voip.nat.checks import ConnectivityChecks
from voip.nat.pairs import Base
from voip.nat.pairs import Pair
from voip.nat.pairs import PathKind
from voip.wire.candidates import CandidateType
from voip.wire.sans_io import earliest
from voip.wire.signal import MAPPING_DEPENDENT
from voip.wire.signal import MAPPING_INDEPENDENT
from voip.wire.signal import PeerReady
from voip.wire.stun import Address
from voip.wire.stun import looks_like_stun
from voip.wire.stun import parse_message_untrusted

Transmit = tuple[bytes, Address]
Send = tuple[bytes, Address, Base]
HELPED = frozenset({CandidateType.MAPPED, CandidateType.PREDICTED})  # no guessing needed


class HardNat:
    def __init__(self) -> None:
        self.rng: random.Random | None = None  # the probes' ports: a system random, or a test's
        self.prober: Prober | None = None
        self.opener: Opener | None = None
        self.side_out: list[SideSend] = []  # from the extra sockets, for the shell to send

    def begin(self, own: str | None, predicting: bool, ready: PeerReady, now: float) -> None:
        """The peers met (again): birthday punching, if one side is hard and one easy."""
        self.stop()
        self.prober = self.opener = None
        public = [c.address for c in ready.candidates if c.kind == CandidateType.SRFLX]
        hosts = {c.address for c in ready.candidates if c.kind == CandidateType.HOST}
        helped = any(c.kind in HELPED for c in ready.candidates)
        if not public or helped or public[0] in hosts:  # a peer with no NAT needs no guessing
            return
        peer = ready.peer_mapping
        if own == MAPPING_INDEPENDENT and peer == MAPPING_DEPENDENT:
            ip = public[0][0]
            known = {port for host, port in (c.address for c in ready.candidates) if host == ip}
            self.prober = Prober(ip, known, now, rng=self.rng)
        elif own == MAPPING_DEPENDENT and peer == MAPPING_INDEPENDENT and not predicting:
            self.opener = Opener(public[0], now)

    @property
    def guessing(self) -> bool:
        """Birthday punching under way: a direct path may come seconds after the relay's."""
        return self.prober is not None or self.opener is not None

    @property
    def open(self) -> tuple[int, ...]:
        """The extra sockets the shell should hold open."""
        return self.opener.open if self.opener is not None else ()

    def next_deadline(self) -> float | None:
        return earliest(*(x.next_deadline() for x in (self.prober, self.opener) if x is not None))

    def poll(self, now: float, checks: ConnectivityChecks) -> list[Transmit]:
        """Probes from the call's socket (easy side); the hard side's go to `side_out`."""
        if self.opener is not None:
            self.side_out += self.opener.poll(now)
        if self.prober is None:
            return []

        def check(dest: Address) -> bytes:
            return checks.credentials.check(checks.controlling, checks.tiebreaker, False)[1]

        return self.prober.poll(now, check)

    def heard(self, src: Address, now: float) -> None:
        """A check or answer reached the call's socket from `src`."""
        if self.prober is not None:
            self.prober.heard(src, now)

    def side(
        self, index: int, data: bytes, src: Address, now: float, checks: ConnectivityChecks
    ) -> list[Send] | None:
        """A datagram (not media) on extra socket `index`: the first authenticated check from
        the peer makes it our birthday base, whose checks and answers the checks take from then
        on; anything else on the extra sockets is a stranger's, and dropped. Raises StunError
        for a malformed message (a USERNAME that is not UTF-8, too)."""
        if self.opener is None or not looks_like_stun(data):
            return None
        msg = parse_message_untrusted(data)
        adopted = index == self.opener.winner
        if not adopted and not (
            checks.credentials.is_for_us(msg) and self.opener.adopt(index, now)
        ):
            return None
        return checks.handle(msg, src, now, Base.BIRTHDAY)

    def route(self, sends: list[Send]) -> list[Send]:
        """Sends from the birthday base go to its socket (`side_out`); the rest are returned."""
        winner = self.opener.winner if self.opener is not None else None
        kept: list[Send] = []
        for data, dest, base in sends:
            if base != Base.BIRTHDAY:
                kept.append((data, dest, base))
            elif winner is not None:
                self.side_out.append(SideSend(winner, data, dest))
        return kept

    def send_side(self, data: bytes, dest: Address) -> list[Transmit]:
        """Media on the birthday path: from its socket, none from the call's."""
        self.route([(data, dest, Base.BIRTHDAY)])
        return []

    def pop_side(self) -> list[SideSend]:
        out, self.side_out = self.side_out, []
        return out

    def settled(self, pair: Pair) -> None:
        """A pair proved itself: no more guessing if it is direct and not the birthday one."""
        if pair.kind == PathKind.DIRECT and pair.base != Base.BIRTHDAY and not self.found(pair):
            self.stop()

    def stop(self) -> None:
        if self.prober is not None:
            self.prober.stop()
        if self.opener is not None and self.opener.winner is None:
            self.opener.give_up()

    def found(self, pair: Pair) -> str | None:
        """How birthday punching found `pair`, for the report; None if it did not."""
        if pair.base == Base.BIRTHDAY and self.opener is not None:
            return self.opener.describe()
        prober = self.prober
        if prober is None or prober.found is None or pair.remote.kind != CandidateType.PRFLX:
            return None
        return prober.describe() if pair.remote.address[0] == prober.ip else None
