"""callpeer's signalling messages to and from the rendezvous server, carried as STUN (sans-IO).

Signalling rides on STUN framing so that it shares the client's one socket, demultiplexes as
STUN (RFC 7983) and gets STUN's transactions and retransmissions for reliability over UDP. Each
caller makes its own ICE credentials (RFC 8445 §5.3) and sends them in the REGISTER that asks for
its peer; the server hands them, and the caller's identity key, to the peer in PEER-READY.
"""

from __future__ import annotations

import base64
import re
import secrets
import struct
from dataclasses import dataclass
from dataclasses import replace

from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.stun import decode_address
from voip.wire.stun import encode_address
from voip.wire.stun import text

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# What a client learned of its NAT's mapping at registration (RFC 5780 test II): one public port
# for every destination, or one per destination (address- or address-and-port-dependent).
MAPPING_INDEPENDENT = "endpoint-independent"
MAPPING_DEPENDENT = "dependent"
MAPPINGS = (MAPPING_INDEPENDENT, MAPPING_DEPENDENT)

# Error codes the server answers with. 409 is not in STUN's registry; the reason phrase says it.
ERR_BAD_REQUEST = 400
ERR_UNAUTHENTICATED = 401  # carries a NONCE: send the request again with it
ERR_NAME_TAKEN = 409
ERR_UNKNOWN_ATTRIBUTE = 420
ERR_QUOTA = 486  # this client's share (names from one address) is used up
ERR_CAPACITY = 508  # the server is full
# Reason phrases are fixed text (RFC 8489 §14.8: under 128 characters) and never echo input: an
# answer built from what a stranger sent could be made as large as they like.
REASONS = {
    ERR_BAD_REQUEST: "Bad Request",
    ERR_UNAUTHENTICATED: "Unauthenticated",
    ERR_NAME_TAKEN: "Name Taken",
    ERR_UNKNOWN_ATTRIBUTE: "Unknown Attribute",
    ERR_QUOTA: "Quota Reached",
    ERR_CAPACITY: "Insufficient Capacity",
}
COMMIT_BYTES = 32  # a SHA-256 commitment to a handshake ephemeral
MAX_CANDIDATES = 16  # host candidates in one REGISTER; more is not a real host
KEY_BYTES = 32  # an X25519 public key (RFC 7748)
# A REGISTER without a cookie is padded to at least this: the 401 that brings the cookie and
# the server's key (108 bytes) must be no larger than the request it answers, or the server,
# which never answers a stranger with more bytes than it sent, would stay silent.
UNPROVEN_REGISTER_BYTES = 128

# ICE credentials, RFC 8445 §5.3: ice-chars only, a ufrag of at least 4 and a password of at
# least 22 (128 bits). RFC 8445 allows 256; 64 keeps a PEER-READY with IPv6 candidates in one
# datagram, and a callpeer client sends 8 and 24.
ICE_CHARS = re.compile(r"^[A-Za-z0-9+/]+$")
UFRAG_CHARS = (4, 64)
PWD_CHARS = (22, 64)


def check_name(name: str) -> str:
    """A valid callpeer name, or ValueError saying what a name may be."""
    if not NAME_RE.fullmatch(name):
        raise ValueError(
            f"bad name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return name


def encode_candidate(c: Candidate) -> bytes:
    return struct.pack("!BxxxI", c.kind, c.priority) + encode_address(c.address)


def decode_candidate_untrusted(value: bytes) -> Candidate:
    if len(value) < 8:
        raise StunError("candidate attribute too short")
    kind, priority = struct.unpack_from("!BxxxI", value)
    try:
        ctype = CandidateType(kind)
    except ValueError as exc:
        raise StunError(f"unknown candidate type {kind}") from exc
    return Candidate(ctype, decode_address(value[8:]), priority)


def _candidates(msg: Message, limit: int = MAX_CANDIDATES) -> tuple[Candidate, ...]:
    values = msg.get_all(Attr.CP_CANDIDATE)
    if len(values) > limit:
        raise StunError(f"more than {limit} candidates")
    return tuple(decode_candidate_untrusted(v) for v in values)


def _mapping(msg: Message, attr: Attr) -> str | None:
    """A mapping attribute, or None when absent or not one we know (it is advice only)."""
    value = msg.text(attr)
    return value if value in MAPPINGS else None


def _required_text(msg: Message, attr: Attr) -> str:
    value = msg.text(attr)
    if value is None:
        raise StunError(f"missing {attr.name}")
    return value


@dataclass(frozen=True)
class IceCredentials:
    """One caller's ICE username fragment and password, made by the caller for this call, and
    `commit`, its commitment to the ephemeral key its call handshake will use: a hash the peer
    holds before it shows its own ephemeral, so that no one in the middle can choose a key after
    seeing the other (voip/security/handshake.py says why that matters for the SAS)."""

    ufrag: str
    pwd: str
    commit: bytes | None = None

    @classmethod
    def generate(cls) -> IceCredentials:
        # Base64 of a multiple of 3 bytes has no padding: ice-chars only. 48 and 144 bits.
        ufrag = base64.b64encode(secrets.token_bytes(6)).decode()
        return cls(ufrag, base64.b64encode(secrets.token_bytes(18)).decode())

    @classmethod
    def from_untrusted(cls, ufrag: str, pwd: str) -> IceCredentials:
        for what, value, (low, high) in (("ufrag", ufrag, UFRAG_CHARS), ("pwd", pwd, PWD_CHARS)):
            if not low <= len(value) <= high or not ICE_CHARS.fullmatch(value):
                raise StunError(f"ICE {what} must be {low}-{high} ice-chars (RFC 8445 §5.3)")
        return cls(ufrag, pwd)


def _ice(
    msg: Message, ufrag_attr: Attr, pwd_attr: Attr, commit_attr: Attr
) -> IceCredentials | None:
    ufrag, pwd = msg.text(ufrag_attr), msg.text(pwd_attr)
    if ufrag is None and pwd is None:
        return None
    if ufrag is None or pwd is None:
        raise StunError("an ICE ufrag without its password, or the other way round")
    commit = msg.get(commit_attr)
    if commit is not None and len(commit) != COMMIT_BYTES:
        raise StunError(f"{commit_attr.name} must be {COMMIT_BYTES} bytes")
    return replace(IceCredentials.from_untrusted(ufrag, pwd), commit=commit)


def _ice_attributes(
    ice: IceCredentials, ufrag: Attr, pwd: Attr, commit: Attr
) -> list[tuple[Attr, bytes]]:
    attrs = [(ufrag, text(ice.ufrag)), (pwd, text(ice.pwd))]
    return attrs if ice.commit is None else [*attrs, (commit, ice.commit)]


def _request(
    method: Method, attrs: list[tuple[Attr, bytes]], transaction_id: bytes | None
) -> Message:
    """A request with these attributes, in `transaction_id` if given, else a new transaction."""
    if transaction_id is None:
        return Message(method, Class.REQUEST, attributes=tuple(attrs))
    return Message(method, Class.REQUEST, transaction_id, tuple(attrs))


def _key(msg: Message, attr: Attr) -> bytes | None:
    value = msg.get(attr)
    if value is not None and len(value) != KEY_BYTES:
        raise StunError(f"{attr.name} must be {KEY_BYTES} bytes")
    return value


@dataclass(frozen=True)
class Register:
    """Client -> server: I am `name`, reachable at these host candidates; I want to call `peer`.

    Sent again as a keepalive; the server keeps the name for the lifetime it answers with.
    `nonce` is the server's cookie, proof that we receive at our address (the first REGISTER
    has none and is answered 401 with one and the server's key); `key` is our identity's public
    key, which owns the name; `ice` our credentials for the call, sent when asking for `peer`.
    """

    name: str
    peer: str | None
    host_candidates: tuple[Candidate, ...] = ()
    mapping: str | None = None  # MAPPING_INDEPENDENT or MAPPING_DEPENDENT, once known
    nonce: str | None = None
    key: bytes | None = None
    ice: IceCredentials | None = None

    def to_message(self, transaction_id: bytes | None = None) -> Message:
        attrs = [(Attr.CP_NAME, text(self.name))]
        if self.nonce is not None:
            attrs.append((Attr.NONCE, text(self.nonce)))
        if self.key is not None:
            attrs.append((Attr.CP_KEY, self.key))
        if self.peer is not None:
            attrs.append((Attr.CP_PEER, text(self.peer)))
        attrs += [(Attr.CP_CANDIDATE, encode_candidate(c)) for c in self.host_candidates]
        if self.mapping is not None:
            attrs.append((Attr.CP_NAT_MAPPING, text(self.mapping)))
        if self.ice is not None:
            attrs += _ice_attributes(
                self.ice, Attr.CP_LOCAL_UFRAG, Attr.CP_LOCAL_PWD, Attr.CP_LOCAL_COMMIT
            )
        return _request(Method.CP_REGISTER, attrs, transaction_id)

    @classmethod
    def from_message_untrusted(cls, msg: Message) -> Register:
        name = _required_text(msg, Attr.CP_NAME)
        peer = msg.text(Attr.CP_PEER)
        try:
            check_name(name)
            if peer is not None:
                check_name(peer)
        except ValueError as exc:
            raise StunError(str(exc)) from exc
        return cls(
            name,
            peer,
            _candidates(msg),
            _mapping(msg, Attr.CP_NAT_MAPPING),
            msg.text(Attr.NONCE),
            _key(msg, Attr.CP_KEY),
            _ice(msg, Attr.CP_LOCAL_UFRAG, Attr.CP_LOCAL_PWD, Attr.CP_LOCAL_COMMIT),
        )


@dataclass(frozen=True)
class PeerReady:
    """Server -> both clients at once: your peer's candidates, credentials and identity key.

    Credentials follow ICE (RFC 8445 §5.3): a check from A to B carries USERNAME
    "B-ufrag:A-ufrag" and MESSAGE-INTEGRITY keyed with B's password. Each side made its own and
    knows them; this carries the peer's, as the peer sent them in its REGISTER. `peer_key` is
    the public key that owns the peer's name at this server: what the call's handshake expects
    the peer to prove.
    """

    peer: str
    candidates: tuple[Candidate, ...]
    remote_ufrag: str
    remote_pwd: str
    controlling: bool
    peer_key: bytes
    peer_mapping: str | None = None  # what the peer's NAT mapping is, if it found out
    peer_commit: bytes | None = None  # the peer's commitment to its handshake ephemeral

    def to_message(self, transaction_id: bytes | None = None) -> Message:
        attrs = [
            (Attr.CP_PEER, text(self.peer)),
            *[(Attr.CP_CANDIDATE, encode_candidate(c)) for c in self.candidates],
            *_ice_attributes(
                IceCredentials(self.remote_ufrag, self.remote_pwd, self.peer_commit),
                Attr.CP_REMOTE_UFRAG,
                Attr.CP_REMOTE_PWD,
                Attr.CP_REMOTE_COMMIT,
            ),
            (Attr.CP_ROLE, text("controlling" if self.controlling else "controlled")),
            (Attr.CP_PEER_KEY, self.peer_key),
        ]
        if self.peer_mapping is not None:
            attrs.append((Attr.CP_PEER_NAT_MAPPING, text(self.peer_mapping)))
        return _request(Method.CP_PEER_READY, attrs, transaction_id)

    @classmethod
    def from_message_untrusted(cls, msg: Message) -> PeerReady:
        role = _required_text(msg, Attr.CP_ROLE)
        if role not in ("controlling", "controlled"):
            raise StunError(f"bad role {role!r}")
        remote = _ice(msg, Attr.CP_REMOTE_UFRAG, Attr.CP_REMOTE_PWD, Attr.CP_REMOTE_COMMIT)
        peer_key = _key(msg, Attr.CP_PEER_KEY)
        if remote is None or peer_key is None or remote.commit is None:
            # Without the commitment, whoever introduced us could choose the peer's ephemeral
            # after seeing ours: such an introduction is refused, not taken without it.
            raise StunError("PEER-READY without the peer's credentials, key or commitment")
        return cls(
            peer=_required_text(msg, Attr.CP_PEER),
            # The peer's registered candidates and the address the server saw it at.
            candidates=_candidates(msg, MAX_CANDIDATES + 1),
            remote_ufrag=remote.ufrag,
            remote_pwd=remote.pwd,
            controlling=role == "controlling",
            peer_key=peer_key,
            peer_mapping=_mapping(msg, Attr.CP_PEER_NAT_MAPPING),
            peer_commit=remote.commit,
        )
