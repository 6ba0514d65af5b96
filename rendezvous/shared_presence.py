"""Presence shared by several rendezvous servers through a store (--redis), sans-IO.

Without a store, one server holds every name and matches asks in its own registry. With one,
each server still keeps the callers whose sockets it holds (their address, the key agreed with
them, their introductions in flight), and the store holds what every server must agree on:
which identity key owns each name, where each name is registered, and who asks for whom. A
proven REGISTER becomes a `Registration` for the store, which claims or checks the name's owner,
writes the caller's record (with a time to live: expiry is the store's) and, when the caller
asks for a peer who asks for it, takes both asks in the same atomic step, so exactly one server
makes the introduction. The answer to the caller waits for the store's reply (one round trip).

An introduction between callers on two servers is made by the server whose caller asked last:
it tells its caller at once, and hands the other half (a `Handoff`, the PEER-READY with its
role) to the server that holds the peer, which sends it, signed with the key only it shares with
its caller: within one store round trip of the first. The store is ours but shared: what comes
from it is parsed as untrusted all the same, and a record that does not parse is no peer.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import replace
from typing import TYPE_CHECKING

from rendezvous.introductions import Handoff
from rendezvous.registry import Entry
from rendezvous.store_records import StoreReply
from rendezvous.store_records import call_text
from rendezvous.store_records import handoff_from_untrusted
from rendezvous.store_records import restore_call
from rendezvous.turn_server import Out
from voip.wire.signal import ERR_CAPACITY
from voip.wire.signal import ERR_NAME_TAKEN
from voip.wire.signal import ERR_QUOTA
from voip.wire.stun import StunError
from voip.wire.stun import encode

if TYPE_CHECKING:
    from rendezvous.logic import Proven
    from rendezvous.logic import RendezvousLogic

PENDING = 4096  # registrations awaiting the store's reply; past this, 508 (try again)
# s after which a refresh goes to the store in full even if it changed nothing, so the owner's
# binding is seen (its last-seen time is kept an hour at a time, rendezvous/name_store.py).
RESTORE_AFTER = 600.0


@dataclass(frozen=True)
class Registration:
    """Register or refresh `name` in the store; `token` pairs the reply with the request."""

    token: int
    name: str
    key: bytes  # the identity key that owns the name (or claims it)
    wall: float  # Unix time
    wants: str  # the peer asked for, "" for none
    call: str  # "PEER KEYHEX" while this run is in a call it may restart, else ""
    intro: bytes  # the PEER-READY a peer gets about this caller (role to be set), b"" unasked
    may_claim: bool  # whether this source may claim one more name (ClaimRate)


@dataclass(frozen=True)
class Departure:
    """The name's holder left (LEAVE, or its stream closed): its record goes, if still ours."""

    name: str
    key: bytes


@dataclass(frozen=True)
class Touch:
    """A refresh that changed nothing: the record lives on, if it is still this server's."""

    name: str
    key: bytes


SharedOp = Registration | Departure | Touch | Handoff


@dataclass(frozen=True)
class _Pending:
    proven: Proven | None  # None: a record written again, whose REGISTER was answered
    entry: Entry  # the local entry the REGISTER made or refreshed
    fresh: bool  # made by it: removed again if the store refuses


class SharedPresence:
    """The logic's side of the store: what to ask it, and what its replies and the other
    servers' handoffs make the logic send."""

    def __init__(self, server_id: str, stats: Counter[str], pending: int = PENDING):
        self.server_id = server_id
        self.stats = stats
        self.capacity = pending
        self.ops: list[SharedOp] = []  # for the shell to carry to the store, in order
        # Told when ops are added, so the shell need not look after every datagram.
        self.wake: Callable[[], None] = lambda: None
        self._pending: dict[int, _Pending] = {}
        self._asking: dict[str, bytes] = {}  # a name's REGISTER awaiting the store: its ID
        self._token = 0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, *ops: SharedOp) -> None:
        if ops:
            self.ops += ops
            self.wake()

    def take_ops(self) -> list[SharedOp]:
        ops, self.ops = self.ops, []
        return ops

    def serve(self, logic: RendezvousLogic, proven: Proven, now: float) -> list[Out]:
        """A REGISTER from a proven holder of `req.key`: held locally, then asked of the store;
        the answer goes out when the store replies (`answered`). A refresh that changes
        nothing the store holds is answered at once, and its record's life extended in a
        batch (`Touch`): the store is asked again in full only when the record is gone."""
        req, src = proven.req, proven.src
        held = logic.registry.get(req.name, now)
        if held is not None and self._unchanged(held, proven, now, logic.limits.candidates):
            entry = logic.enter(proven, now)
            if not isinstance(entry, list):
                self.add(Touch(req.name, entry.client_key))
                return logic.answer(proven, entry, now, None, matched=False)
            return entry
        if self._asking.get(req.name) == proven.msg.transaction_id:
            self.stats["store_retransmission"] += 1  # the store has it: one answer for both
            return []
        entry = logic.enter(proven, now)
        if isinstance(entry, list):
            return entry  # refused by this server's own caps
        if len(self._pending) >= self.capacity:
            self.stats["store_backlog_full"] += 1
            if held is None:
                logic.registry.remove(req.name, src)
            else:
                entry.stored = -math.inf  # not in the store: not unchanged next time
            return logic.signed_error(proven.msg, src, proven.key, ERR_CAPACITY)
        self._asking[req.name] = proven.msg.transaction_id
        self._ask_store(logic, _Pending(proven, entry, held is None), now)
        return []

    def _unchanged(self, held: Entry, proven: Proven, now: float, candidates: int) -> bool:
        req = proven.req
        return (
            held.stored > now - RESTORE_AFTER
            and held.client_key == req.key
            and held.reflexive == proven.src
            and held.wants == req.peer
            and held.ice == req.ice
            and (req.mapping is None or req.mapping == held.mapping)
            and held.host_candidates == req.host_candidates[:candidates]
        )

    def _ask_store(
        self, logic: RendezvousLogic, pending: _Pending, now: float, *, rewrite: bool = False
    ) -> None:
        """The Registration for `pending`'s entry; a `rewrite` of a record we held (gone from
        the store: expired or lost there) is no new claim for the claim caps."""
        self._token += 1
        self._pending[self._token] = pending
        entry, wall = pending.entry, now + logic.wall_offset
        call = call_text(entry)
        intro = b""
        if entry.ice is not None:
            intro = encode(logic.introductions.ready_for(entry, False, entry.ice).to_message())
        claim = rewrite or logic.owners.claims.allowed(entry.reflexive[0], wall)
        self.add(
            Registration(
                self._token,
                entry.name,
                entry.client_key,
                wall,
                entry.wants or "",
                call,
                intro,
                claim,
            )
        )

    def lost(self, logic: RendezvousLogic, names: list[str], now: float) -> None:
        """Records a Touch found gone (expired in the store, or written by another server):
        written again in full, as a new registration would (its answer went out already)."""
        for name in names:
            entry = logic.registry.get(name, now)
            if entry is not None and len(self._pending) < self.capacity:
                self.stats["store_rewritten"] += 1
                entry.stored = -math.inf
                self._ask_store(logic, _Pending(None, entry, False), now, rewrite=True)

    def answered(self, logic: RendezvousLogic, token: int, reply: object, now: float) -> list[Out]:
        """The store's reply to a Registration (an exception if the store failed)."""
        pending = self._pending.pop(token, None)
        if pending is None:
            return []
        entry = pending.entry
        if pending.proven and self._asking.get(entry.name) == pending.proven.msg.transaction_id:
            del self._asking[entry.name]
        if logic.registry.get(entry.name, now) is not entry:
            self.stats["store_reply_stale"] += 1  # left, expired or taken over meanwhile
            return []
        try:
            if isinstance(reply, BaseException):
                raise StunError(f"store failed: {reply}")
            answer = StoreReply.from_reply_untrusted(reply)
        except StunError:
            self.stats["store_error"] += 1
            return self._refuse(logic, pending, ERR_CAPACITY)
        if answer.verdict in ("owned", "quota"):
            self.stats["name_taken" if answer.verdict == "owned" else "claims_per_ip"] += 1
            return self._refuse(
                logic, pending, ERR_NAME_TAKEN if answer.verdict == "owned" else ERR_QUOTA
            )
        entry.stored = now
        if entry.call is None and entry.ice is not None:
            restore_call(entry, answer.before)  # a caller that moved here in its call
        if answer.verdict == "claimed":
            logic.owners.claims.claimed(entry.reflexive[0], now + logic.wall_offset)
            self.stats["claimed"] += 1
        peer = answer.peer
        first = peer is None or answer.since <= peer.since  # both asks' times, from the store
        if peer is not None and peer.server == self.server_id:
            # Ours after all: the local entry, whose key signs what we send it.
            local = logic.registry.get(peer.name, now)
            peer = local if local is not None and local.client_key == peer.client_key else None
        matched = answer.match == "matched"
        if pending.proven is None:  # a record written again: no answer is owed
            out = logic.introductions.introduce(entry, peer, now, first) if peer and matched else []
        else:
            out = logic.answer(pending.proven, entry, now, peer, matched, first=first)
        if peer is not None and entry.call is not None:
            # In a call now: the next refresh writes it to the store, so that a restart asked
            # at another server finds it (rendezvous/introductions.py: `restarting`).
            entry.stored = peer.stored = -math.inf
        elif answer.match == "unheard" or (matched and peer is None):
            # The peer asks for us but was not told (its server deaf or gone, or it left
            # meanwhile): the next refresh asks the store in full again, not just a touch.
            entry.stored = -math.inf
        # A new introduction's other half the register script published itself; a restart's
        # is ours to send.
        self.add(*(h for h in logic.introductions.handoffs if h.restart))
        logic.introductions.handoffs.clear()
        return out

    def _refuse(self, logic: RendezvousLogic, pending: _Pending, code: int) -> list[Out]:
        entry, proven = pending.entry, pending.proven
        logic.refreshes.forget(entry)
        if pending.fresh or code != ERR_CAPACITY:
            logic.registry.remove(entry.name, entry.reflexive)  # not ours to hold after all
        else:
            # The store never took it: what the entry holds now (an ask, say) is not there,
            # and the next refresh must not be taken for one that changes nothing.
            entry.stored = -math.inf
        if proven is None:
            return []
        return logic.signed_error(proven.msg, proven.src, proven.key, code)

    def handed(self, logic: RendezvousLogic, data: bytes, now: float) -> list[Out]:
        """Another server's half of an introduction, for a caller of ours."""
        try:
            handoff = handoff_from_untrusted(data, self.server_id)
        except StunError:
            self.stats["handoff_malformed"] += 1
            return []
        ready = handoff.ready
        me = logic.registry.get(handoff.to, now)
        if me is None or me.client_key != handoff.to_key or me.ice is None:
            self.stats["handoff_stale"] += 1  # gone, or another run of the name since
            return []
        if handoff.restart:
            # Only into the call it is in, with the peer that owned the name then, and in its
            # role in that call, which this server knows (the asker's may not).
            if me.call != (ready.peer, ready.peer_key) or me.ice != me.call_ice:
                self.stats["handoff_stale"] += 1
                return []
            ready = replace(ready, controlling=me.call_controlling)
            self.stats["restarted"] += 1
        else:
            if me.wants != ready.peer:
                self.stats["handoff_stale"] += 1
                return []
            self.stats["matched"] += 1
            me.wants = None
            me.call, me.call_ice = (ready.peer, ready.peer_key), me.ice
            me.call_controlling, me.restarts = ready.controlling, []
            me.stored = -math.inf  # its call goes to the store with its next refresh
        return [logic.introductions.tell(me, ready, now)]
