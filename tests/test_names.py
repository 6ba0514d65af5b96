"""Names owned by keys at the rendezvous: trust on first use, proof of possession, no presence
oracle, bindings that survive a restart, and the caps on what strangers can claim."""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from rendezvous import cli
from rendezvous.limits import Limits
from rendezvous.logic import RendezvousLogic
from rendezvous.name_store import NameStore
from rendezvous.name_store import default_store_path
from rendezvous.server import RendezvousServer
from tests.test_rendezvous import SERVER
from tests.test_rendezvous import converse
from tests.test_rendezvous import join
from voip.nat.connector import Connector
from voip.nat.rendezvous_client import RendezvousClient
from voip.nat.signal_events import Refused
from voip.nat.signal_events import Registered
from voip.nat.signal_events import SignalEvent
from voip.security.identity import Identity
from voip.security.registration import RegistrationKeyPair
from voip.transport import UdpEndpoint
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.signal import IceCredentials
from voip.wire.signal import PeerReady
from voip.wire.signal import Register
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.stun import encode
from voip.wire.stun import parse_message_untrusted
from voip.wire.stun import text

Addr = tuple[str, int]
A: Addr = ("203.0.113.5", 4000)  # alice, the owner
M: Addr = ("198.51.100.66", 6666)  # mallory
DAY = 86400.0


def answers_to(logic: RendezvousLogic, client: RendezvousClient, src: Addr, now: float) -> Message:
    """The last answer the server gave `client` registering from `src` (cookie round included)."""
    seen = converse(logic, {src: client}, [(src, d) for d, _ in client.start(now)], now)
    return [m for dest, m in seen if dest == src][-1]


def forged_register(
    logic: RendezvousLogic, owner: Identity, src: Addr, now: float, peer: str = "mallory"
) -> bytes:
    """A REGISTER for alice naming her public key (no secret), with a good cookie for `src`,
    and the best MAC someone without her private key can make: under a key of their own."""
    mallory = RegistrationKeyPair()
    key = mallory.agree_untrusted(logic.keys.public, we_are_client=True)
    evil = Candidate.make(CandidateType.HOST, ("192.0.2.66", 6666))
    req = Register(
        "alice",
        peer,
        (evil,),
        nonce=logic.cookies.make(src, now),  # as if seen on the path: a cookie is no secret
        key=owner.public,
        ice=replace(IceCredentials.generate(), commit=bytes(32)),
    )
    return encode(req.to_message(), integrity_key=key, integrity_sha256=True, fingerprint=True)


# -- who may register --------------------------------------------------------------------


def test_another_key_is_refused_the_name_whether_its_owner_is_online_or_not() -> None:
    logic = RendezvousLogic(lifetime=30)
    alice, _ = join(logic, "alice", "bob", A)
    assert isinstance(alice.pop_events()[0], Registered)
    online = answers_to(logic, RendezvousClient("alice", "bob", SERVER, ()), M, 1.0)
    for data, _ in alice.leave(2.0):  # offline at once
        logic.handle_datagram(data, A, 2.0)
    assert logic.registry.get("alice", 2.0) is None
    offline = answers_to(logic, RendezvousClient("alice", "bob", SERVER, ()), M, 3.0)
    expired = answers_to(logic, RendezvousClient("alice", "bob", SERVER, ()), M, 500.0)
    for answer in (online, offline, expired):
        assert answer.error() == (409, "Name Taken")
    # Presence is no oracle: the same code, the same attributes, the same size.
    sizes = {len(m.raw) for m in (online, offline, expired)}
    layouts = {tuple(t for t, _ in m.attributes) for m in (online, offline, expired)}
    assert len(sizes) == 1 and len(layouts) == 1
    assert logic.stats["name_taken"] == 3


def test_someone_elses_public_key_claims_nothing_without_its_private_half() -> None:
    logic = RendezvousLogic(lifetime=30)
    owner = Identity.generate()
    alice, _ = join(logic, "alice", None, A, identity=owner)
    # Online: not from mallory's address...
    [(answer, _)] = logic.handle_datagram(forged_register(logic, owner, M, 1.0), M, 1.0)
    assert parse_message_untrusted(answer).error() == (401, "Unauthenticated")
    # ...and not offline either: a claim needs the key, not the name of it.
    for data, _ in alice.leave(2.0):
        logic.handle_datagram(data, A, 2.0)
    [(answer, _)] = logic.handle_datagram(forged_register(logic, owner, M, 3.0), M, 3.0)
    assert parse_message_untrusted(answer).error() == (401, "Unauthenticated")
    assert logic.registry.get("alice", 3.0) is None and logic.stats["register_forged"] == 2
    assert logic.stats["matched"] == 0


def test_a_spoofed_refresh_from_the_owners_own_address_changes_nothing() -> None:
    """From alice's address, with her cookie and her public key: without her MAC, no refresh,
    no new candidates, no call asked for in her name, and no LEAVE."""
    logic = RendezvousLogic(lifetime=30)
    owner = Identity.generate()
    join(logic, "alice", None, A, identity=owner)
    before = logic.registry.get("alice", 0.0)
    assert before is not None
    kept = (before.host_candidates, before.wants, before.expires, before.key)
    logic.handle_datagram(forged_register(logic, owner, A, 5.0), A, 5.0)
    after = logic.registry.get("alice", 5.0)
    assert after is not None and (after.host_candidates, after.wants) == kept[:2]
    assert (after.expires, after.key) == kept[2:]
    # A LEAVE spoofed from her address, under a key that is not hers, is not obeyed either.
    mallory = RegistrationKeyPair()
    key = mallory.agree_untrusted(logic.keys.public, we_are_client=True)
    leave = Message(Method.CP_LEAVE, Class.REQUEST, attributes=((Attr.CP_NAME, text("alice")),))
    data = encode(leave, integrity_key=key, integrity_sha256=True, fingerprint=True)
    assert logic.handle_datagram(data, A, 6.0) == []
    assert logic.registry.get("alice", 6.0) is not None


def test_a_refresh_from_a_new_port_keeps_the_name_even_after_it_lapsed() -> None:
    """The laptop slept: its NAT forgot the mapping and the name lapsed. Mallory tried to take
    it meanwhile; the owner's refresh from its new public port gets it back."""
    logic = RendezvousLogic(lifetime=30)
    alice, _ = join(logic, "alice", "bob", A)
    alice.pop_events()
    mallory = answers_to(logic, RendezvousClient("alice", "bob", SERVER, ()), M, 100.0)
    assert mallory.error() == (409, "Name Taken")
    moved = (A[0], A[1] + 7)
    converse(logic, {moved: alice}, [(moved, d) for d, _ in alice.refresh(101.0)], 101.0)
    entry = logic.registry.get("alice", 101.0)
    assert entry is not None and entry.reflexive == moved
    assert entry.client_key == alice.identity.public
    assert not any(isinstance(e, Refused) for e in alice.pop_events())


# -- the store -------------------------------------------------------------------------


def test_the_binding_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "callpeer-rendezvous" / "names.sqlite3"
    first = RendezvousLogic(store=NameStore(path))
    alice, _ = join(first, "alice", None, A)
    assert isinstance(alice.pop_events()[0], Registered)
    first.owners.store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    # A new process: new server key, new cookie key, nobody online; the name is still hers.
    second = RendezvousLogic(store=NameStore(path))
    taken = answers_to(second, RendezvousClient("alice", "bob", SERVER, ()), M, 0.0)
    assert taken.error() == (409, "Name Taken")
    back, _ = join(second, "alice", None, ("198.51.100.9", 5000), identity=alice.identity)
    assert isinstance(back.pop_events()[0], Registered)


def test_last_seen_is_written_at_most_once_an_hour() -> None:
    logic = RendezvousLogic(lifetime=30, wallclock=0.0)
    alice, _ = join(logic, "alice", None, A)
    store = logic.owners.store
    writes = store._db.total_changes
    now = 0.0
    for _ in range(2 * 360):  # two hours of refreshes every 10 s
        now += 10.0
        converse(logic, {A: alice}, [(A, d) for d, _ in alice.refresh(now)], now)
    assert logic.stats["register"] == 721
    assert store._db.total_changes - writes == 2
    binding = store.lookup("alice", now)
    assert binding is not None and binding.last_seen == pytest.approx(7200.0)


def test_a_binding_unseen_for_its_max_age_is_released() -> None:
    logic = RendezvousLogic(lifetime=30, wallclock=0.0, store=NameStore(max_age_days=2))
    join(logic, "alice", None, A)
    carol, _ = join(logic, "carol", None, ("203.0.113.6", 4000))
    # carol comes back after a day: hers is kept; alice is never seen again.
    join(logic, "carol", None, ("203.0.113.6", 4001), 1 * DAY, identity=carol.identity)
    mallory = RendezvousClient("carol", "x", SERVER, ())
    assert answers_to(logic, mallory, M, 2.5 * DAY).error() == (409, "Name Taken")
    taken, _ = join(logic, "alice", None, M, 2.5 * DAY)
    assert isinstance(taken.pop_events()[0], Registered)
    # The sweep releases carol's too, two days after she was last seen; mallory's alice stays.
    logic.poll(3.5 * DAY)
    assert len(logic.owners.store) == 1 and logic.stats["released"] == 1
    assert logic.owners.store.lookup("alice", 3.5 * DAY) is not None


def test_new_claims_are_capped_per_ip_and_in_all() -> None:
    logic = RendezvousLogic(limits=Limits(claims_per_ip=2, bindings=3, names_per_ip=100))
    clients = [RendezvousClient(f"n{i}", "x", SERVER, (), ask_now=False) for i in range(3)]
    sources = [("203.0.113.7", 4000 + i) for i in range(3)]
    codes = [answers_to(logic, *pair, 0.0).error() for pair in zip(clients, sources, strict=True)]
    assert codes == [None, None, (486, "Quota Reached")]
    # An owner registering again is no new claim: not capped.
    src = sources[0]
    seen = converse(logic, {src: clients[0]}, [(src, d) for d, _ in clients[0].refresh(1.0)], 1.0)
    assert seen[-1][1].cls == Class.SUCCESS
    answers_to(logic, RendezvousClient("m0", "x", SERVER, (), ask_now=False), M, 1.0)
    full = answers_to(logic, RendezvousClient("m1", "x", SERVER, (), ask_now=False), A, 1.0)
    assert full.error() == (508, "Insufficient Capacity")
    assert len(logic.owners.store) == 3 and logic.stats["store_full"] == 1
    # An hour on, the first address may claim again (if there were room).
    assert logic.owners.claims.allowed("203.0.113.7", logic.wall_offset + 3601.0)


def test_a_failing_store_refuses_with_508_and_never_raises() -> None:
    logic = RendezvousLogic()
    logic.owners.store.close()
    answer = answers_to(logic, RendezvousClient("alice", "bob", SERVER, ()), A, 0.0)
    assert answer.error() == (508, "Insufficient Capacity")
    assert logic.stats["store_error"] == 1 and len(logic.registry) == 0
    logic.poll(0.0)  # the sweep too


def test_an_unusable_store_is_one_line_from_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(os.urandom(4096))
    for path in (blocker / "names.sqlite3", garbage):
        assert cli.main(["--store", str(path), "--listen", "127.0.0.1:0", "-q"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("callpeer-rendezvous: cannot open the name store")
        assert err.count("\n") == 1 and "Traceback" not in err


def test_the_default_store_is_private_and_under_xdg_state_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    path = default_store_path()
    assert path == tmp_path / "state" / "callpeer-rendezvous" / "names.sqlite3"
    store = cli.open_store(None, 365)
    store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    memory = cli.open_store(":memory:", 365)
    assert memory.path == ":memory:" and not (Path.cwd() / ":memory:").exists()
    # The embedded rendezvous (callpeer demo, lab, tests) keeps nothing on disk.
    assert RendezvousServer().logic.owners.store.path == ":memory:"


# -- the wire ----------------------------------------------------------------------------


def test_credentials_and_keys_are_checked_on_the_wire() -> None:
    creds = IceCredentials.generate()
    assert len(creds.ufrag) >= 4 and len(creds.pwd) >= 22 and "-" not in creds.pwd + creds.ufrag
    bad = [("abc", "p" * 22), ("abcd", "p" * 21), ("ab:d", "p" * 22), ("a" * 65, "p" * 22)]
    for ufrag, pwd in bad:
        with pytest.raises(StunError):
            IceCredentials.from_untrusted(ufrag, pwd)
    key = Identity.generate().public
    asking = Register("alice", "bob", key=key, ice=creds).to_message()
    assert Register.from_message_untrusted(asking).ice == creds
    short_key = Register("alice", "bob", key=key[:31]).to_message()
    with pytest.raises(StunError):
        Register.from_message_untrusted(short_key)
    no_key = PeerReady("bob", (), creds.ufrag, creds.pwd, True, key).to_message()
    stripped = Message(
        no_key.method,
        no_key.cls,
        attributes=tuple(a for a in no_key.attributes if a[0] != Attr.CP_PEER_KEY),
    )
    with pytest.raises(StunError):
        PeerReady.from_message_untrusted(stripped)
    # Asking for a peer without credentials for the peer to check us by: 400.
    logic = RendezvousLogic()
    bare = Register("alice", "bob", key=key, nonce=logic.cookies.make(A, 0.0)).to_message()
    [(answer, _)] = logic.handle_datagram(encode(bare, fingerprint=True), A, 0.0)
    assert parse_message_untrusted(answer).error() == (400, "Bad Request")


def test_the_connector_registers_with_the_identity_it_is_given() -> None:
    me = Identity.generate()
    connector = Connector("alice", "bob", SERVER, (), identity=me)
    assert connector.signal.identity is me and connector.signal.keys.public == me.public
    assert Connector("alice", "bob", SERVER, ()).signal.identity.public != me.public


# -- over real sockets -----------------------------------------------------------------


async def register_over_udp(
    server: Addr, name: str, identity: Identity | None = None
) -> list[SignalEvent]:
    """A RendezvousClient on a real loopback socket, until it has something to report."""
    client = RendezvousClient(name, "bob", server, (), ask_now=False, identity=identity)
    events: list[SignalEvent] = []
    done = asyncio.Event()

    def on_datagram(data: bytes, src: Addr, now: float) -> None:
        out = client.handle(parse_message_untrusted(data), src, now) or []
        endpoint.send_all(out)
        events.extend(client.pop_events())
        if events:
            done.set()

    endpoint = UdpEndpoint.open("127.0.0.1", 0, on_datagram)
    try:
        endpoint.send_all(client.start(endpoint.loop.time()))
        await asyncio.wait_for(done.wait(), 3.0)
    finally:
        endpoint.close()
    return events


def test_names_over_loopback_through_a_restarted_server(tmp_path: Path) -> None:
    path = tmp_path / "names.sqlite3"
    alice = Identity.generate()

    async def serve_and_register(name: str, identity: Identity | None) -> list[SignalEvent]:
        async with RendezvousServer(RendezvousLogic(store=NameStore(path))) as server:
            await server.start("127.0.0.1", 0)
            try:
                return await register_over_udp(server.address, name, identity)
            finally:
                server.logic.owners.store.close()

    async def scenario() -> list[list[SignalEvent]]:
        return [
            await serve_and_register("alice", alice),
            await serve_and_register("alice", None),  # another key, after a restart
            await serve_and_register("alice", alice),  # the owner, from a new socket
        ]

    first, stranger, owner = asyncio.run(scenario())
    assert isinstance(first[0], Registered) and isinstance(owner[0], Registered)
    assert isinstance(stranger[0], Refused) and stranger[0].code == 409


DAY = 86400.0


def test_a_name_used_on_one_day_only_is_released_after_a_week() -> None:
    """Claimed and dropped (what a stranger filling the store does): a week. Seen again a day
    or more after its claim (what a person does): the full year."""
    store = NameStore()
    key = bytes(range(32))
    assert store.claim("dropped", key, 0.0) and store.claim("kept", key, 0.0)
    kept = store.lookup("kept", 2 * DAY)
    assert kept is not None and store.touch(kept, 2 * DAY)  # came back two days later
    assert store.lookup("dropped", 6 * DAY) is not None
    assert store.lookup("dropped", 8 * DAY) is None  # on probation: gone after 7 days unseen
    assert store.lookup("kept", 300 * DAY) is not None
    assert store.claim("gone", key, 0.0)
    assert store.purge(8 * DAY) == 1 and len(store) == 1  # the sweep uses the same rule


def test_new_names_are_capped_for_everyone_together() -> None:
    """64 sources claiming 10 names each against a cap of 500 an hour: 500 claimed, then
    486 for everyone until the hour is over."""
    logic = RendezvousLogic(limits=Limits(claims_per_hour=500))
    got = refused = 0
    for source in range(64):
        for i in range(10):
            refusal, _ = logic.owners.admit(
                f"n{source}-{i}", os.urandom(32), f"2001:db8:{source:x}::1", 0.0
            )
            if refusal is None:
                assert (
                    logic.owners.claim(
                        f"n{source}-{i}", os.urandom(32), f"2001:db8:{source:x}::1", 0.0
                    )
                    is None
                )
                got += 1
            else:
                refused += 1
    assert (got, refused) == (500, 140)
    assert logic.owners.admit("later", os.urandom(32), "2001:db8:ffff::1", 3601.0) == (None, None)


def test_a_name_with_a_trailing_newline_is_no_name() -> None:
    """`$` matches before a final newline: "alice\\n" must not pass as a second alice."""
    from voip.wire.signal import check_name

    for bad in ("alice\n", "alice\r\n", "\nalice"):
        with pytest.raises(ValueError, match="bad name"):
            check_name(bad)
    with pytest.raises(StunError, match="ice-chars"):
        IceCredentials.from_untrusted("abcd\n", "p" * 22)
