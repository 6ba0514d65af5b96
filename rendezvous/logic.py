"""The rendezvous server's protocol logic: datagrams and time in, datagrams out (sans-IO).

It answers STUN Binding requests from anyone (RFC 8489 §12), keeps the presence registry, and
when two clients have each asked for the other, sends both a PEER-READY in the same instant:
each one's candidates, the ICE credentials the other made, and the identity key that owns the
other's name, retransmitted until each acknowledges.

Nothing a stranger sends makes it keep, introduce or retransmit anything, or answer with more
bytes than it sent. A REGISTER is first answered 401 with a cookie (rendezvous/cookies.py) and
our public key, no larger than the (padded) request; only one that brings the cookie back,
proving that its sender receives at its address, and carries MESSAGE-INTEGRITY-SHA256 under the
key its identity key agrees with ours (voip/security/registration.py), proving it holds that
identity, is served. A name belongs to the first key that claims it (rendezvous/ownership.py,
kept across restarts by rendezvous/name_store.py): only that key registers, refreshes, moves
(a NAT that rebinds) or releases it, and anyone else gets the same 409 whether the owner is
online or not. Every later message either way carries the MAC, so a caller can tell our
PEER-READY from a forged one.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rendezvous.behaviour import Addresses
from rendezvous.behaviour import answer_binding
from rendezvous.cookies import CookieJar
from rendezvous.introductions import Introductions
from rendezvous.introductions import signed
from rendezvous.limits import Limits
from rendezvous.name_store import NameStore
from rendezvous.ownership import NameOwnership
from rendezvous.refresh_path import FORGET_AFTER
from rendezvous.refresh_path import RefreshPath
from rendezvous.registry import Entry
from rendezvous.registry import NameTaken
from rendezvous.registry import Registry
from rendezvous.registry import RegistryFull
from rendezvous.relay_fleet import RelayFleet
from rendezvous.shared_presence import RESTORE_AFTER
from rendezvous.shared_presence import Departure
from rendezvous.shared_presence import SharedPresence
from rendezvous.turn_server import Out
from voip.security.registration import BadPublicKey
from voip.security.registration import RegistrationKeyPair
from voip.wire.signal import ERR_BAD_REQUEST
from voip.wire.signal import ERR_CAPACITY
from voip.wire.signal import ERR_NAME_TAKEN
from voip.wire.signal import ERR_QUOTA
from voip.wire.signal import ERR_UNAUTHENTICATED
from voip.wire.signal import ERR_UNKNOWN_ATTRIBUTE
from voip.wire.signal import REASONS
from voip.wire.signal import Register
from voip.wire.stun import MAX_DATAGRAM
from voip.wire.stun import Address
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.stun import check_integrity
from voip.wire.stun import encode
from voip.wire.stun import encode_address
from voip.wire.stun import encode_error_code
from voip.wire.stun import encode_unknown_attributes
from voip.wire.stun import encode_xor_address
from voip.wire.stun import parse_message_untrusted
from voip.wire.stun import text
from voip.wire.stun import u32
from voip.wire.stun import unknown_required
from voip.wire.turn import REST_CREDENTIAL_TTL
from voip.wire.turn import rest_credentials

Transmit = tuple[bytes, Address]

SOFTWARE = "callpeer-rendezvous 0.1"
COOKIE_LIFETIME = 3600.0  # s; an expired cookie costs its client one more round trip
MAX_UNKNOWN_LISTED = 8  # attribute types named in a 420 answer


@dataclass(frozen=True)
class RelayOffer:
    """The TURN relay callers are told to use, and the secret its REST credentials come from.

    The relay may be this server (callpeer-rendezvous --relay-address), another instance on the
    relay host, or coturn with use-auth-secret and the same secret.
    """

    server: Address
    secret: str
    ttl: int = REST_CREDENTIAL_TTL  # s; a call keeps the credentials it started with
    fleet: RelayFleet | None = None  # several relays sharing the secret: those that answer

    def attributes(self, name: str, unix_now: float) -> list[tuple[int, bytes]]:
        """Relay credentials, good on every relay offered: only ever in an answer to a
        registered, proven caller."""
        username, password = rest_credentials(self.secret, name, unix_now, self.ttl)
        relays = self.fleet.up() if self.fleet is not None else [self.server]
        return [
            *((Attr.CP_TURN_SERVER, encode_address(relay)) for relay in relays),
            (Attr.CP_TURN_USERNAME, text(username)),
            (Attr.CP_TURN_PASSWORD, text(password)),
        ]


def other_address(addresses: Addresses | None, src: Address) -> list[tuple[int, bytes]]:
    """OTHER-ADDRESS, so a client can learn its NAT's mapping with one more Binding; not to a
    client of the other IP family (registered over IPv6 with an IPv4 alternate), whose probe
    there would measure another mapping than the one it registered from."""
    if addresses is None or addresses.alternate is None:
        return []
    if (":" in src[0]) != (":" in addresses.alternate[0]):
        return []
    return [(Attr.OTHER_ADDRESS, encode_address(addresses.alternate))]


@dataclass(frozen=True)
class Proven:
    """A REGISTER from a source that receives at its address, by the holder of the key it
    names, and the key agreed with that holder, which signs everything we send it."""

    msg: Message
    req: Register
    key: bytes
    src: Address


def refuse(
    stats: Counter[str],
    msg: Message,
    src: Address,
    code: int,
    extra: Sequence[tuple[int, bytes]] = (),
) -> list[Out]:
    """An error to an unproven source: fixed reason, no SOFTWARE, FINGERPRINT only if the
    request had one; and, as every answer to a source that has not shown it receives there,
    never more bytes than it sent, or a spoofed request would make us a reflector."""
    attrs = [(Attr.ERROR_CODE, encode_error_code(code, REASONS[code])), *extra]
    reply = encode(msg.reply(Class.ERROR, attrs), fingerprint=msg.fingerprint_at is not None)
    if len(reply) > len(msg.raw):
        stats["answer_withheld"] += 1
        return []
    return [Out(reply, src)]


class RendezvousLogic:
    def __init__(
        self,
        lifetime: float = 30.0,
        software: str = SOFTWARE,
        relay: RelayOffer | None = None,
        wallclock: float | None = None,
        addresses: Addresses | None = None,
        *,
        limits: Limits | None = None,
        store: NameStore | None = None,
    ):
        self.limits = limits or Limits()
        self.registry = Registry(lifetime, self.limits.names, self.limits.names_per_ip)
        self.software = software
        self.relay = relay
        self.addresses = addresses  # our transport addresses, with the RFC 5780 alternate
        self.wall_offset = (time.time() - time.monotonic()) if wallclock is None else wallclock
        self.stats: Counter[str] = Counter()
        self.cookies = CookieJar(COOKIE_LIFETIME)
        self.keys = RegistrationKeyPair()
        self.introductions = Introductions(self.stats)
        # Names and their keys: in memory unless a store file is given (the command's --store),
        # so tests and the embedded rendezvous never write to the user's home.
        if store is None:
            store = NameStore(max_age_days=self.limits.binding_days)
        self.owners = NameOwnership(store, self.limits, self.stats)
        self.shared: SharedPresence | None = None  # names and asks in a store (--redis)
        self.refreshes = RefreshPath(self.registry, self.limits.names)

    def next_deadline(self) -> float | None:
        times = (self.introductions.next_deadline(), self.registry.next_expiry())
        return min((t for t in times if t is not None), default=None)

    def poll(self, now: float) -> list[Transmit]:
        resend = self.introductions.poll(now)
        self.stats["expired"] += len(self.registry.expire(now))
        self.refreshes.sweep(now)
        self.owners.sweep(now + self.wall_offset)
        return resend

    def handle_datagram(self, data: bytes, src: Address, now: float) -> list[Transmit]:
        """Everything that arrives goes through here; nothing it contains can raise out of it."""
        if len(data) > MAX_DATAGRAM:
            self.stats["oversized"] += 1
            return []
        try:
            msg = parse_message_untrusted(data)
        except StunError:
            self.stats["malformed"] += 1
            return []
        return [(out.data, out.dest) for out in self.handle_message(msg, src, now)]

    def handle_message(
        self, msg: Message, src: Address, now: float, local: Address | None = None
    ) -> list[Out]:
        """A parsed STUN message that arrived on our `local` address (the primary if None)."""
        try:
            return self._dispatch(msg, src, now, local or self._primary())
        except StunError:
            self.stats["malformed"] += 1
            return []

    def _primary(self) -> Address:
        return self.addresses.primary if self.addresses else ("0.0.0.0", 0)  # noqa: S104

    # -- dispatch ---------------------------------------------------------------------------
    def _dispatch(self, msg: Message, src: Address, now: float, local: Address) -> list[Out]:
        if msg.cls == Class.REQUEST:
            unknown = unknown_required(msg)
            if unknown:
                self.stats["unknown_attribute"] += 1
                listed = encode_unknown_attributes(unknown[:MAX_UNKNOWN_LISTED])
                extra = [(Attr.UNKNOWN_ATTRIBUTES, listed)]
                return refuse(self.stats, msg, src, ERR_UNKNOWN_ATTRIBUTE, extra)
            if msg.method == Method.BINDING:
                return self.binding(msg, src, local)
            if msg.method == Method.CP_REGISTER:
                return self._register(msg, src, now)
            if msg.method == Method.CP_LEAVE:
                return self._leave(msg, src, now)
            self.stats["unknown_method"] += 1
            return refuse(self.stats, msg, src, ERR_BAD_REQUEST)
        if msg.cls == Class.SUCCESS and msg.method == Method.CP_PEER_READY:
            self.introductions.acknowledged(msg)
            return []
        self.stats["ignored"] += 1
        return []

    def binding(self, msg: Message, src: Address, local: Address) -> list[Out]:
        """A Binding request that arrived on our `local` address (RFC 5780 when we have an
        alternate address; see rendezvous/behaviour.py)."""
        self.stats["binding"] += 1
        # RFC 5780 answers only on the addresses they are for (not on a second --listen).
        known = self.addresses is not None and local in self.addresses.all()
        addresses = self.addresses if self.addresses is not None and known else Addresses(local)
        return answer_binding(msg, src, local, addresses, self.software)

    # -- registration -----------------------------------------------------------------------
    def _register(self, msg: Message, src: Address, now: float) -> list[Out]:
        try:
            req = Register.from_message_untrusted(msg)
        except StunError:
            self.stats["bad_register"] += 1
            return refuse(self.stats, msg, src, ERR_BAD_REQUEST)
        if req.key is None or (req.peer is not None and (req.ice is None or not req.ice.commit)):
            # No key to own the name with; or asking for a peer without the credentials the
            # peer will need to check us, and the commitment its handshake will hold us to.
            self.stats["bad_register"] += 1
            return refuse(self.stats, msg, src, ERR_BAD_REQUEST)
        if not self.cookies.valid(req.nonce, src, now):
            self.stats["register_challenged"] += 1
            return self._challenge(msg, src, now)
        # The source receives where it says it is: from here on, answers may be larger. Now it
        # must show it holds the key it names: a MAC under the key agreed from it.
        holder = self.registry.get(req.name, now)
        if holder is not None and holder.client_key == req.key and holder.reflexive == src:
            key = holder.key  # the owner's refresh from where it is: no X25519 each time
        else:
            # From anywhere else, agreed afresh: then not even the time taken says whether
            # the owner is online.
            try:
                key = self.keys.agree_untrusted(req.key, we_are_client=False)
            except BadPublicKey:
                self.stats["bad_register"] += 1
                return refuse(self.stats, msg, src, ERR_BAD_REQUEST)
        if not check_integrity(msg, key):
            # Someone else's key (its public half is no secret), or a client that missed our
            # 401 and so our key: a fresh cookie and our key, no larger than the request.
            self.stats["register_forged"] += 1
            return self._challenge(msg, src, now)
        return self._serve(Proven(msg, req, key, src), now)

    def _challenge(self, msg: Message, src: Address, now: float) -> list[Out]:
        """401: a cookie for this address, and our public key, so the next REGISTER can carry
        both the cookie and a MAC under the key they agree."""
        extra = [(Attr.NONCE, text(self.cookies.make(src, now))), (Attr.CP_KEY, self.keys.public)]
        return refuse(self.stats, msg, src, ERR_UNAUTHENTICATED, extra)

    def _serve(self, proven: Proven, now: float) -> list[Out]:
        msg, req, key, src = proven.msg, proven.req, proven.key, proven.src
        owner = req.key
        assert owner is not None  # _register refused a REGISTER without one
        if req.peer == req.name:
            return self.signed_error(msg, src, key, ERR_BAD_REQUEST)
        if self.shared is not None:  # the names and asks live in the store: it answers
            return self.shared.serve(self, proven, now)
        wall = now + self.wall_offset
        refusal, binding = self.owners.admit(req.name, owner, src[0], wall)
        if refusal is not None:
            return self.signed_error(msg, src, key, refusal)
        entry = self.enter(proven, now)
        if isinstance(entry, list):
            return entry
        if binding is None:
            refusal = self.owners.claim(req.name, owner, src[0], wall)
            if refusal is not None:
                self.registry.remove(req.name, src)
                return self.signed_error(msg, src, key, refusal)
        else:
            self.owners.seen(binding, wall)
        asked = self.registry.get(req.peer, now) if req.peer is not None else None
        matched = self.registry.match(req.name, now) is not None
        return self.answer(proven, entry, now, asked, matched)

    def enter(self, proven: Proven, now: float) -> Entry | list[Out]:
        """Add or refresh the registration in this server's registry, or the refusal."""
        req, src = proven.req, proven.src
        assert req.key is not None
        try:
            return self.registry.register(
                req.name,
                src,
                req.host_candidates[: self.limits.candidates],
                req.peer,
                now,
                mapping=req.mapping,
                client_key=req.key,
                key=proven.key,
                ice=req.ice,
            )
        except NameTaken:
            self.stats["name_taken"] += 1
            return self.signed_error(proven.msg, src, proven.key, ERR_NAME_TAKEN)
        except RegistryFull as full:
            self.stats["registry_full_per_ip" if full.per_ip else "registry_full"] += 1
            code = ERR_QUOTA if full.per_ip else ERR_CAPACITY
            return self.signed_error(proven.msg, src, proven.key, code)

    def answer(
        self,
        proven: Proven,
        entry: Entry,
        now: float,
        asked: Entry | None,
        matched: bool,
        *,
        first: bool | None = None,
    ) -> list[Out]:
        """The answer to a served REGISTER, and the introductions it makes: a restart of the
        call it is in with `asked`, or, if both asked for each other, a new one (`first`:
        whether this caller asked first, when the store compared)."""
        msg, req, src = proven.msg, proven.req, proven.src
        self.stats["register"] += 1
        again = None  # an ask in a call already: an ICE restart (or refused as one)
        if req.peer is not None:
            again = self.introductions.restart(entry, asked, now)
        peer = asked if matched and again is None else None
        status = "matched" if peer or again else ("waiting" if req.peer else "registered")
        attrs = [
            (Attr.XOR_MAPPED_ADDRESS, encode_xor_address(src, msg.transaction_id)),
            (Attr.LIFETIME, u32(int(self.registry.lifetime))),
            (Attr.CP_STATUS, text(status)),
            (Attr.CP_KEY, self.keys.public),
            *(self.relay.attributes(req.name, now + self.wall_offset) if self.relay else ()),
            *other_address(self.addresses, src),
        ]
        out = [Out(signed(msg.reply(Class.SUCCESS, attrs), proven.key), src)]
        if peer is not None:
            out += self.introductions.introduce(entry, peer, now, first)
        if peer is None and again is None and req.nonce is not None:  # the same again: quick
            until = min(self.cookies.expiry(req.nonce), now + FORGET_AFTER)
            if self.shared is not None:
                until = min(until, entry.stored + RESTORE_AFTER)
            self.refreshes.learn(proven, entry, out[0].data, until)
        else:
            self.refreshes.forget(entry)
        return out + (again or [])

    def signed_error(self, msg: Message, src: Address, key: bytes, code: int) -> list[Out]:
        """An error to a proven source, with our key so it can check the answer is ours."""
        attrs = [
            (Attr.ERROR_CODE, encode_error_code(code, REASONS[code])),
            (Attr.CP_KEY, self.keys.public),
        ]
        return [Out(signed(msg.reply(Class.ERROR, attrs), key), src)]

    def _leave(self, msg: Message, src: Address, now: float) -> list[Out]:
        """Go offline: only the owner, from its address, under its key. Anything else gets no
        answer at all. The name stays bound to the owner's key."""
        name = msg.text(Attr.CP_NAME) or ""
        entry = self.registry.get(name, now)
        if entry is None or entry.reflexive != src or not check_integrity(msg, entry.key):
            self.stats["leave_refused"] += 1
            return []
        self.registry.remove(name, src)
        if self.shared is not None:
            self.shared.add(Departure(name, entry.client_key))
        self.stats["leave"] += 1
        return [Out(signed(msg.reply(Class.SUCCESS), entry.key), src)]
