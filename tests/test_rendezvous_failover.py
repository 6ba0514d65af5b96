"""A caller given several rendezvous servers, sans-IO: two `RendezvousLogic`s in this process,
one of which stops answering; simulated time, no sockets."""

from __future__ import annotations

import pytest

from rendezvous.logic import RendezvousLogic
from voip.nat.rendezvous_client import RendezvousClient
from voip.nat.rendezvous_servers import FAILOVER_REFRESH
from voip.nat.rendezvous_servers import server_list
from voip.nat.signal_events import Asked
from voip.nat.signal_events import GotPeer
from voip.nat.signal_events import Refreshed
from voip.nat.signal_events import Registered
from voip.nat.signal_events import ServerMoved
from voip.nat.signal_events import SignalEvent
from voip.nat.signal_events import Unreachable
from voip.wire.signal import MAPPING_DEPENDENT
from voip.wire.signal import MAPPING_INDEPENDENT
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import parse_message_untrusted

Addr = tuple[str, int]
S1, S2 = ("203.0.113.10", 3478), ("203.0.113.11", 3478)
A, B = ("198.51.100.5", 4000), ("198.51.100.7", 5000)


class Net:
    """Clients and servers by address; a datagram to a dead server is lost. `client_src`
    rewrites a client's source address as a server sees it (a NAT mapping per destination)."""

    def __init__(self, *servers: Addr) -> None:
        self.servers = {s: RendezvousLogic(lifetime=30) for s in servers}
        self.clients: dict[Addr, RendezvousClient] = {}
        self.dead: set[Addr] = set()
        self.now = 0.0
        self.to_server: list[tuple[float, Addr, Addr]] = []  # (time, client, server)
        self.from_server: list[tuple[Addr, Addr, Message]] = []  # (server, client, message)
        self.client_src: dict[tuple[Addr, Addr], Addr] = {}
        self.events: dict[Addr, list[SignalEvent]] = {}

    def add(self, at: Addr, client: RendezvousClient) -> RendezvousClient:
        self.clients[at] = client
        self.events[at] = []
        self.send(at, client.start(self.now))
        return client

    def send(self, src: Addr, transmits: list[tuple[bytes, Addr]]) -> None:
        queue = [(src, data, dest) for data, dest in transmits]
        while queue:
            src, data, dest = queue.pop(0)
            if dest in self.servers:
                self.to_server.append((self.now, src, dest))
                if dest in self.dead:
                    continue
                seen_as = self.client_src.get((src, dest), src)
                answers = self.servers[dest].handle_datagram(data, seen_as, self.now)
                inverse = {v: k for (k, s), v in self.client_src.items() if s == dest}
                queue += [(dest, out, inverse.get(to, to)) for out, to in answers]
            elif (client := self.clients.get(dest)) is not None:
                msg = parse_message_untrusted(data)
                self.from_server.append((src, dest, msg))
                replies = client.handle(msg, src, self.now) or []
                self.events[dest] += client.pop_events()
                queue += [(dest, out, to) for out, to in replies]

    def run(self, until: float) -> None:
        while True:
            deadlines = [c.next_deadline() for c in self.clients.values()]
            deadlines += [s.next_deadline() for a, s in self.servers.items() if a not in self.dead]
            due = min((d for d in deadlines if d is not None), default=None)
            if due is None or due > until:
                self.now = until
                return
            self.now = max(self.now, due)
            for at, client in self.clients.items():
                self.send(at, client.poll(self.now))
                self.events[at] += client.pop_events()
            for at, server in self.servers.items():
                if at not in self.dead:
                    self.send(at, server.poll(self.now))

    def sent_to(self, server: Addr, client: Addr, since: float = 0.0) -> list[float]:
        return [
            t for t, src, dest in self.to_server if dest == server and src == client and t >= since
        ]


def kinds(events: list[SignalEvent]) -> list[type]:
    return [type(e) for e in events]


def waiting_alice(net: Net) -> RendezvousClient:
    alice = net.add(A, RendezvousClient("alice", "bob", [S1, S2], ()))
    net.run(1.0)
    assert kinds(net.events[A]) == [Registered, Asked]
    assert net.servers[S1].registry.get("alice", 1.0) is not None
    net.events[A].clear()
    return alice


def test_a_waiting_caller_leaves_a_dead_server_for_the_next_with_its_ask() -> None:
    net = Net(S1, S2)
    alice = waiting_alice(net)
    ice = alice.ice
    net.dead.add(S1)
    died = net.now
    net.run(30.0)
    moved = [e for e in net.events[A] if isinstance(e, ServerMoved)]
    assert [(m.old, m.new, m.answered) for m in moved] == [(S1, S2, True)]
    assert moved[0].waited == pytest.approx(2.75)
    # Noticed at the next refresh (FAILOVER_REFRESH while waiting), given up after the four
    # sends of FAILOVER_SCHEDULE: in simulated time, exactly.
    refresh = net.sent_to(S1, A, since=died)[0]
    assert refresh - died <= FAILOVER_REFRESH
    assert net.sent_to(S1, A, since=died) == pytest.approx(
        [refresh + d for d in (0, 0.25, 0.75, 1.75)]
    )
    first_at_s2 = net.sent_to(S2, A)[0]
    assert first_at_s2 == pytest.approx(refresh + 2.75)  # at once, not after a pause
    assert first_at_s2 - died <= FAILOVER_REFRESH + 2.75
    # The new server knows nothing of us: a fresh 401 (its cookie, its key), then registered.
    answers = [(m.cls, m.error()) for s, _, m in net.from_server if s == S2][:2]
    assert answers == [(Class.ERROR, (401, "Unauthenticated")), (Class.SUCCESS, None)]
    assert alice.server == S2 and alice._server_key == net.servers[S2].keys.public
    after = [e for e in net.events[A] if not isinstance(e, ServerMoved)]
    assert after and isinstance(after[0], Refreshed) and after[0].asked and not after[0].moved
    assert Registered not in kinds(net.events[A]) and Asked not in kinds(net.events[A])
    # The ask went with it: the same peer, the same credentials and commitment.
    entry = net.servers[S2].registry.get("alice", net.now)
    assert entry is not None and entry.wants == "bob" and entry.ice == ice
    # And it keeps its name there: refreshes go to S2 alone, never back to the dead S1.
    assert len(net.sent_to(S2, A)) >= 8 and len(net.sent_to(S1, A, since=died)) == 4
    # bob comes to S2: introduced to the alice who asked at S1, with her credentials.
    bob = net.add(B, RendezvousClient("bob", "alice", S2, ()))
    net.run(net.now + 1.0)
    [got] = [e for e in net.events[A] if isinstance(e, GotPeer)]
    assert got.ready.peer == "bob" and got.ready.peer_key == bob.identity.public
    [bob_got] = [e for e in net.events[B] if isinstance(e, GotPeer)]
    assert (bob_got.ready.remote_ufrag, bob_got.ready.remote_pwd) == (ice.ufrag, ice.pwd)
    assert bob_got.ready.peer_commit == ice.commit


def test_with_one_server_a_dead_server_is_retried_as_before() -> None:
    net = Net(S1, S2)
    alice = net.add(A, RendezvousClient("alice", "bob", S1, ()))
    net.run(1.0)
    net.events[A].clear()
    net.dead.add(S1)
    net.run(60.0)
    assert ServerMoved not in kinds(net.events[A])
    unreachable = [e for e in net.events[A] if isinstance(e, Unreachable)]
    assert unreachable and all(e.server == S1 for e in unreachable)
    assert unreachable[0].waited == pytest.approx(9.75)  # SERVER_SCHEDULE, as before
    assert net.sent_to(S2, A) == [] and alice.server == S1
    # Refreshes a third of the lifetime apart while it lived (30 s: 10 s), then retries.
    sends = net.sent_to(S1, A, since=1.0)
    assert sends[0] == pytest.approx(10.0, abs=0.1)
    assert sends[6] == pytest.approx(sends[5] + 2.0 + 2.0, abs=0.01)  # 2 s after 9.75 s


def test_an_introduction_from_the_server_left_behind_is_dropped() -> None:
    """S1 was cut off, not dead: it still holds alice's ask when bob comes to it."""
    net = Net(S1, S2)
    alice = waiting_alice(net)
    net.dead.add(S1)
    net.run(8.0)
    assert alice.server == S2
    net.dead.discard(S1)
    net.add(B, RendezvousClient("bob", "alice", S1, ()))
    net.run(9.0)
    intros = [(s, m) for s, c, m in net.from_server if c == A and m.method == Method.CP_PEER_READY]
    assert intros and all(s == S1 and m.cls == Class.REQUEST for s, m in intros)
    assert GotPeer not in kinds(net.events[A]) and alice.peer_ready is None
    assert alice.forged == 0  # dropped for where it came from, not taken for a forgery
    acks = [t for t in net.to_server if t[1] == A and t[2] == S1 and t[0] > 8.0]
    assert acks == []  # never acknowledged: S1 goes on until it gives up


def test_a_first_server_that_never_answers_is_left_and_then_all_of_them() -> None:
    net = Net(S1, S2)
    net.dead.add(S1)
    alice = net.add(A, RendezvousClient("alice", "bob", [S1, S2], ()))
    net.run(30.0)
    [moved] = [e for e in net.events[A] if isinstance(e, ServerMoved)]
    assert (moved.old, moved.new, moved.answered) == (S1, S2, False)
    assert moved.waited == pytest.approx(9.75)  # SERVER_SCHEDULE: it was never heard from
    assert kinds(net.events[A])[1:3] == [Registered, Asked] and alice.server == S2
    # Both dead from the start: each has its chance, then the caller is told, once.
    net = Net(S1, S2)
    net.dead |= {S1, S2}
    net.add(A, RendezvousClient("alice", "bob", [S1, S2], ()))
    net.run(120.0)
    assert kinds(net.events[A]) == [ServerMoved, Unreachable]
    unreachable = net.events[A][1]
    assert isinstance(unreachable, Unreachable) and unreachable.waited == pytest.approx(19.5)
    assert len(net.sent_to(S1, A)) == len(net.sent_to(S2, A)) == 6  # then nothing more


@pytest.mark.parametrize("mapping", [None, MAPPING_DEPENDENT, MAPPING_INDEPENDENT])
def test_in_a_call_refreshes_move_to_the_next_server_and_a_restart_meets_there(
    mapping: str | None,
) -> None:
    net = Net(S1, S2)
    alice = net.add(A, RendezvousClient("alice", "bob", [S1, S2], ()))
    bob = net.add(B, RendezvousClient("bob", "alice", [S1, S2], ()))
    net.run(1.0)
    assert GotPeer in kinds(net.events[A]) and GotPeer in kinds(net.events[B])
    # In a call the server matters only for a restart: refreshes keep their usual pace (a
    # third of the lifetime), once the one due from the wait has gone.
    net.run(3.0)
    assert alice.next_deadline() == pytest.approx(12.5, abs=0.1)
    net.events[A].clear()
    net.events[B].clear()
    net.dead.add(S1)
    # S2 sees alice at another port: her NAT maps per destination (or may: not known), which
    # is no move of hers; a NAT known to map independently would not, so she did move.
    alice.mapping = mapping
    net.client_src[(A, S2)] = (A[0], A[1] + 1)
    net.run(20.0)
    assert alice.server == bob.server == S2
    assert kinds(net.events[A]) == [ServerMoved, Refreshed]
    refreshed = net.events[A][1]
    assert isinstance(refreshed, Refreshed) and not refreshed.asked
    assert refreshed.moved == (mapping == MAPPING_INDEPENDENT)
    before = len(net.sent_to(S2, A))
    net.run(40.0)
    assert len(net.sent_to(S2, A)) >= before + 2  # refreshes go on, at S2
    # An ICE restart now goes through S2: both ask again (their audio stopped), and S2, which
    # never saw their call, pairs the two asks and introduces both again.
    net.send(A, alice.ask(net.now))
    net.send(B, bob.ask(net.now))
    net.run(net.now + 1.0)
    assert [e.again for e in net.events[A] if isinstance(e, GotPeer)] == [True]
    assert [e.again for e in net.events[B] if isinstance(e, GotPeer)] == [True]


def test_the_server_list_keeps_its_order_and_each_server_once() -> None:
    assert server_list(S1) == (S1,)
    assert server_list([S2, S1, S2]) == (S2, S1)
    assert server_list((S1,)) == (S1,)
    with pytest.raises(ValueError, match="no rendezvous"):
        server_list([])
    client = RendezvousClient("alice", "bob", [S1, S1], ())
    assert client.servers == (S1,)  # one server after all: retried, never left
