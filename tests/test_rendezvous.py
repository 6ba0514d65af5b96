"""The rendezvous: cookies and keys, registry expiry and caps, introductions, hostile input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from rendezvous.logic import RendezvousLogic
from rendezvous.registry import NameTaken
from rendezvous.registry import Registry
from rendezvous.registry import RegistryFull
from voip.nat.rendezvous_client import RendezvousClient
from voip.nat.signal_events import Asked
from voip.nat.signal_events import GotPeer
from voip.nat.signal_events import Refreshed
from voip.nat.signal_events import Refused
from voip.nat.signal_events import Registered
from voip.nat.signal_events import Unreachable
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.signal import PeerReady
from voip.wire.signal import Register
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import check_fingerprint
from voip.wire.stun import encode
from voip.wire.stun import parse_message_untrusted
from voip.wire.stun import text

Addr = tuple[str, int]
A = ("203.0.113.5", 4000)
B = ("198.51.100.7", 5000)
SERVER = ("203.0.113.10", 3478)


def converse(
    logic: RendezvousLogic,
    clients: dict[Addr, RendezvousClient],
    sent: list[tuple[Addr, bytes]],
    now: float,
) -> list[tuple[Addr, Message]]:
    """Deliver datagrams (source, bytes) to the server and its answers to the clients at their
    addresses, until quiet; every message the server sent, with where it went."""
    seen: list[tuple[Addr, Message]] = []
    queue = list(sent)
    while queue:
        src, data = queue.pop(0)
        for out, dest in logic.handle_datagram(data, src, now):
            msg = parse_message_untrusted(out)
            seen.append((dest, msg))
            if (client := clients.get(dest)) is not None:
                queue += [(dest, d) for d, _ in client.handle(msg, SERVER, now) or []]
    return seen


def join(
    logic: RendezvousLogic, name: str, peer: str | None, src: Addr, now: float = 0.0, **kw: object
) -> tuple[RendezvousClient, list[tuple[Addr, Message]]]:
    """A caller registers (the cookie round trip included) as a real one does."""
    client = RendezvousClient(name, peer or "nobody", SERVER, (), ask_now=peer is not None, **kw)  # type: ignore[arg-type]
    seen = converse(logic, {src: client}, [(src, d) for d, _ in client.start(now)], now)
    return client, seen


def raw_register(name: str, peer: str | None = None, pad: int = 0) -> bytes:
    attrs: list[tuple[int, bytes]] = [(Attr.CP_NAME, text(name))]
    if peer is not None:
        attrs.append((Attr.CP_PEER, text(peer)))
    if pad:
        attrs.append((Attr.PADDING, bytes(pad)))
    return encode(Message(Method.CP_REGISTER, Class.REQUEST, attributes=tuple(attrs)))


# -- registry ----------------------------------------------------------------------------


def test_registry_expires_names_without_refresh() -> None:
    reg = Registry(lifetime=30)
    reg.register("alice", A, (), None, now=0, client_key=b"a")
    assert reg.get("alice", 29.9) is not None
    reg.register("alice", A, (), None, now=29.9, client_key=b"a")  # refresh
    assert reg.next_expiry() == pytest.approx(59.9)  # the refresh's, not the stale first one
    assert reg.get("alice", 59.0) is not None
    assert reg.expire(59.8) == [] and reg.expire(60.0) == ["alice"]
    assert len(reg) == 0 and reg.next_expiry() is None


def test_registry_refuses_takeover_by_another_key_until_expiry() -> None:
    reg = Registry(lifetime=30)
    reg.register("alice", A, (), None, now=0, client_key=b"alice's")
    with pytest.raises(NameTaken) as info:
        reg.register("alice", B, (), None, now=10, client_key=b"mallory's")
    assert info.value.holder == A
    # The holder's key moves the name to a new address (a NAT that rebinds)...
    reg.register("alice", B, (), None, now=11, client_key=b"alice's")
    assert reg.get("alice", 11).reflexive == B  # type: ignore[union-attr]
    # ...and once the holder is gone, the name is free for anyone.
    reg.register("alice", A, (), None, now=42, client_key=b"bob's")
    assert reg.get("alice", 42).client_key == b"bob's"  # type: ignore[union-attr]


def test_registry_caps_names_per_ip_and_in_all() -> None:
    reg = Registry(lifetime=30, capacity=3, per_ip=2)
    for i in range(2):
        reg.register(f"n{i}", (A[0], 4000 + i), (), None, now=0)
    with pytest.raises(RegistryFull) as per_ip:
        reg.register("n2", (A[0], 4002), (), None, now=0)
    assert per_ip.value.per_ip
    reg.register("n3", B, (), None, now=0)
    with pytest.raises(RegistryFull) as full:
        reg.register("n4", ("192.0.2.9", 1), (), None, now=0)
    assert not full.value.per_ip
    assert reg.remove("n0", (A[0], 4000))  # a name given up frees its address's share
    reg.register("n2", (A[0], 4002), (), None, now=1)


def test_a_client_refreshing_in_a_loop_cannot_grow_the_expiry_heap() -> None:
    reg = Registry(lifetime=30)
    reg.register("bob", B, (), None, now=0)
    for i in range(100_000):
        reg.register("alice", A, (), None, now=i * 1e-4)
    assert len(reg._expiries._heap) <= 2 * len(reg) + 64
    assert reg.next_expiry() == pytest.approx(30.0)  # bob's, still right after the rebuilds
    assert reg.expire(30.0) == ["bob"] and reg.get("alice", 30.0) is not None


def test_registry_remove_only_by_holder() -> None:
    reg = Registry()
    reg.register("alice", A, (), None, now=0)
    assert not reg.remove("alice", B)
    assert reg.remove("alice", A)


# -- server logic ------------------------------------------------------------------------


def test_binding_request_gets_xor_mapped_address_and_fingerprint() -> None:
    logic = RendezvousLogic()
    req = Message(Method.BINDING, Class.REQUEST)
    [(data, dest)] = logic.handle_datagram(encode(req, fingerprint=True), A, 0.0)
    resp = parse_message_untrusted(data)
    assert dest == A and resp.cls == Class.SUCCESS
    assert resp.transaction_id == req.transaction_id
    assert resp.xor_address() == A
    assert check_fingerprint(resp)
    assert len(data) == 40  # XOR-MAPPED-ADDRESS and FINGERPRINT: nothing else unasked


def test_classic_rfc3489_binding_gets_mapped_address() -> None:
    logic = RendezvousLogic()
    data = struct.pack("!HHI", 0x0001, 0, 0x0BADF00D) + bytes(12)
    [(out, _)] = logic.handle_datagram(data, A, 0.0)
    resp = parse_message_untrusted(out)
    assert resp.cookie == 0x0BADF00D and resp.address() == A


def test_unknown_comprehension_required_attribute_gets_420_when_it_fits() -> None:
    logic = RendezvousLogic()
    small = Message(Method.BINDING, Class.REQUEST, attributes=((0x7F01, b"????"),))
    assert logic.handle_datagram(encode(small), A, 0.0) == []  # 56 bytes would answer 28
    attrs = ((0x7F01, b"????"), (Attr.PADDING, bytes(40)))
    big = Message(Method.BINDING, Class.REQUEST, attributes=attrs)
    [(out, _)] = logic.handle_datagram(encode(big), A, 0.0)
    resp = parse_message_untrusted(out)
    assert resp.error() == (420, "Unknown Attribute")
    assert resp.get(Attr.UNKNOWN_ATTRIBUTES) == b"\x7f\x01"


def test_a_register_is_served_only_once_its_cookie_comes_back() -> None:
    logic = RendezvousLogic()
    client = RendezvousClient("alice", "bob", SERVER, ())
    [(first, _)] = client.start(0.0)
    [(challenge, dest)] = logic.handle_datagram(first, A, 0.0)
    msg = parse_message_untrusted(challenge)
    assert dest == A and msg.error() == (401, "Unauthenticated") and msg.text(Attr.NONCE)
    assert len(challenge) <= len(first)
    assert len(logic.registry) == 0 and logic.next_deadline() is None  # nothing kept
    # The cookie is bound to the address: from anywhere else it is challenged again.
    [(again, _)] = client.handle(msg, SERVER, 0.0) or []
    [(other, _)] = logic.handle_datagram(again, B, 0.0)
    assert parse_message_untrusted(other).error() == (401, "Unauthenticated")
    [(ok, _)] = logic.handle_datagram(again, A, 0.0)
    assert parse_message_untrusted(ok).cls == Class.SUCCESS and len(logic.registry) == 1


def test_name_held_by_live_client_is_refused_to_a_newcomer() -> None:
    logic = RendezvousLogic()
    alice, _ = join(logic, "alice", "bob", A)
    assert isinstance(alice.pop_events()[0], Registered)
    mallory, _ = join(logic, "alice", "bob", B, 1.0)
    [refused] = mallory.pop_events()
    assert isinstance(refused, Refused) and refused.code == 409
    assert refused.reason == "Name Taken"  # fixed text: never what the client sent
    assert logic.stats["name_taken"] == 1
    assert logic.registry.get("alice", 1.0).reflexive == A  # type: ignore[union-attr]


def test_a_refresh_from_a_new_public_port_keeps_the_name() -> None:
    """A NAT that forgot the mapping gives the refresh a new port: the holder's key, not its
    address, says whose the name is."""
    logic = RendezvousLogic(lifetime=30)
    alice, _ = join(logic, "alice", "bob", A)
    moved = (A[0], A[1] + 1)
    refresh = alice.poll(alice.next_deadline() or 10.0)
    converse(logic, {moved: alice}, [(moved, d) for d, _ in refresh], 10.0)
    assert logic.registry.get("alice", 10.0).reflexive == moved  # type: ignore[union-attr]
    assert not any(isinstance(e, Refused) for e in alice.pop_events())


def test_a_request_sent_before_the_last_answer_arrived_is_served() -> None:
    """The caller asks for its peer (a new REGISTER) before the answer to its first one, and so
    before it knows the server's key: from its own address, the cookie is proof enough."""
    logic = RendezvousLogic()
    client = RendezvousClient("alice", "bob", SERVER, (), ask_now=False)
    [(first, _)] = client.start(0.0)
    [(challenge, _)] = logic.handle_datagram(first, A, 0.0)
    [(second, _)] = client.handle(parse_message_untrusted(challenge), SERVER, 0.0) or []
    [(third, _)] = client.ask(0.01)  # the second's answer is still on its way
    logic.handle_datagram(second, A, 0.02)
    [(answer, _)] = logic.handle_datagram(third, A, 0.02)
    client.handle(parse_message_untrusted(answer), SERVER, 0.03)
    assert [type(e) for e in client.pop_events()] == [Registered, Asked]


def test_both_asking_for_each_other_are_introduced_at_once() -> None:
    logic = RendezvousLogic()
    host = Candidate.make(CandidateType.HOST, ("198.18.0.2", 4000))
    alice = RendezvousClient("alice", "bob", SERVER, (host,))
    bob = RendezvousClient("bob", "alice", SERVER, ())
    clients = {A: alice, B: bob}
    converse(logic, clients, [(A, d) for d, _ in alice.start(0.0)], 0.0)
    seen = converse(logic, clients, [(B, d) for d, _ in bob.start(2.0)], 2.0)
    intros = {
        dest: PeerReady.from_message_untrusted(m)
        for dest, m in seen
        if m.method == Method.CP_PEER_READY and m.cls == Class.REQUEST
    }
    assert set(intros) == {A, B}
    to_alice, to_bob = intros[A], intros[B]
    assert to_alice.peer == "bob" and to_bob.peer == "alice"
    assert to_alice.candidates[0] == Candidate.make(CandidateType.SRFLX, B)
    assert host in to_bob.candidates
    # Each made its own credentials and its own key; the server hands each to the other.
    assert (to_alice.remote_ufrag, to_alice.remote_pwd) == (bob.ice.ufrag, bob.ice.pwd)
    assert (to_bob.remote_ufrag, to_bob.remote_pwd) == (alice.ice.ufrag, alice.ice.pwd)
    assert alice.ice != bob.ice and len(alice.ice.pwd) >= 22  # RFC 8445 §5.3: >= 128 bits
    assert to_alice.peer_key == bob.identity.public and to_bob.peer_key == alice.identity.public
    assert to_alice.controlling and not to_bob.controlling  # alice waited longer
    assert [type(e) for e in alice.pop_events()][-1] is GotPeer
    assert logic.stats["peer_ready_acknowledged"] == 2


def test_peer_ready_is_retransmitted_until_acknowledged() -> None:
    logic = RendezvousLogic()
    alice = RendezvousClient("alice", "bob", SERVER, ())
    converse(logic, {A: alice}, [(A, d) for d, _ in alice.start(0.0)], 0.0)
    bob = RendezvousClient("bob", "alice", SERVER, ())
    # Bob's introduction reaches him, alice's is lost.
    seen = converse(logic, {B: bob}, [(B, d) for d, _ in bob.start(1.0)], 1.0)
    intro_to_a = next(m for dest, m in seen if dest == A and m.method == Method.CP_PEER_READY)
    deadline = logic.next_deadline()
    assert deadline is not None and deadline < 2.0
    resent = logic.poll(deadline)
    assert {dest for _, dest in resent} == {A}  # bob acknowledged at once
    [(ack, _)] = alice.handle(intro_to_a, SERVER, deadline) or []
    logic.handle_datagram(ack, A, deadline + 0.01)
    assert logic.poll(deadline + 10) == []


def test_cannot_call_yourself_and_bad_names_get_a_fixed_reason() -> None:
    logic = RendezvousLogic()
    me, _ = join(logic, "alice", "alice", A)
    [refused] = me.pop_events()
    assert isinstance(refused, Refused) and refused.code == 400
    # A bad name, in a request large enough to be answered: 400, and not a byte of the name.
    bad = raw_register("no spaces " + "x" * 1400)
    [(out, _)] = logic.handle_datagram(bad, A, 0.0)
    assert parse_message_untrusted(out).error() == (400, "Bad Request")
    assert len(out) <= 40 and b"spaces" not in out


def test_malformed_and_oversized_datagrams_are_counted_and_dropped() -> None:
    logic = RendezvousLogic()
    assert logic.handle_datagram(b"\x00\x01garbage", A, 0.0) == []
    assert logic.handle_datagram(bytes(2000), A, 0.0) == []
    assert logic.handle_datagram(b"\x80" * 40, A, 0.0) == []
    assert logic.stats["malformed"] == 2 and logic.stats["oversized"] == 1


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=1600))
def test_server_never_raises_on_any_datagram(data: bytes) -> None:
    RendezvousLogic().handle_datagram(data, A, 0.0)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([Method.CP_REGISTER, Method.CP_LEAVE, Method.BINDING, Method.CP_PEER_READY]),
    st.lists(
        st.tuples(st.sampled_from([int(a) for a in Attr]), st.binary(max_size=30)), max_size=6
    ),
)
def test_server_never_raises_on_well_framed_nonsense(
    method: int, attrs: list[tuple[int, bytes]]
) -> None:
    msg = Message(method, Class.REQUEST, attributes=tuple(attrs))
    RendezvousLogic().handle_datagram(encode(msg), A, 0.0)


def test_leave_takes_the_name_offline_at_once_and_only_for_its_owner() -> None:
    logic = RendezvousLogic()
    alice, _ = join(logic, "alice", "bob", A)
    # A LEAVE from alice's address but without her key (a spoofer) is not answered or obeyed.
    forged = Message(Method.CP_LEAVE, Class.REQUEST, attributes=((Attr.CP_NAME, text("alice")),))
    assert logic.handle_datagram(encode(forged, fingerprint=True), A, 0.5) == []
    assert logic.registry.get("alice", 0.5) is not None
    for data, _ in alice.leave(1.0):
        [(ok, _)] = logic.handle_datagram(data, A, 1.0)
        assert parse_message_untrusted(ok).cls == Class.SUCCESS
    assert logic.registry.get("alice", 1.0) is None  # offline at once, not at expiry
    # Offline is not free: the name is still her key's, from anywhere.
    bob, _ = join(logic, "alice", "bob", B, 1.1)
    [refused] = bob.pop_events()
    assert isinstance(refused, Refused) and refused.code == 409
    back, _ = join(logic, "alice", "bob", B, 1.2, identity=alice.identity)
    assert isinstance(back.pop_events()[0], Registered)


# -- client ------------------------------------------------------------------------------


def test_client_registers_refreshes_and_gets_its_peer_once() -> None:
    logic = RendezvousLogic(lifetime=30)
    alice = RendezvousClient("alice", "bob", SERVER, ())
    converse(logic, {A: alice}, [(A, d) for d, _ in alice.start(0.0)], 0.0)
    registered, asked = alice.pop_events()
    assert registered == Registered(A, 30.0, "waiting")
    assert asked == Asked("waiting")
    refresh_at = alice.next_deadline()
    assert refresh_at is not None
    assert refresh_at == pytest.approx(10.0)  # a third of the lifetime
    seen = converse(logic, {A: alice}, [(A, d) for d, _ in alice.poll(refresh_at)], refresh_at)
    assert [m.cls for _, m in seen] == [Class.SUCCESS]  # the cookie is still good: no 401
    assert alice.pop_events() == [Refreshed(A, moved=False, asked=True)]  # still asking
    # Bob arrives; the server introduces alice, twice (a retransmission), reported once.
    bob = RendezvousClient("bob", "alice", SERVER, ())
    seen = converse(logic, {B: bob}, [(B, d) for d, _ in bob.start(11.0)], 11.0)
    intro = next(m for dest, m in seen if dest == A and m.method == Method.CP_PEER_READY)
    for _ in range(2):
        acks = alice.handle(intro, SERVER, 11.01)
        assert acks and parse_message_untrusted(acks[0][0]).cls == Class.SUCCESS
    assert [type(e) for e in alice.pop_events()] == [GotPeer]


def test_client_ignores_introductions_from_anyone_but_its_server() -> None:
    client = RendezvousClient("alice", "bob", SERVER, ())
    fake = PeerReady("mallory", (), "cccc", "d" * 22, True, bytes(32)).to_message()
    assert client.handle(fake, ("203.0.113.66", 3478), 0.0) == []
    assert client.pop_events() == []


def test_client_drops_forged_and_unasked_introductions() -> None:
    """A PEER-READY from the server's address with attacker-chosen candidates and passwords,
    but no MESSAGE-INTEGRITY under the registration key, introduces no one; nor does a
    genuine-looking one for a peer we never asked for."""
    logic = RendezvousLogic()
    alice, _ = join(logic, "alice", "bob", A)
    alice.pop_events()
    evil = Candidate.make(CandidateType.SRFLX, ("192.0.2.66", 6666))
    forged = PeerReady("bob", (evil,), "cccc", "d" * 22, True, bytes(32)).to_message()
    assert (
        alice.handle(parse_message_untrusted(encode(forged, fingerprint=True)), SERVER, 1.0) == []
    )
    # Under the right key (as if the server were fooled), but for someone else: still dropped.
    assert alice._key is not None
    carol = PeerReady(
        "carol", (evil,), "cccc", "d" * 22, True, bytes(32), peer_commit=bytes(32)
    ).to_message()
    signed_carol = encode(carol, integrity_key=alice._key, integrity_sha256=True, fingerprint=True)
    assert alice.handle(parse_message_untrusted(signed_carol), SERVER, 1.0) == []
    assert alice.pop_events() == [] and alice.forged == 2 and alice.peer_ready is None


def test_client_reports_refusal_and_unreachable_server() -> None:
    logic = RendezvousLogic()
    join(logic, "alice", None, B)
    client, _ = join(logic, "alice", "bob", A)
    [refused] = client.pop_events()
    assert isinstance(refused, Refused) and refused.code == 409

    lonely = RendezvousClient("alice", "bob", SERVER, ())
    lonely.start(0.0)
    sends, now = 1, 0.0
    while (deadline := lonely.next_deadline()) is not None:
        now = deadline
        sends += len(lonely.poll(now))
    [unreachable] = lonely.pop_events()
    assert isinstance(unreachable, Unreachable)
    assert sends == 6 and unreachable.waited == pytest.approx(9.75)  # RTO 0.25 s, Rc 6, Rm 8


def test_client_keeps_retrying_after_a_refresh_goes_unanswered() -> None:
    logic = RendezvousLogic(lifetime=30)
    client, _ = join(logic, "alice", "bob", A)
    client.pop_events()
    # The server goes away: the refresh at 10 s is never answered.
    now, sent = 0.0, 0
    while now < 40.0:
        deadline = client.next_deadline()
        assert deadline is not None, "the client gave up on its name"
        now = deadline
        sent += len(client.poll(now))
    assert sent >= 10  # it went on trying, not one attempt and silence
    assert any(isinstance(e, Unreachable) for e in client.pop_events())
    # A restarted server (new cookie key, new registration key) hears from the client again
    # without anyone doing anything: one 401 for a fresh cookie, then a new key agreed.
    revived = RendezvousLogic(lifetime=30)
    out: list[tuple[bytes, tuple[str, int]]] = []
    while not out:
        now = client.next_deadline() or now
        out = client.poll(now)
    seen = converse(revived, {A: client}, [(A, d) for d, _ in out], now)
    assert [m.cls for _, m in seen] == [Class.ERROR, Class.SUCCESS]
    assert revived.registry.get("alice", now) is not None
    assert client.forged == 0 and not any(isinstance(e, Refused) for e in client.pop_events())


def test_client_refreshes_within_the_nat_keepalive_when_one_is_known() -> None:
    logic = RendezvousLogic(lifetime=30)
    client, _ = join(logic, "alice", "bob", A, 0.01, keepalive=1.3)
    assert client.next_deadline() == pytest.approx(1.31)  # not 10 s: the NAT forgets sooner


def test_mapping_advice_travels_and_unknown_values_are_dropped() -> None:
    reg = Register("alice", "bob", (), "dependent").to_message()
    assert Register.from_message_untrusted(reg).mapping == "dependent"
    odd = Message(
        Method.CP_REGISTER,
        Class.REQUEST,
        attributes=((Attr.CP_NAME, text("alice")), (Attr.CP_NAT_MAPPING, text("sideways"))),
    )
    assert Register.from_message_untrusted(odd).mapping is None  # advice only: ignored
    ready = PeerReady(
        "bob", (), "ufrag", "p" * 22, True, bytes(32), "endpoint-independent", bytes(32)
    )
    parsed = PeerReady.from_message_untrusted(parse_message_untrusted(encode(ready.to_message())))
    assert parsed.peer_mapping == "endpoint-independent"
