"""End-to-end media security, sans-IO: whole calls (`CallCore`) through simulated NATs.

The handshake runs on the call's own path, its keys protect every RTP and RTCP packet, a pinned
key that changes stops the call before any audio, and whatever a stranger injects is dropped
and counted. The lab repeats the capture part with real routers (tests/test_lab.py).
"""

from __future__ import annotations

import numpy as np

from tests.netsim import Address
from tests.netsim import Nat
from tests.netsim import Network
from tests.netsim_caller import SERVER
from tests.netsim_caller import Caller
from tests.sniffer import tone_ratio
from tests.test_failover import ServerHost
from voip import events as ev
from voip.call_core import CallOptions
from voip.codecs.opus import OpusEncoder
from voip.media.audio_io import ToneSource
from voip.security.identity import Identity
from voip.security.known_peers import KnownPeers
from voip.wire.rtp import RtpPacket
from voip.wire.rtp import parse_rtp_untrusted

A_PUBLIC, B_PUBLIC = "203.0.113.100", "198.51.100.200"
A_HOST, B_HOST = ("198.18.1.2", 5000), ("198.18.2.2", 6000)


def call(
    alice_id: Identity,
    bob_id: Identity,
    alice_known: KnownPeers,
    bob_known: KnownPeers,
    seconds: float = 2.0,
    *,
    accept_new_key: bool = False,
) -> tuple[Network, Caller, Caller]:
    """Alice (`accept_new_key` hers) calls bob, who calls back 300 ms later."""
    net = Network(lambda s, d: 0.005)
    net.attach(SERVER, ServerHost(net))
    alice_opts = CallOptions(
        identity=alice_id, known_peers=alice_known, accept_new_key=accept_new_key
    )
    alice = Caller("alice", "bob", A_HOST, alice_opts)
    bob = Caller("bob", "alice", B_HOST, CallOptions(identity=bob_id, known_peers=bob_known))
    net.attach(A_HOST, alice, net.add_nat(Nat(A_PUBLIC, "cone")))
    net.attach(B_HOST, bob, net.add_nat(Nat(B_PUBLIC, "cone")))
    net.send(A_HOST, alice.core.start(0.0))
    net.run(0.3)
    net.send(B_HOST, bob.core.start(net.now))
    net.run(0.3 + seconds)
    return net, alice, bob


def test_a_first_call_is_encrypted_both_sides_show_one_sas_and_remember_the_key() -> None:
    alice_id, bob_id = Identity.generate(), Identity.generate()
    alice_known, bob_known = KnownPeers(), KnownPeers()
    _, alice, bob = call(alice_id, bob_id, alice_known, bob_known)
    a, b = alice.secured(), bob.secured()
    assert a is not None and b is not None, (alice.events, bob.events)
    assert a.sas == b.sas and a.trust == b.trust == "first"
    assert a.peer_fingerprint == bob_id.fingerprint and b.peer_fingerprint == alice_id.fingerprint
    # Secured comes before Connected: no audio before the keys
    kinds = [type(e) for e in alice.events]
    assert kinds.index(ev.Secured) < kinds.index(ev.Connected)
    assert alice_known.pinned("bob") == bob_id.fingerprint
    assert bob_known.pinned("alice") == alice_id.fingerprint
    report = alice.core.report()
    assert report.security is not None and report.security.cipher == "AES-128-GCM"
    assert report.security.sas == a.sas and not report.security.verified
    assert alice.sink.frames > 50 and bob.sink.frames > 50  # and the audio flows


def test_what_goes_on_the_wire_is_not_the_tone() -> None:
    """A listener on the path with Opus and the RTP headers hears noise, not alice's tone."""
    _, alice, bob = call(Identity.generate(), Identity.generate(), KnownPeers(), KnownPeers())
    assert len(alice.sent_rtp) > 50
    assert tone_ratio(alice.sent_rtp[10:60], 440) < 1.0
    # bob, with the keys, heard it
    assert bob.sink.frames > 50


def test_the_second_call_finds_the_key_verified() -> None:
    alice_id, bob_id = Identity.generate(), Identity.generate()
    alice_known, bob_known = KnownPeers(), KnownPeers()
    call(alice_id, bob_id, alice_known, bob_known, seconds=1.0)
    _, alice, bob = call(alice_id, bob_id, alice_known, bob_known, seconds=1.0)
    a, b = alice.secured(), bob.secured()
    assert a is not None and b is not None
    assert a.trust == b.trust == "verified"
    report = alice.core.report()
    assert report.security is not None and report.security.verified


def test_a_changed_key_stops_the_call_before_any_audio() -> None:
    alice_id = Identity.generate()
    alice_known = KnownPeers()
    alice_known.pin("bob", Identity.generate().fingerprint)  # the bob alice met before
    _, alice, bob = call(alice_id, Identity.generate(), alice_known, KnownPeers())
    assert alice.core.done and not alice.core.connected
    assert alice.core.failure is not None and "key has changed" in alice.core.failure
    assert "--accept-new-key" in alice.core.failure
    assert alice.secured() is None and not alice.sent_rtp and alice.sink.frames == 0
    # Bob, who started the handshake, had alice's real key and may have sent her audio under
    # keys only she holds; she played none of it, and bob heard nothing.
    assert bob.sink.frames == 0
    assert alice.core.report().security is None


def test_accept_new_key_replaces_the_pin() -> None:
    bob_id = Identity.generate()
    alice_known = KnownPeers()
    alice_known.pin("bob", Identity.generate().fingerprint)
    _, alice, _ = call(Identity.generate(), bob_id, alice_known, KnownPeers(), accept_new_key=True)
    secured = alice.secured()
    assert secured is not None and secured.trust == "accepted"
    assert alice_known.pinned("bob") == bob_id.fingerprint


def test_forged_and_replayed_media_are_dropped_and_counted() -> None:
    net, alice, bob = call(Identity.generate(), Identity.generate(), KnownPeers(), KnownPeers())
    genuine = alice.sent_rtp[-1]
    header = parse_rtp_untrusted(genuine)
    played = bob.sink.frames
    received = bob.core.audio.counts.frames_received
    # 100 forged packets: alice's SSRC, sequence numbers ahead of hers, from her public address
    for i in range(100):
        forged = bytes(genuine[:2]) + ((header.sequence + 5 + i) & 0xFFFF).to_bytes(2, "big")
        forged += genuine[4:12] + bytes(len(genuine) - 12)
        net.send(A_HOST, [(forged, bob_public(bob))])
    net.send(A_HOST, [(genuine, bob_public(bob))])  # and one replayed
    net.run(net.now + 0.5)
    report = bob.core.report()
    assert report.security is not None and report.security.packets_rejected >= 101
    assert bob.sink.frames > played  # the call went on
    # Only alice's real packets were counted as received (about 25 in 0.5 s), none forged.
    assert bob.core.audio.counts.frames_received - received <= 30


def bob_public(bob: Caller) -> Address:
    active = bob.core.active
    assert active is not None
    report = bob.core.report()
    assert report.local_public is not None
    host, port = report.local_public.rsplit(":", 1)
    return host, int(port)


def test_the_sniffer_hears_a_plain_stream() -> None:
    """The other side of the test above: the same listener does hear unencrypted Opus."""
    encoder, source = OpusEncoder(), ToneSource(440)
    plain = [bytes(RtpPacket(111, i, 960 * i, 7, encoder.encode(source.read()))) for i in range(60)]
    assert tone_ratio(plain[10:], 440) > 2.0


def test_a_rendezvous_that_lies_is_caught_by_the_pin_or_by_the_codes() -> None:
    """The operator introduces alice to mallory as "bob" and bob to mallory as "alice", each
    with mallory's key (a rendezvous that lies: each half is what one caller is shown). On a
    first call both connect, to mallory, and the codes they read to each other differ; with
    bob's real key pinned, alice's call stops before any audio."""
    alice_id, bob_id = Identity.generate(), Identity.generate()
    mallory_as_bob, mallory_as_alice = Identity.generate(), Identity.generate()
    _, alice, _ = call(alice_id, mallory_as_bob, KnownPeers(), KnownPeers(), seconds=1.0)
    _, _, bob = call(mallory_as_alice, bob_id, KnownPeers(), KnownPeers(), seconds=1.0)
    a, b = alice.secured(), bob.secured()
    assert a is not None and b is not None
    assert a.sas != b.sas  # read aloud, they do not match: someone is in the middle
    assert a.peer_fingerprint != bob_id.fingerprint
    pinned = KnownPeers()
    pinned.pin("bob", bob_id.fingerprint)  # from bob's `callpeer whoami`, before the call
    _, alice, _ = call(alice_id, mallory_as_bob, pinned, KnownPeers(), seconds=1.0)
    assert alice.core.failure is not None and "key has changed" in alice.core.failure
    assert alice.sink.frames == 0 and not alice.sent_rtp


def test_speech_goes_out_at_one_size_whatever_is_said() -> None:
    """SRTP hides the words, not the sizes: Opus runs at constant bitrate (RFC 6562 §3)."""
    rng = np.random.default_rng(7)
    encoder = OpusEncoder()
    frames = [(rng.standard_normal(960) * 300 * (i % 9)).astype("<i2") for i in range(100)]
    frames += [ToneSource(220 + 40 * i).read() for i in range(20)]
    assert len({len(encoder.encode(frame)) for frame in frames}) == 1
