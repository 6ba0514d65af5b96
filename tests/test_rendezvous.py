"""The rendezvous: registry expiry, name takeover refused, introductions, hostile input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rendezvous.logic import RendezvousLogic
from rendezvous.registry import NameTaken, Registry
from voip.nat.candidates import Candidate, CandidateType
from voip.nat.rendezvous_client import (
    Asked,
    GotPeer,
    Refused,
    Registered,
    RendezvousClient,
    Unreachable,
)
from voip.wire.signal import PeerReady, Register
from voip.wire.stun import (
    Attr,
    Class,
    Message,
    Method,
    check_fingerprint,
    encode,
    parse_message_untrusted,
    text,
)

A = ("203.0.113.5", 4000)
B = ("198.51.100.7", 5000)
SERVER = ("203.0.113.10", 3478)


def register(
    logic: RendezvousLogic,
    name: str,
    peer: str | None,
    src: tuple[str, int],
    now: float,
    hosts: tuple[Candidate, ...] = (),
) -> list[Message]:
    data = encode(Register(name, peer, hosts).to_message(), fingerprint=True)
    return [parse_message_untrusted(d) for d, _ in logic.handle_datagram(data, src, now)]


# -- registry ----------------------------------------------------------------------------


def test_registry_expires_names_without_refresh() -> None:
    reg = Registry(lifetime=30)
    reg.register("alice", A, (), None, now=0)
    assert reg.get("alice", 29.9) is not None
    reg.register("alice", A, (), None, now=29.9)  # refresh
    assert reg.get("alice", 59.0) is not None
    assert reg.get("alice", 60.0) is None
    assert len(reg) == 0


def test_registry_refuses_takeover_by_another_address_until_expiry() -> None:
    reg = Registry(lifetime=30)
    reg.register("alice", A, (), None, now=0)
    with pytest.raises(NameTaken) as info:
        reg.register("alice", B, (), None, now=10)
    assert info.value.holder == A
    reg.register("alice", B, (), None, now=31)  # the old holder is gone: the name is free
    assert reg.get("alice", 31).reflexive == B  # type: ignore[union-attr]


def test_registry_remove_only_by_holder() -> None:
    reg = Registry()
    reg.register("alice", A, (), None, now=0)
    assert not reg.remove("alice", B)
    assert reg.remove("alice", A)


# -- server logic ------------------------------------------------------------------------


def test_binding_request_gets_xor_mapped_address_and_fingerprint() -> None:
    logic = RendezvousLogic()
    req = Message(Method.BINDING, Class.REQUEST)
    [(data, dest)] = logic.handle_datagram(encode(req), A, 0.0)
    resp = parse_message_untrusted(data)
    assert dest == A and resp.cls == Class.SUCCESS
    assert resp.transaction_id == req.transaction_id
    assert resp.xor_address() == A
    assert check_fingerprint(resp)


def test_classic_rfc3489_binding_gets_mapped_address() -> None:
    logic = RendezvousLogic()
    data = struct.pack("!HHI", 0x0001, 0, 0x0BADF00D) + bytes(12)
    [(out, _)] = logic.handle_datagram(data, A, 0.0)
    resp = parse_message_untrusted(out)
    assert resp.cookie == 0x0BADF00D and resp.address() == A


def test_unknown_comprehension_required_attribute_gets_420() -> None:
    logic = RendezvousLogic()
    req = Message(Method.BINDING, Class.REQUEST, attributes=((0x7F01, b"????"),))
    [(out, _)] = logic.handle_datagram(encode(req), A, 0.0)
    resp = parse_message_untrusted(out)
    assert resp.error() == (420, "Unknown Attribute")
    assert resp.get(Attr.UNKNOWN_ATTRIBUTES) == b"\x7f\x01"


def test_name_held_by_live_client_is_refused_to_a_newcomer() -> None:
    logic = RendezvousLogic()
    [ok] = register(logic, "alice", "bob", A, 0.0)
    assert ok.cls == Class.SUCCESS and ok.xor_address() == A
    [refused] = register(logic, "alice", "bob", B, 1.0)
    assert refused.cls == Class.ERROR
    code, reason = refused.error()  # type: ignore[misc]
    assert code == 409 and "in use" in reason
    assert logic.stats["name_taken"] == 1


def test_both_asking_for_each_other_are_introduced_at_once() -> None:
    logic = RendezvousLogic()
    host = Candidate.make(CandidateType.HOST, ("198.18.0.2", 4000))
    register(logic, "alice", "bob", A, 0.0, (host,))
    out = logic.handle_datagram(encode(Register("bob", "alice").to_message()), B, 2.0)
    msgs = {dest: parse_message_untrusted(d) for d, dest in out if d[:2] != b"\x01\x01"}
    intros = {
        dest: PeerReady.from_message_untrusted(m)
        for dest, m in msgs.items()
        if m.method == Method.CP_PEER_READY
    }
    assert set(intros) == {A, B}
    to_alice, to_bob = intros[A], intros[B]
    assert to_alice.peer == "bob" and to_bob.peer == "alice"
    assert to_alice.candidates[0] == Candidate.make(CandidateType.SRFLX, B)
    assert host in to_bob.candidates
    # Credentials cross over: what alice calls local, bob calls remote.
    assert (to_alice.local_ufrag, to_alice.local_pwd) == (to_bob.remote_ufrag, to_bob.remote_pwd)
    assert len(to_alice.local_pwd) >= 22  # RFC 8445 §5.3: at least 128 bits
    assert to_alice.controlling and not to_bob.controlling  # alice waited longer


def test_peer_ready_is_retransmitted_until_acknowledged() -> None:
    logic = RendezvousLogic()
    register(logic, "alice", "bob", A, 0.0)
    out = logic.handle_datagram(encode(Register("bob", "alice").to_message()), B, 1.0)
    intro_to_a = next(
        parse_message_untrusted(d)
        for d, dest in out
        if dest == A and parse_message_untrusted(d).method == Method.CP_PEER_READY
    )
    deadline = logic.next_deadline()
    assert deadline is not None and deadline < 2.0
    resent = logic.poll(deadline)
    assert {dest for _, dest in resent} == {A, B}
    logic.handle_datagram(encode(intro_to_a.reply(Class.SUCCESS)), A, deadline + 0.01)
    resent = logic.poll(deadline + 10)
    assert {dest for _, dest in resent} == {B}  # alice acknowledged; only bob is still asked


def test_cannot_call_yourself_and_bad_names_are_refused() -> None:
    logic = RendezvousLogic()
    [resp] = register(logic, "alice", "alice", A, 0.0)
    assert resp.error() is not None and resp.error()[0] == 400  # type: ignore[index]
    bad = Message(Method.CP_REGISTER, Class.REQUEST, attributes=((Attr.CP_NAME, b"no spaces"),))
    [(out, _)] = logic.handle_datagram(encode(bad), A, 0.0)
    assert parse_message_untrusted(out).error()[0] == 400  # type: ignore[index]


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


def test_leave_frees_the_name_at_once() -> None:
    logic = RendezvousLogic()
    client = RendezvousClient("alice", "bob", SERVER, ())
    for data, _ in client.start(0.0):
        logic.handle_datagram(data, A, 0.0)
    for data, _ in client.leave(1.0):
        logic.handle_datagram(data, A, 1.0)
    [ok] = register(logic, "alice", "bob", B, 1.1)
    assert ok.cls == Class.SUCCESS


# -- client ------------------------------------------------------------------------------


def _answer(
    logic: RendezvousLogic,
    sent: list[tuple[bytes, tuple[str, int]]],
    src: tuple[str, int],
    now: float,
) -> list[tuple[Message, tuple[str, int]]]:
    replies = []
    for data, _ in sent:
        replies += [
            (parse_message_untrusted(d), dest) for d, dest in logic.handle_datagram(data, src, now)
        ]
    return replies


def test_client_registers_refreshes_and_gets_its_peer_once() -> None:
    logic = RendezvousLogic(lifetime=30)
    client = RendezvousClient("alice", "bob", SERVER, ())
    for msg, _ in _answer(logic, client.start(0.0), A, 0.0):
        client.handle(msg, SERVER, 0.01)
    registered, asked = client.pop_events()
    assert registered == Registered(A, 30.0, "waiting")
    assert asked == Asked("waiting")
    refresh_at = client.next_deadline()
    assert refresh_at is not None
    assert refresh_at == pytest.approx(10.01)  # a third of the lifetime
    out = _answer(logic, client.poll(refresh_at), A, refresh_at)
    assert out and out[0][0].cls == Class.SUCCESS
    # Bob arrives; the server introduces alice, twice (a retransmission), reported once.
    intros = [
        m
        for m, dest in _answer(
            logic, [(encode(Register("bob", "alice").to_message()), SERVER)], B, 11.0
        )
        if dest == A and m.method == Method.CP_PEER_READY
    ]
    for _ in range(2):
        acks = client.handle(intros[0], SERVER, 11.01)
        assert acks and parse_message_untrusted(acks[0][0]).cls == Class.SUCCESS
    events = client.pop_events()
    assert [type(e) for e in events] == [GotPeer]


def test_client_ignores_introductions_from_anyone_but_its_server() -> None:
    client = RendezvousClient("alice", "bob", SERVER, ())
    fake = PeerReady("mallory", (), "a", "b" * 22, "c", "d" * 22, True).to_message()
    assert client.handle(fake, ("203.0.113.66", 3478), 0.0) == []
    assert client.pop_events() == []


def test_client_reports_refusal_and_unreachable_server() -> None:
    logic = RendezvousLogic()
    register(logic, "alice", None, B, 0.0)
    client = RendezvousClient("alice", "bob", SERVER, ())
    for msg, _ in _answer(logic, client.start(0.0), A, 0.0):
        client.handle(msg, SERVER, 0.01)
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
    client = RendezvousClient("alice", "bob", SERVER, ())
    for msg, _ in _answer(logic, client.start(0.0), A, 0.0):
        client.handle(msg, SERVER, 0.0)
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
    # A restarted server hears from the client again without anyone doing anything.
    revived = RendezvousLogic(lifetime=30)
    out: list[tuple[bytes, tuple[str, int]]] = []
    while not out:
        now = client.next_deadline() or now
        out = client.poll(now)
    replies = _answer(revived, out, A, now)
    assert replies and replies[0][0].cls == Class.SUCCESS
    assert revived.registry.get("alice", now) is not None


def test_client_refreshes_within_the_nat_keepalive_when_one_is_known() -> None:
    logic = RendezvousLogic(lifetime=30)
    client = RendezvousClient("alice", "bob", SERVER, (), keepalive=1.3)
    for msg, _ in _answer(logic, client.start(0.0), A, 0.0):
        client.handle(msg, SERVER, 0.01)
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
    ready = PeerReady("bob", (), "u1", "p1", "u2", "p2", True, "endpoint-independent")
    parsed = PeerReady.from_message_untrusted(parse_message_untrusted(encode(ready.to_message())))
    assert parsed.peer_mapping == "endpoint-independent"
