"""The rendezvous servers a caller may register with: which one is current, when to leave it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from voip.wire.stun import Address
from voip.wire.transactions import FAILOVER_SCHEDULE
from voip.wire.transactions import SERVER_SCHEDULE
from voip.wire.transactions import Schedule

# s between refreshes while we wait for the peer and have another server to move to: a dead
# server is noticed at the next refresh, so this (plus FAILOVER_SCHEDULE's 2.75 s) bounds how
# long a waiting caller stays where no peer can find it. Not in a call: the server matters
# again only for an ICE restart, and a third of the name's lifetime keeps its load down.
FAILOVER_REFRESH = 2.5


def server_list(server: Address | Sequence[Address]) -> tuple[Address, ...]:
    """One server's address, or several in order: each once, first place kept."""
    if len(server) == 2 and isinstance(server[0], str):
        return (cast("Address", tuple(server)),)
    servers = tuple(dict.fromkeys(cast("Sequence[Address]", server)))
    if not servers:
        raise ValueError("no rendezvous server given")
    return servers


class RendezvousServers:
    """The servers in their order, round robin. With one, a caller that loses it retries it
    (it may be restarting); with several, it moves to the next at once."""

    def __init__(self, server: Address | Sequence[Address]):
        self.all = server_list(server)
        self._index = 0
        self.silent = 0  # servers in a row that let a REGISTER fail, since the last answer
        self.silent_since = 0.0  # when the first of them was sent that REGISTER

    @property
    def current(self) -> Address:
        return self.all[self._index]

    def answered(self) -> None:
        self.silent = 0

    def failed(self, started: float, registered: bool) -> bool:
        """A REGISTER sent at `started` to the current server was never answered: whether to
        move to the next. Always once registered (the name must live on somewhere); before,
        only until every server has had its chance."""
        if self.silent == 0:
            self.silent_since = started
        self.silent += 1
        return len(self.all) > 1 and (registered or self.silent < len(self.all))

    def waited(self, now: float, started: float) -> float:
        """How long we have had no answer: from `started` (the REGISTER that failed) with one
        server, from the first REGISTER that went unanswered with several."""
        return now - (started if len(self.all) == 1 else self.silent_since)

    def advance(self) -> Address:
        self._index = (self._index + 1) % len(self.all)
        return self.current

    def schedule(self, answered_here: bool) -> Schedule:
        """Retransmissions for a REGISTER: quick to give up on a server that has answered us
        when there is another to go to. Not on one never heard from: its silence may be a
        network that blocks UDP, which the shell gets 9.75 s to find a stream through."""
        return FAILOVER_SCHEDULE if answered_here and len(self.all) > 1 else SERVER_SCHEDULE

    def refresh_interval(self, lifetime: float, waiting: bool, keepalive: float | None) -> float:
        # A third of the lifetime, so two lost refreshes still keep the name.
        interval = max(1.0, lifetime / 3)
        if waiting and len(self.all) > 1:
            interval = min(interval, FAILOVER_REFRESH)
        # A NAT that forgets a quiet mapping sooner would cut the server off from us, and a
        # symmetric one would give the refresh a new public port, which the server refuses.
        return interval if keepalive is None else min(interval, keepalive)
