"""Faults a call meets, sans-IO: whole calls (`CallCore`) through simulated NATs, with the
rendezvous and its TURN relay (one process, as `callpeer-rendezvous --relay-address` runs them)
on the simulated internet, in simulated time (no root).

Each test breaks one thing in the middle of a call and checks what the call does about it: the
rendezvous dies and comes back, the relay dies under a relayed call, the peer is killed without
a BYE, a NAT forgets its mappings.
"""

from __future__ import annotations

from collections import Counter

import pytest

from rendezvous import introductions
from tests.netsim import Nat
from tests.netsim import Network
from tests.netsim import detach_ip
from tests.netsim import forget_mappings
from tests.netsim_caller import SERVER
from tests.netsim_caller import Caller
from tests.test_failover import A_PUBLIC
from tests.test_failover import B_PUBLIC
from tests.test_failover import ServerHost
from voip import events as ev
from voip.call_core import MEDIA_TIMEOUT
from voip.call_core import CallOptions
from voip.nat.liveness import PROBE_TIMEOUT
from voip.nat.path_manager import FAILOVER_AFTER
from voip.nat.path_manager import GIVE_UP_AFTER
from voip.security.identity import Identity
from voip.security.known_peers import KnownPeers

A_HOST, B_HOST = ("198.18.1.2", 5000), ("198.18.2.2", 6000)
# Audio stops, the next playout tick sees it, both paths are checked at once, and neither check
# is answered within the probe timeout: then the call ends, a tick later. The budget allows the
# failover that comes first when the standby answered until the fault (a switch, then the new
# path's silence) and the scheduling of ticks.
GIVE_UP_BUDGET = 2 * FAILOVER_AFTER + max(PROBE_TIMEOUT, GIVE_UP_AFTER) + 0.1


def internet() -> Network:
    """The rendezvous with its relay, and two cone NATs; 5 ms one way on every link."""
    net = Network(lambda s, d: 0.005)
    net.attach(SERVER, ServerHost(net))
    net.add_nat(Nat(A_PUBLIC, "cone"))
    net.add_nat(Nat(B_PUBLIC, "cone"))
    return net


def call(
    net: Network,
    ids: tuple[Identity, Identity],
    relay: str = "auto",
    known: tuple[KnownPeers, KnownPeers] | None = None,
) -> tuple[Caller, Caller]:
    """Alice calls bob, who calls back 300 ms later; returns once both have had audio for 2 s
    and the standby path is measured."""
    known = known or (KnownPeers(), KnownPeers())
    alice = Caller(
        "alice", "bob", A_HOST, CallOptions(relay=relay, identity=ids[0], known_peers=known[0])
    )
    bob = Caller(
        "bob", "alice", B_HOST, CallOptions(relay=relay, identity=ids[1], known_peers=known[1])
    )
    net.attach(A_HOST, alice, net.nats[A_PUBLIC])
    net.attach(B_HOST, bob, net.nats[B_PUBLIC])
    start = net.now
    net.send(A_HOST, alice.core.start(start))
    net.run(start + 0.3)
    net.send(B_HOST, bob.core.start(net.now))
    net.run(start + 1.0, stop=lambda: None not in (alice.connected_at, bob.connected_at))
    assert alice.connected_at is not None and bob.connected_at is not None, alice.events
    net.run(max(alice.connected_at, bob.connected_at) + 2.0)
    for c in (alice, bob):
        report = c.core.report()
        assert report.path == ("relay" if relay == "force" else "direct"), c.events
        assert report.relay.available and report.direct.available  # the standby is measured
    return alice, bob


def flowing(net: Network, callers: tuple[Caller, ...], seconds: float = 1.0) -> list[int]:
    """Frames each caller received from the other in the next `seconds`."""
    before = [c.received for c in callers]
    net.run(net.now + seconds)
    return [c.received - b for c, b in zip(callers, before, strict=True)]


def server_stats(net: Network) -> Counter[str]:
    host = net.hosts[SERVER]
    assert isinstance(host, ServerHost)
    return host.node.stats


def assert_met_again(callers: tuple[Caller, ...], what: str) -> None:
    """Each caller is on a direct path again, having met again through the rendezvous (an ICE
    restart), with a gap under 2 s, which it prints after `what` happened."""
    for c in callers:
        report = c.core.report()
        assert not c.core.done and report.path == "direct", c.events
        assert c.switches()[-1].why == "the paths went quiet and the call met again", c.events
        print(f"{what}: {c.core.name}'s gap {report.audio.longest_gap_ms:.0f} ms")
        assert report.audio.longest_gap_ms < 2000, report.audio


def registered_with(server: ServerHost, net: Network) -> set[str]:
    registry = server.node.logic.registry
    return {name for name in ("alice", "bob") if registry.get(name, net.now) is not None}


# -- 1. the rendezvous dies, and comes back -------------------------------------------------


def test_a_call_outlives_its_rendezvous_and_both_register_again_when_it_returns() -> None:
    ids = (Identity.generate(), Identity.generate())
    net = internet()
    alice, bob = call(net, ids)
    detach_ip(net, SERVER[0])  # 2 s into the call: the rendezvous and its relay are gone
    # 20 s: the name's refresh (every 10 s) goes unanswered through its whole retransmission
    # schedule, and the client keeps trying every 2 s.
    assert min(flowing(net, (alice, bob), 20.0)) >= 49 * 20  # audio both ways throughout
    for c in (alice, bob):
        report = c.core.report()
        assert not c.core.done and report.path == "direct", c.events
        assert report.path_switches == 0 and report.audio.longest_gap_ms == 0
        assert report.relay.probes_lost >= 1  # the relayed standby went with the server
        assert c.core.connector.signal.mapped is not None
    # It comes back on the same address: a new process with a new key, no cookies, and (its
    # names kept in memory) no names. The callers' next refresh brings a cookie and a MAC the
    # new server cannot check: 401 with a new cookie and its key, and then it succeeds.
    back = ServerHost(net)
    net.attach(SERVER, back)
    returned = net.now
    net.run(returned + 6.0, stop=lambda: registered_with(back, net) == {"alice", "bob"})
    assert registered_with(back, net) == {"alice", "bob"}, dict(back.node.stats)
    # Measured: 0.14 and 0.44 s. At most the longest pause in the retransmission schedule (4 s:
    # a refresh that got no answer is retried 2 s later, with the same schedule).
    assert net.now - returned < 4.1
    stats = back.node.stats
    assert stats["register_challenged"] >= 2 and stats["register"] >= 2
    for c, identity in zip((alice, bob), ids, strict=True):
        entry = back.node.logic.registry.get(c.core.name, net.now)
        assert entry is not None and entry.client_key == identity.public
    assert min(flowing(net, (alice, bob))) >= 49  # and the call never noticed
    for c in (alice, bob):
        assert c.core.report().path_switches == 0 and not c.core.done
    # They hang up, and call again through the new server: the same names, and each finds
    # the key it pinned in the first call (the new server introduced the same identities).
    net.send(A_HOST, alice.core.hangup(net.now))
    net.send(B_HOST, bob.core.hangup(net.now))
    net.run(net.now + 0.5)
    alice, bob = call(net, ids, known=(alice.core.known_peers, bob.core.known_peers))
    for c in (alice, bob):
        secured = next(e for e in c.events if isinstance(e, ev.Secured))
        assert c.core.connected and secured.trust == "verified", c.events
    assert min(flowing(net, (alice, bob))) >= 49


# -- 2. the relay dies under a relayed call -------------------------------------------------


def test_a_dead_relay_moves_the_call_to_the_measured_direct_path() -> None:
    net = internet()
    alice, bob = call(net, (Identity.generate(), Identity.generate()), relay="force")
    detach_ip(net, SERVER[0])
    net.run(net.now + 3.0)
    for c in (alice, bob):
        report = c.core.report()
        assert not c.core.done and report.path == "direct", c.events
        assert report.path_switches == 1 and "no audio on it" in c.switches()[0].why
        assert report.audio.longest_gap_ms < 300, report.audio  # measured: 220 and 200 ms
    assert min(flowing(net, (alice, bob))) >= 49


@pytest.mark.parametrize("relay", ["auto", "force"])
def test_a_dead_relay_with_no_direct_path_ends_the_call_within_about_2_s(relay: str) -> None:
    """auto: direct died first and the call failed over to the relay; force: the direct standby
    stopped answering first. Then the relay dies: no path is left."""
    net = internet()
    alice, bob = call(net, (Identity.generate(), Identity.generate()), relay=relay)
    net.cut(A_PUBLIC, B_PUBLIC)
    net.run(net.now + 3.0)
    assert alice.core.report().path == "relay" and not alice.core.done
    detach_ip(net, SERVER[0])
    died = net.now
    net.run(died + MEDIA_TIMEOUT, stop=lambda: alice.core.done and bob.core.done)
    for c, peer in ((alice, "bob"), (bob, "alice")):
        assert c.ended_at is not None and c.ended_at - died < GIVE_UP_BUDGET  # measured: 2.2-2.4
        ended = c.ended()
        assert not ended.ok and f"no audio from {peer}" in ended.reason
        assert "no answer through the relay" in ended.reason and "went away" in ended.reason
        assert len(c.switches()) <= 3  # no swapping of dead paths until then


# -- 3. the peer is killed ------------------------------------------------------------------


def test_a_killed_peer_is_given_up_within_seconds_saying_so() -> None:
    net = internet()
    alice, _ = call(net, (Identity.generate(), Identity.generate()))
    detach_ip(net, B_HOST[0])  # no BYE: bob's process is gone, his NAT drops what comes
    killed = net.now
    net.run(killed + MEDIA_TIMEOUT + 1, stop=lambda: alice.core.done)
    assert alice.ended_at is not None
    took = alice.ended_at - killed
    # The relay answered until then, so the audio first moves there (200 ms); it stays silent
    # and neither path answers a check: over in 2.4 s, not the media timeout (10 s) or
    # consent's (RFC 7675: 30 s).
    assert took < GIVE_UP_BUDGET < MEDIA_TIMEOUT, took
    ended = alice.ended()
    assert not ended.ok
    assert ended.reason.startswith("no audio from bob for 2 s, and no answer ")
    assert ended.reason.endswith("the network between you and bob went away, or bob did")
    assert len(alice.switches()) <= 1


def test_a_peer_that_still_answers_but_sends_no_audio_gets_the_media_timeout() -> None:
    """The quick end above needs evidence that no path answers; silence alone is not that."""
    net = internet()
    alice, bob = call(net, (Identity.generate(), Identity.generate()))
    bob.mute_from = net.now  # bob's checks are still answered; his audio no longer goes
    muted = net.now
    net.run(muted + MEDIA_TIMEOUT + 1, stop=lambda: alice.core.done)
    assert alice.ended_at is not None and alice.ended_at - muted > MEDIA_TIMEOUT
    assert alice.ended().reason == f"no audio from bob for {MEDIA_TIMEOUT:.0f} s"
    # One failover to the relay, which answers too; then no swapping of two live, silent paths.
    assert len(alice.switches()) == 1, alice.switches()


@pytest.mark.parametrize("seconds", [1.5, 3.0])
def test_an_outage_of_every_path_is_ridden_out_only_if_shorter_than_the_give_up_time(
    seconds: float,
) -> None:
    """The price of giving up quickly: every path dark for longer than GIVE_UP_AFTER (2 s)
    ends the call, where before the change the media timeout (10 s) would have waited."""
    net = internet()
    alice, bob = call(net, (Identity.generate(), Identity.generate()))
    links = [(A_PUBLIC, B_PUBLIC), (A_PUBLIC, SERVER[0]), (B_PUBLIC, SERVER[0])]
    for link in links:
        net.cut(*link)
    dark = net.now
    net.run(dark + seconds)
    for link in links:
        net.restore(*link)
    net.run(net.now + 3.0)
    if seconds < GIVE_UP_AFTER:
        for c in (alice, bob):
            assert not c.core.done, c.events
            assert c.core.report().audio.longest_gap_ms == pytest.approx(1000 * seconds, abs=40)
        assert min(flowing(net, (alice, bob))) >= 49
        return
    for c in (alice, bob):
        assert c.ended_at is not None and c.ended_at - dark < GIVE_UP_BUDGET, c.events
        assert "went away" in c.ended().reason


# -- 4. a NAT forgets its mappings ----------------------------------------------------------


@pytest.mark.parametrize("flushed", ["alice", "bob"])
def test_a_nat_that_forgets_its_mappings_mid_call_recovers_by_meeting_again(flushed: str) -> None:
    """Every mapping on one router is gone (alice called first, so she is controlling): the
    flushed side's next packets get new public ports, the old ones lead nowhere, and its relay
    allocation is bound to the old one. Both sides hear nothing, both ask the rendezvous to meet
    again (an ICE restart), and the call goes on on a fresh direct path."""
    net = internet()
    alice, bob = call(net, (Identity.generate(), Identity.generate()))
    side = alice if flushed == "alice" else bob
    before = side.core.connector.signal.mapped
    relayed_before = side.core.connector.turn and side.core.connector.turn.relayed
    forget_mappings(net.nats[A_PUBLIC if flushed == "alice" else B_PUBLIC])  # conntrack -F
    flushed_at = net.now
    net.run(flushed_at + 3.0)
    # The gap: 200 ms before the silence is noticed, one failover, and a restart of a few
    # round trips to the rendezvous (5 ms each way on every link here).
    assert_met_again((alice, bob), f"{flushed}'s NAT forgot")
    # One restart per side at most (the flushed side's, which moved; the other's, whose
    # checks went unanswered), each asked once: the answer to an ask is no reason to ask again.
    assert 1 <= server_stats(net)["restarted"] <= 2, server_stats(net)
    # Where the flushed side is now: a new public port, and a new relay allocation with it.
    assert side.core.connector.signal.mapped != before
    assert side.core.connector.turn and side.core.connector.turn.relayed != relayed_before
    for c in (alice, bob):
        assert c.core.report().relay.available  # the standby is measured again, on the new one
    assert min(flowing(net, (alice, bob))) >= 49


def test_a_restart_the_rendezvous_refuses_is_not_asked_for_again_and_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its cap spent (or the peer gone from it), the rendezvous answers an ask "waiting" and
    introduces no one. The caller used to take that answer for a new refresh and ask again at
    once, a REGISTER per round trip for as long as the call lasted."""
    monkeypatch.setattr(introductions, "RESTARTS_PER_WINDOW", 0)
    net = internet()
    alice, bob = call(net, (Identity.generate(), Identity.generate()))
    before = server_stats(net)["register"]
    forget_mappings(net.nats[A_PUBLIC])
    net.run(net.now + MEDIA_TIMEOUT + 2, stop=lambda: alice.core.done and bob.core.done)
    stats = server_stats(net)
    assert stats["restarted"] == 0 and stats["restart_refused"] >= 1, stats
    # A refresh and an ask each (with a cookie round trip from alice's new port), and the
    # name's refresh: measured 7, where it used to be one a round trip.
    assert stats["register"] - before <= 10, stats
    # And the call ends as it did before there were restarts: bob in about 2.4 s; alice by the
    # media timeout, since bob's ended call still answers her checks in this simulation.
    assert "went away" in bob.ended().reason, bob.events
    assert alice.core.done, alice.events


def test_a_host_that_moves_to_a_new_address_mid_call_recovers_by_meeting_again() -> None:
    """Alice's laptop moves from Wi-Fi to Ethernet behind the same router: her socket now sends
    from a new LAN address, which her NAT maps to a new public port, while the old mapping leads
    to an address nobody holds. She sees at once (a refresh) that her public address moved."""
    net = internet()
    alice, bob = call(net, (Identity.generate(), Identity.generate()))
    before = alice.core.connector.signal.mapped
    del net.hosts[A_HOST]
    net.attach(("198.18.1.3", A_HOST[1]), alice, net.nats[A_PUBLIC])
    net.run(net.now + 3.0)
    assert alice.core.connector.signal.mapped not in (None, before)
    assert_met_again((alice, bob), "alice moved")
    assert min(flowing(net, (alice, bob))) >= 49
