"""What a shared store (--redis) holds and what rendezvous servers tell each other through it,
parsed as untrusted: the register script's reply, a caller's record, its call, and handoffs.

The store is ours but shared: a reply or record that does not parse is no peer, and a handoff
that does not parse is dropped, counted by the caller of these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import replace

from rendezvous.introductions import Handoff
from rendezvous.registry import Entry
from voip.wire.candidates import CandidateType
from voip.wire.signal import IceCredentials
from voip.wire.signal import PeerReady
from voip.wire.stun import StunError
from voip.wire.stun import encode
from voip.wire.stun import parse_message_untrusted

MAX_HANDOFF = 4096  # bytes: a PEER-READY fits a datagram, and so does its handoff


@dataclass(frozen=True)
class StoreReply:
    """What the store said of a Registration."""

    verdict: str  # "ok", "claimed" (the name is now this key's), "owned" (another key's), "quota"
    since: float = 0.0  # when this caller's current ask began (Unix time)
    before: bytes = b""  # the call the caller's record was in, written by whichever server
    # "matched": both asks taken; "unheard": the peer asks for us, but its server heard
    # nothing (gone, or deaf a moment); "seen": the peer is there; "": not there
    match: str = ""
    peer: Entry | None = None

    @classmethod
    def from_reply_untrusted(cls, reply: object) -> StoreReply:
        """The store script's array, as redis-py gives it (bytes); StunError if malformed."""
        if not isinstance(reply, list) or not reply or not all(isinstance(x, bytes) for x in reply):
            raise StunError("store reply is not an array of strings")
        verdict = reply[0].decode("ascii", "replace")
        if verdict not in ("ok", "claimed", "owned", "quota"):
            raise StunError(f"store verdict {verdict!r}")
        if verdict in ("owned", "quota"):
            return cls(verdict)
        since = _number(reply[1]) if len(reply) > 1 else 0.0
        before = reply[2] if len(reply) > 2 else b""
        if len(reply) < 9:
            return cls(verdict, since, before)
        match, server, key, peer_since, call, intro = reply[3:9]
        entry = remote_entry(server, key, _number(peer_since), call, intro)
        return cls(verdict, since, before, match.decode("ascii", "replace"), entry)


def _number(raw: bytes) -> float:
    try:
        value = float(raw)
    except ValueError as exc:
        raise StunError("store time is not a number") from exc
    if not math.isfinite(value):
        raise StunError("store time is not finite")
    return value


def remote_entry(server: bytes, key: bytes, since: float, call: bytes, intro: bytes) -> Entry:
    """A caller another server holds, from its record; StunError if the record is malformed."""
    ready = PeerReady.from_message_untrusted(parse_message_untrusted(intro))
    if ready.peer_key != key:
        raise StunError("store record's introduction is for another key")
    creds = IceCredentials(ready.remote_ufrag, ready.remote_pwd, ready.peer_commit)
    srflx = [c.address for c in ready.candidates if c.kind == CandidateType.SRFLX]
    entry = Entry(
        ready.peer,
        srflx[0] if srflx else ("0.0.0.0", 0),  # noqa: S104  (never sent to: server set)
        ready.candidates,
        math.inf,
        since,
        client_key=key,
        mapping=ready.peer_mapping,
        ice=creds,
        server=server.decode("ascii", "replace"),
    )
    parsed = parse_call(call)
    if parsed is not None and parsed[3] == creds.ufrag:  # this run is still in that call
        entry.call, entry.call_controlling, entry.call_ice = parsed[:2], parsed[2], creds
    return entry


def restore_call(entry: Entry, before: bytes) -> None:
    """The call `entry`'s record was in, if this run (its ufrag) is still in it: a caller that
    another server or worker held in its call may ask to meet again here."""
    try:
        parsed = parse_call(before)
    except StunError:
        return
    if parsed is not None and entry.ice is not None and parsed[3] == entry.ice.ufrag:
        entry.call, entry.call_controlling, entry.call_ice = parsed[:2], parsed[2], entry.ice


def call_text(entry: Entry) -> str:
    """The call a record carries: "PEER KEYHEX ROLE UFRAG" while this run is in one."""
    if entry.call is None or entry.ice is None or entry.ice != entry.call_ice:
        return ""
    peer, key = entry.call
    return f"{peer} {key.hex()} {int(entry.call_controlling)} {entry.ice.ufrag}"


def parse_call(raw: bytes) -> tuple[str, bytes, bool, str] | None:
    """(peer, its key, whether we control, our ufrag) from a record's call; None if it has
    none; StunError if it is malformed."""
    if not raw:
        return None
    fields = raw.decode("utf-8", "replace").split(" ")
    if len(fields) != 4 or fields[2] not in ("0", "1"):
        raise StunError("store record's call is malformed")
    try:
        return fields[0], bytes.fromhex(fields[1]), fields[2] == "1", fields[3]
    except ValueError as exc:
        raise StunError("store record's call is malformed") from exc


def handoff_bytes(handoff: Handoff) -> bytes:
    """A handoff as published to the server that holds its caller: version 1, restart, the
    role, the caller's name and key, then the PEER-READY (role unset). The register script
    builds the same bytes for a match it makes (rendezvous/presence_scripts.py)."""
    to = handoff.to.encode()
    head = bytes([1, handoff.restart, handoff.ready.controlling, len(to)]) + to
    ready = encode(replace(handoff.ready, controlling=False).to_message())
    return head + bytes([len(handoff.to_key)]) + handoff.to_key + ready


def handoff_from_untrusted(data: bytes, server: str) -> Handoff:
    """The handoff another server published for one of ours; StunError if malformed."""
    if len(data) > MAX_HANDOFF or len(data) < 5 or data[0] != 1 or data[1] > 1 or data[2] > 1:
        raise StunError("malformed handoff header")
    end = 4 + data[3]
    if len(data) < end + 1 or len(data) < end + 1 + data[end]:
        raise StunError("truncated handoff")
    try:
        to = data[4:end].decode()
    except UnicodeDecodeError as exc:
        raise StunError("handoff name is not UTF-8") from exc
    key, raw = data[end + 1 : end + 1 + data[end]], data[end + 1 + data[end] :]
    ready = PeerReady.from_message_untrusted(parse_message_untrusted(raw))
    return Handoff(server, to, key, replace(ready, controlling=bool(data[2])), bool(data[1]))
