"""Which transport reaches each server: UDP, else TCP, else TLS (voip/nat/server_transports.py)."""

from __future__ import annotations

import dataclasses

from voip.nat.connector import Connector
from voip.nat.meeting import checks_for
from voip.nat.nominator import NOMINATE_AFTER
from voip.nat.nominator import RELAY_GRACE
from voip.nat.server_transports import FALLBACK_AFTER
from voip.nat.server_transports import FORCED_RETRY
from voip.nat.server_transports import OpenStream
from voip.nat.server_transports import Route
from voip.nat.server_transports import ServerTransports
from voip.nat.server_transports import Transport
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.signal import PeerReady
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import encode

SERVER = ("203.0.113.10", 3478)
RELAY = ("203.0.113.20", 3478)


def request() -> bytes:
    return encode(Message(Method.BINDING, Class.REQUEST))


def test_a_server_that_answers_over_udp_stays_on_udp() -> None:
    t = ServerTransports()
    assert t.watch(SERVER) == []
    t.sent(request(), SERVER, 0.0)
    t.heard(SERVER)
    assert t.next_deadline() is None
    assert t.poll(10.0) == []
    assert t.transport(SERVER) == Transport.UDP and t.route(SERVER) is None


def test_silence_over_udp_moves_the_server_to_tcp_then_tls_with_the_last_requests() -> None:
    t = ServerTransports(tls_port=443)
    t.watch(SERVER)
    assert t.next_deadline() is None  # nothing sent yet: nothing to miss
    first, second, third = request(), request(), request()
    t.sent(first, SERVER, 1.0)
    t.sent(second, SERVER, 1.25)
    t.sent(third, SERVER, 1.75)
    t.sent(b"\x80" + bytes(11), SERVER, 1.8)  # not a request: not sent again on the stream
    assert t.next_deadline() == 1.0 + FALLBACK_AFTER
    assert t.poll(1.0 + FALLBACK_AFTER - 0.01) == []
    [tcp] = t.poll(1.0 + FALLBACK_AFTER)
    assert tcp == OpenStream(Route(SERVER, Transport.TCP, SERVER), (second, third))
    assert t.transport(SERVER) == Transport.UDP  # not until it connects
    assert t.next_deadline() is None
    [tls] = t.failed(SERVER, "Connection refused")
    assert tls.route == Route(SERVER, Transport.TLS, ("203.0.113.10", 443))
    t.connected(SERVER)
    assert t.transport(SERVER) == Transport.TLS
    assert t.tried(SERVER) == [
        f"no answer over UDP in {FALLBACK_AFTER:g} s",
        "TCP to 203.0.113.10:3478: Connection refused",
    ]


def test_every_stream_failed_leaves_udp_and_nothing_more_to_try() -> None:
    t = ServerTransports()
    t.watch(SERVER)
    t.sent(request(), SERVER, 0.0)
    t.poll(FALLBACK_AFTER)
    [tls443] = t.failed(SERVER, "refused")
    [tls5349] = t.failed(SERVER, "no connection in 4 s")  # where callpeer-rendezvous listens
    assert [tls443.route.connect_to[1], tls5349.route.connect_to[1]] == [443, 5349]
    assert t.failed(SERVER, "no connection in 4 s") == []
    assert t.route(SERVER) is None and t.transport(SERVER) == Transport.UDP
    t.sent(request(), SERVER, 10.0)
    assert t.next_deadline() is None and t.poll(99.0) == []


def test_a_stream_found_by_falling_back_is_opened_again_a_few_times_then_the_next() -> None:
    t = ServerTransports()
    t.watch(SERVER)
    t.sent(request(), SERVER, 0.0)
    [tcp] = t.poll(FALLBACK_AFTER)
    reopened = 0
    while True:
        t.connected(SERVER)
        [following] = t.failed(SERVER, "closed by the server")
        if following.route != tcp.route:
            break
        reopened += 1
    assert reopened == 2  # REOPEN: a server that keeps closing is not hammered
    assert following.route.transport == Transport.TLS


def test_a_transport_asked_for_is_the_only_one_tried_again_and_again_never_udp() -> None:
    """A certificate refused (a man in the middle, say) must not send the name, candidates
    and TURN username over UDP in its place: the same stream is tried again, later."""
    t = ServerTransports()
    [tls] = t.watch(RELAY, Transport.TLS, name="turn.example.org")
    assert tls == OpenStream(Route(RELAY, Transport.TLS, RELAY, "turn.example.org"))
    for attempt in range(5):
        now = 10.0 * attempt
        assert t.failed(RELAY, "certificate verify failed", now) == []
        assert t.route(RELAY) == tls.route  # held: nothing goes to the relay meanwhile
        assert t.next_deadline() == now + FORCED_RETRY
        assert t.poll(now + FORCED_RETRY) == [OpenStream(tls.route)]
    t.connected(SERVER)
    assert t.watch(SERVER, Transport.UDP) == []
    t.sent(request(), SERVER, 0.0)
    assert t.poll(100.0) == [] and t.next_deadline() is None  # UDP alone, answer or not


def test_a_late_udp_answer_means_slow_not_blocked() -> None:
    t = ServerTransports()
    t.watch(SERVER)
    t.sent(request(), SERVER, 0.0)
    t.poll(FALLBACK_AFTER)  # TCP under way
    t.heard(SERVER)  # the first UDP answer, at 1.6 s (a radio waking up, three lost packets)
    t.connected(SERVER)
    assert not t.udp_blocked  # the direct pairs keep their chance


def test_a_server_watched_twice_is_one_server() -> None:
    t = ServerTransports()
    [tcp] = t.watch(SERVER, Transport.TCP)
    assert t.watch(SERVER) == []  # the rendezvous is also the relay: one stream carries both
    assert t.route(SERVER) == tcp.route


def test_addresses_not_watched_are_never_moved() -> None:
    t = ServerTransports()
    peer = ("198.51.100.7", 40000)
    t.sent(request(), peer, 0.0)  # a check to the peer: only servers move to streams
    t.heard(peer)
    assert t.next_deadline() is None and t.poll(100.0) == [] and t.route(peer) is None


def test_once_udp_proved_blocked_a_server_watched_later_goes_to_tcp_at_once() -> None:
    t = ServerTransports()
    t.watch(SERVER)
    t.sent(request(), SERVER, 0.0)
    t.poll(FALLBACK_AFTER)
    before = t.udp_blocked  # not until a stream has reached it where UDP did not
    t.connected(SERVER)
    assert (before, t.udp_blocked) == (False, True)
    [tcp] = t.watch(RELAY)  # the relay, learned from the rendezvous: no 1.5 s of silence again
    assert tcp.route == Route(RELAY, Transport.TCP, RELAY)
    assert t.tried(RELAY) == ["UDP gets no answer on this network"]


def test_a_transport_asked_for_proves_nothing_about_udp() -> None:
    t = ServerTransports()
    t.watch(SERVER, Transport.TCP)
    t.connected(SERVER)
    assert not t.udp_blocked and t.watch(RELAY) == []


def introduction(*candidates: Candidate) -> PeerReady:
    """The rendezvous introducing a peer with these candidates."""
    return PeerReady("peer", candidates, "ub", "p" * 22, True, bytes(32))


def test_where_udp_is_blocked_the_direct_pairs_are_given_up_at_once() -> None:
    """The relay carries the call as soon as it answers: no UDP leaves, so no punched pair can
    work (a LAN peer still can: host candidates stay first, as when both NATs map per
    destination)."""
    connector = Connector("alice", "bob", SERVER, ())
    ready = introduction(Candidate.make(CandidateType.SRFLX, ("198.51.100.7", 40000)))
    assert not checks_for(connector, ready, 0.0, again=False).punch_hopeless
    connector.udp_blocked = True
    assert checks_for(connector, ready, 0.0, again=False).punch_hopeless


def test_datagrams_are_watched_only_while_some_server_may_still_move() -> None:
    t = ServerTransports()
    t.watch(SERVER)
    t.watch(RELAY)
    seen = [t.undecided]
    t.heard(SERVER)
    seen.append(t.undecided)  # the relay has not answered yet
    t.heard(RELAY)
    seen.append(t.undecided)  # both on UDP for good: media is sent with no look-up
    assert seen == [True, True, False]
    u = ServerTransports()
    u.watch(SERVER)
    u.sent(request(), SERVER, 0.0)
    u.poll(FALLBACK_AFTER)
    u.failed(SERVER, "refused")
    u.failed(SERVER, "refused")  # TLS too: nothing left to try
    assert not u.undecided


def test_a_peer_with_nothing_public_to_punch_to_gets_the_relay_after_a_short_grace() -> None:
    """A peer on a UDP-blocked network offers host candidates (and its relay) alone: a LAN
    answers within the nomination's 200 ms or never, so the relay does not wait 1.5 s."""
    connector = Connector("bob", "alice", SERVER, ())
    lan_only = introduction(Candidate.make(CandidateType.HOST, ("198.18.1.2", 5000)))
    assert checks_for(connector, lan_only, 0.0, again=False).relay_grace == NOMINATE_AFTER
    for public in (("2001:db8:1::2", 5000), ("203.0.113.1", 5000)):  # IPv6 host, or a srflx
        kind = CandidateType.HOST if ":" in public[0] else CandidateType.SRFLX
        ready = dataclasses.replace(lan_only, candidates=(Candidate.make(kind, public),))
        assert checks_for(connector, ready, 0.0, again=False).relay_grace == RELAY_GRACE
