"""Failover, following and the way back, sans-IO: whole calls (`CallCore`) through simulated NATs,
with the rendezvous and a TURN relay on the simulated internet, in simulated time (no root).

The lab tests the same behaviour with real NATs and processes; these run everywhere and in
milliseconds, so every path decision can be checked exactly.
"""

from __future__ import annotations

import ipaddress

import pytest

from rendezvous.limits import Limits
from rendezvous.logic import RelayOffer
from rendezvous.logic import RendezvousLogic
from rendezvous.node import RendezvousNode
from rendezvous.turn_server import Out
from rendezvous.turn_server import TurnPolicy
from rendezvous.turn_server import TurnServer
from tests.netsim import Address
from tests.netsim import Nat
from tests.netsim import Network
from tests.netsim import Responder
from tests.netsim import Transmit
from tests.netsim_caller import SERVER
from tests.netsim_caller import Caller
from voip import events as ev
from voip.call_core import CallOptions

SECRET = "netsim"
A_PUBLIC, B_PUBLIC = "203.0.113.100", "198.51.100.200"


class ServerHost:
    """The rendezvous and a TURN relay on one address, as `callpeer-rendezvous --relay-address`
    runs them; relayed addresses are further hosts on the simulated internet."""

    def __init__(self, net: Network):
        self.net = net
        self.next_port = 50000
        turn = TurnServer(
            self,
            TurnPolicy(
                secret=SECRET,
                allowed_peers=[ipaddress.ip_network("198.51.100.0/24")],
                limits=Limits(),
            ),
        )
        turn.add_own_addresses([SERVER[0]])
        turn.peers.allowed.append(ipaddress.ip_network("203.0.113.0/24"))
        logic = RendezvousLogic(relay=RelayOffer(SERVER, SECRET))
        self.node = RendezvousNode(logic, turn, SERVER)

    # RelayPorts
    def open(self) -> Address:
        addr = (SERVER[0], self.next_port)
        self.next_port += 1
        self.net.attach(addr, RelayedPort(self, addr))
        return addr

    def close(self, relayed: Address) -> None:
        self.net.hosts.pop(relayed, None)

    # netsim endpoint
    def route(self, outs: list[Out]) -> list[Transmit]:
        """Send what goes out of a relayed address from there; return the rest."""
        mine = []
        for out in outs:
            if out.via is None or out.via == SERVER:
                mine.append((out.data, out.dest))
            else:
                self.net.send(out.via, [(out.data, out.dest)])
        return mine

    def handle(self, data: bytes, src: Address, now: float) -> list[Transmit]:
        return self.route(self.node.handle(data, src, SERVER, now))

    def poll(self, now: float) -> list[Transmit]:
        return self.route(self.node.poll(now))

    def next_deadline(self) -> float | None:
        return self.node.next_deadline()


class RelayedPort(Responder):
    def __init__(self, host: ServerHost, addr: Address):
        self.host, self.addr = host, addr

    def handle(self, data: bytes, src: Address, now: float) -> list[Transmit]:
        self.host.net.send(
            SERVER, self.host.route(self.host.node.from_peer(data, self.addr, src, now))
        )
        return []


def call(relay: str = "auto") -> tuple[Network, Caller, Caller]:
    """Alice behind a cone NAT, bob behind another, 5 ms one way on every link."""
    net = Network(lambda s, d: 0.005)
    net.attach(SERVER, ServerHost(net))
    a_addr, b_addr = ("198.18.1.2", 5000), ("198.18.2.2", 6000)
    alice = Caller("alice", "bob", a_addr, CallOptions(relay=relay))
    bob = Caller("bob", "alice", b_addr, CallOptions(relay=relay))
    net.attach(a_addr, alice, net.add_nat(Nat(A_PUBLIC, "cone")))
    net.attach(b_addr, bob, net.add_nat(Nat(B_PUBLIC, "cone")))
    net.send(a_addr, alice.core.start(0.0))
    net.run(0.3)
    net.send(b_addr, bob.core.start(net.now))
    net.run(3.0)
    for c in (alice, bob):
        assert c.core.connected and c.core.report().path == (
            "relay" if relay == "force" else "direct"
        )
        assert c.core.report().relay.available, c.events  # the standby is up: both measured
    return net, alice, bob


def test_a_cut_direct_path_fails_over_to_the_relay_within_the_gap_budget() -> None:
    net, alice, bob = call()
    net.cut(A_PUBLIC, B_PUBLIC)
    cut_at = net.now
    net.run(cut_at + 2.0)
    for c in (alice, bob):
        report = c.core.report()
        assert report.path == "relay", c.events
        moved = c.switches()[0]
        assert moved.path == "relay"
        # 200 ms without audio, then the next playout tick: the listener's gap stays under the
        # 300 ms budget, and the audio goes on through the relay.
        assert report.audio.longest_gap_ms < 300, report.audio
    assert "no audio on it" in alice.switches()[0].why or "no audio on it" in bob.switches()[0].why
    frames = alice.sink.frames
    net.run(net.now + 1.0)
    assert alice.sink.frames - frames >= 49  # a second of audio over the relay


def test_the_controlled_side_follows_and_both_come_back_when_direct_lives() -> None:
    net, alice, bob = call()
    checks = alice.core.connector.checks
    assert checks is not None
    controlling, controlled = (alice, bob) if checks.controlling else (bob, alice)
    net.cut(A_PUBLIC, B_PUBLIC)
    net.run(net.now + 3.0)
    net.restore(A_PUBLIC, B_PUBLIC)
    net.run(net.now + 4.0)
    for c in (alice, bob):
        report = c.core.report()
        assert report.path == "direct", c.events  # back where it started
        # To the relay and back; the controlled side may take one more step, following the
        # controlling side's choice of relayed pair. More would be flapping.
        assert 2 <= report.path_switches <= 3, c.switches()
    back = controlling.switches()[-1]
    assert back.path == "direct" and back.why == "the direct path answers again"
    assert controlled.switches()[-1].why == "the peer moved to it"  # it followed


def test_with_the_relay_forced_a_dead_direct_standby_moves_nothing() -> None:
    net, alice, bob = call(relay="force")
    net.cut(A_PUBLIC, B_PUBLIC)
    net.run(net.now + 3.0)
    for c in (alice, bob):
        report = c.core.report()
        assert report.path == "relay" and report.path_switches == 0, c.switches()
        assert report.direct.probes_lost >= 1  # the standby's probes went unanswered
        assert report.audio.longest_gap_ms == 0


@pytest.mark.parametrize("dead", ["relay", "both"])
def test_without_a_path_the_call_ends_saying_so(dead: str) -> None:
    net, alice, _ = call()
    net.cut(A_PUBLIC, B_PUBLIC)
    if dead == "both":
        for ip in (A_PUBLIC, B_PUBLIC):
            net.cut(ip, SERVER[0])
    net.run(net.now + 15.0)
    if dead == "relay":  # the relay carries the call on
        assert not alice.core.done and alice.core.report().path == "relay"
        return
    ended = [e for e in alice.events if isinstance(e, ev.Ended)]
    assert ended and not ended[0].ok and "no audio from bob" in ended[0].reason, alice.switches()
    # Two dead paths are not swapped back and forth until then.
    assert len(alice.switches()) <= 1
