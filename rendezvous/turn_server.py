"""TURN relay server logic over UDP, sans-IO (RFC 8656).

Allocate, Refresh, CreatePermission, ChannelBind, Send and Data indications, ChannelData;
allocation, permission (300 s) and channel (600 s) lifetimes; long-term credentials with
stateless nonces, including the TURN REST API credentials of coturn's `use-auth-secret`, so one
secret serves this relay and a coturn fleet alike.

Defences: peers on loopback, 0.0.0.0/8, link-local, multicast and (unless allowed) private
ranges are refused (coturn's fix for CVE-2020-26262); a per-user allocation quota; and an
unauthenticated request never gets an answer larger than itself, so the relay cannot be used to
amplify a spoofed flood.

Relayed sockets are the shell's business: it passes in a `RelayPorts` that opens and closes
them, and sends what this logic returns through the socket each `Out` names.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import struct
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from voip.wire.stun import (
    Address,
    Attr,
    Class,
    Message,
    Method,
    StunError,
    check_integrity,
    decode_xor_address,
    encode,
    encode_error_code,
    encode_xor_address,
    long_term_key,
    new_transaction_id,
    text,
    u32,
)
from voip.wire.turn import (
    ALLOCATION_LIFETIME,
    CHANNEL_LIFETIME,
    CHANNEL_MIN,
    LEGACY_CHANNEL_MAX,
    MAX_LIFETIME,
    PERMISSION_LIFETIME,
    UDP_TRANSPORT,
    ChannelDataError,
    pack_channel_data,
    parse_channel_data_untrusted,
    rest_expiry,
    rest_password,
)

TURN_METHODS = {
    Method.ALLOCATE,
    Method.REFRESH,
    Method.CREATE_PERMISSION,
    Method.CHANNEL_BIND,
    Method.SEND,
}
NONCE_LIFETIME = 600  # s
# A nonce is 4 bytes of expiry and 5 of MAC, 12 characters of base64: a forged one only skips
# the challenge round trip (MESSAGE-INTEGRITY still decides), and with the 2-character realm
# the unauthenticated 401 is 52 bytes, so even coturn's turnutils_uclient's smallest Allocate
# (52 bytes) can be challenged without the answer being larger than the question.
NONCE_MAC_BYTES = 5
# Always refused as peers (RFC 8656 §21.1, CVE-2020-26262): they reach the relay itself.
ALWAYS_DENIED = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "255.255.255.255/32",
        "::/128",
        "fe80::/10",
        "ff00::/8",
    )
]
# Refused unless allow_loopback_peers: only for a relay that is itself on loopback (tests, and
# the rendezvous a caller hosts for two terminals on one machine), like coturn's flag.
LOOPBACK = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
# Refused unless allowed: the relay's own site may be on them.
PRIVATE = [
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "fc00::/7",
    )
]


class Out(NamedTuple):
    data: bytes
    dest: Address
    via: Address | None = None  # None: the server's own socket; else this relayed address


class RelayPorts(Protocol):
    def open(self) -> Address | None:
        """A new relayed transport address (a bound socket), or None if none can be had."""

    def close(self, relayed: Address) -> None: ...


@dataclass
class Allocation:
    client: Address
    relayed: Address
    username: str
    key: bytes
    expires: float
    permissions: dict[str, float] = field(default_factory=dict)  # peer IP -> expiry
    channels: dict[int, tuple[Address, float]] = field(default_factory=dict)
    by_peer: dict[Address, int] = field(default_factory=dict)
    allocate_tid: bytes = b""
    allocate_reply: bytes = b""


@dataclass
class TurnPolicy:
    realm: str = "cp"  # short on purpose: see NONCE_MAC_BYTES
    secret: str | None = None  # TURN REST API shared secret (coturn's static-auth-secret)
    users: dict[str, str] = field(default_factory=dict)  # static long-term users
    allowed_peers: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    allow_loopback_peers: bool = False
    quota: int = 10  # allocations per username
    max_lifetime: int = MAX_LIFETIME


class TurnServer:
    def __init__(
        self, ports: RelayPorts, policy: TurnPolicy | None = None, wallclock: float | None = None
    ):
        self.ports = ports
        self.policy = policy or TurnPolicy()
        # unix time = now + offset; REST usernames carry unix expiry times
        self.wall_offset = (time.time() - time.monotonic()) if wallclock is None else wallclock
        self.allocations: dict[Address, Allocation] = {}  # by client 5-tuple (UDP: address)
        self.by_relayed: dict[Address, Allocation] = {}
        self.stats: Counter[str] = Counter()
        self._nonce_key = os.urandom(16)

    # -- entry points -------------------------------------------------------------------------
    def handles(self, msg: Message) -> bool:
        return msg.method in TURN_METHODS

    def handle_request(self, msg: Message, data: bytes, src: Address, now: float) -> list[Out]:
        """A TURN request or Send indication from a client; `data` is the datagram as received."""
        if msg.method == Method.SEND:
            return self._send_indication(msg, src, now) if msg.cls == Class.INDICATION else []
        if msg.cls != Class.REQUEST:
            return []
        try:
            auth = self._authenticate(msg, data, src, now)
            if isinstance(auth, list):
                return auth
            username, key = auth
            if msg.method == Method.ALLOCATE:
                return self._allocate(msg, src, username, key, now)
            alloc = self.allocations.get(src)
            if alloc is None or alloc.username != username:
                return self._error(msg, src, 437, "Allocation Mismatch", key)
            if msg.method == Method.REFRESH:
                return self._refresh(msg, alloc, now)
            if msg.method == Method.CREATE_PERMISSION:
                return self._create_permission(msg, alloc, now)
            return self._channel_bind(msg, alloc, now)
        except StunError:
            self.stats["malformed"] += 1
            return []

    def handle_channel_data(self, data: bytes, src: Address, now: float) -> list[Out]:
        alloc = self.allocations.get(src)
        try:
            channel, payload = parse_channel_data_untrusted(data, legacy=True)
        except ChannelDataError:
            self.stats["malformed"] += 1
            return []
        if alloc is None or channel not in alloc.channels:
            self.stats["channel_unknown"] += 1
            return []
        peer, expires = alloc.channels[channel]
        if expires <= now or not self._permitted(alloc, peer[0], now):
            return []
        self.stats["relayed_to_peer"] += 1
        return [Out(payload, peer, alloc.relayed)]

    def handle_peer(self, data: bytes, relayed: Address, peer: Address, now: float) -> list[Out]:
        """A datagram that arrived on relayed address `relayed` from `peer`."""
        alloc = self.by_relayed.get(relayed)
        if alloc is None or alloc.expires <= now or not self._permitted(alloc, peer[0], now):
            self.stats["peer_not_permitted"] += 1
            return []
        self.stats["relayed_to_client"] += 1
        channel = alloc.by_peer.get(peer)
        if channel is not None and alloc.channels[channel][1] > now:
            return [Out(pack_channel_data(channel, data), alloc.client)]
        tid = new_transaction_id()
        ind = Message(
            Method.DATA,
            Class.INDICATION,
            tid,
            ((Attr.XOR_PEER_ADDRESS, encode_xor_address(peer, tid)), (Attr.DATA, data)),
        )
        return [Out(encode(ind), alloc.client)]

    def next_deadline(self) -> float | None:
        return min((a.expires for a in self.allocations.values()), default=None)

    def poll(self, now: float) -> None:
        for client, alloc in list(self.allocations.items()):
            if alloc.expires <= now:
                self._release(client)
                self.stats["expired"] += 1

    # -- authentication -------------------------------------------------------------------
    def _nonce_mac(self, src: Address, expiry: bytes) -> bytes:
        msg = f"{src[0]}:{src[1]}:".encode() + expiry
        return hmac.new(self._nonce_key, msg, hashlib.sha256).digest()[:NONCE_MAC_BYTES]

    def _nonce(self, src: Address, now: float) -> str:
        expiry = struct.pack("!I", int(now + NONCE_LIFETIME) & 0xFFFFFFFF)
        return base64.urlsafe_b64encode(expiry + self._nonce_mac(src, expiry)).decode()

    def _nonce_valid(self, nonce: str, src: Address, now: float) -> bool:
        try:
            raw = base64.urlsafe_b64decode(nonce.encode())
        except (ValueError, UnicodeEncodeError):
            return False
        if len(raw) != 4 + NONCE_MAC_BYTES:
            return False
        expiry, mac = raw[:4], raw[4:]
        return struct.unpack("!I", expiry)[0] > now and hmac.compare_digest(
            mac, self._nonce_mac(src, expiry)
        )

    def _password(self, username: str, now: float) -> str | None:
        if username in self.policy.users:
            return self.policy.users[username]
        if self.policy.secret is not None:
            expiry = rest_expiry(username)
            if expiry is None or expiry < now + self.wall_offset:
                self.stats["rest_expired" if expiry is not None else "rest_malformed"] += 1
                return None
            return rest_password(self.policy.secret, username)
        return None

    def _challenge(
        self, msg: Message, data: bytes, src: Address, now: float, code: int
    ) -> list[Out]:
        reply = encode(
            msg.reply(
                Class.ERROR,
                [
                    (
                        Attr.ERROR_CODE,
                        encode_error_code(code, ""),
                    ),  # no reason phrase: bytes count here
                    (Attr.REALM, text(self.policy.realm)),
                    (Attr.NONCE, text(self._nonce(src, now))),
                ],
            )
        )
        # Never answer a request we cannot authenticate with more bytes than it carried.
        if len(reply) > len(data):
            self.stats["challenge_withheld"] += 1
            return []
        self.stats[f"challenge_{code}"] += 1
        return [Out(reply, src)]

    def _authenticate(
        self, msg: Message, data: bytes, src: Address, now: float
    ) -> tuple[str, bytes] | list[Out]:
        username = msg.text(Attr.USERNAME)
        nonce = msg.text(Attr.NONCE)
        realm = msg.text(Attr.REALM)
        if msg.integrity_at is None or username is None or nonce is None or realm is None:
            return self._challenge(msg, data, src, now, 401)
        if not self._nonce_valid(nonce, src, now):
            return self._challenge(msg, data, src, now, 438)
        password = self._password(username, now) if realm == self.policy.realm else None
        key = long_term_key(username, realm, password) if password is not None else None
        if key is None or not check_integrity(msg, key):
            self.stats["bad_credentials"] += 1
            return self._challenge(msg, data, src, now, 401)
        return username, key

    # -- requests ---------------------------------------------------------------------------
    def _reply(
        self,
        msg: Message,
        dest: Address,
        key: bytes,
        attrs: Iterable[tuple[int, bytes]],
        cls: Class = Class.SUCCESS,
    ) -> list[Out]:
        return [Out(encode(msg.reply(cls, attrs), integrity_key=key, fingerprint=True), dest)]

    def _error(self, msg: Message, dest: Address, code: int, reason: str, key: bytes) -> list[Out]:
        self.stats[f"error_{code}"] += 1
        return self._reply(
            msg, dest, key, [(Attr.ERROR_CODE, encode_error_code(code, reason))], Class.ERROR
        )

    def _lifetime(self, msg: Message, default: int) -> int:
        asked = msg.u32(Attr.LIFETIME)
        return default if asked is None else min(asked, self.policy.max_lifetime)

    def _allocate(
        self, msg: Message, src: Address, username: str, key: bytes, now: float
    ) -> list[Out]:
        existing = self.allocations.get(src)
        if existing is not None:
            if existing.allocate_tid == msg.transaction_id:  # a retransmission: same answer
                return [Out(existing.allocate_reply, src)]
            return self._error(msg, src, 437, "Allocation Mismatch", key)
        transport = msg.get(Attr.REQUESTED_TRANSPORT)
        if transport is None:
            return self._error(msg, src, 400, "Bad Request: no REQUESTED-TRANSPORT", key)
        if transport[0] != UDP_TRANSPORT:
            return self._error(msg, src, 442, "Unsupported Transport Protocol", key)
        family = msg.get(Attr.REQUESTED_ADDRESS_FAMILY)
        if family is not None and family[:1] != b"\x01":
            return self._error(msg, src, 440, "Address Family not Supported", key)
        if msg.has(Attr.RESERVATION_TOKEN):
            return self._error(msg, src, 508, "Insufficient Capacity: no reservations", key)
        if sum(a.username == username for a in self.allocations.values()) >= self.policy.quota:
            return self._error(msg, src, 486, "Allocation Quota Reached", key)
        relayed = self.ports.open()
        if relayed is None:
            return self._error(msg, src, 508, "Insufficient Capacity", key)
        lifetime = self._lifetime(msg, ALLOCATION_LIFETIME)
        alloc = Allocation(src, relayed, username, key, now + lifetime)
        reply = self._reply(
            msg,
            src,
            key,
            [
                (Attr.XOR_RELAYED_ADDRESS, encode_xor_address(relayed, msg.transaction_id)),
                (Attr.LIFETIME, u32(lifetime)),
                (Attr.XOR_MAPPED_ADDRESS, encode_xor_address(src, msg.transaction_id)),
            ],
        )
        alloc.allocate_tid, alloc.allocate_reply = msg.transaction_id, reply[0].data
        self.allocations[src] = alloc
        self.by_relayed[relayed] = alloc
        self.stats["allocate"] += 1
        return reply

    def _refresh(self, msg: Message, alloc: Allocation, now: float) -> list[Out]:
        lifetime = self._lifetime(msg, ALLOCATION_LIFETIME)
        if lifetime == 0:
            self._release(alloc.client)
            self.stats["released"] += 1
        else:
            alloc.expires = now + lifetime
            self.stats["refresh"] += 1
        return self._reply(msg, alloc.client, alloc.key, [(Attr.LIFETIME, u32(lifetime))])

    def peer_refusal(self, ip: str) -> str | None:
        """Why a peer address may not be relayed to, or None when it may."""
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return "not an IP address"
        if any(addr in n for n in ALWAYS_DENIED):
            return "unspecified, link-local or multicast"
        if any(addr in n for n in LOOPBACK) and not self.policy.allow_loopback_peers:
            return "loopback"
        if any(addr in n for n in self.policy.allowed_peers):
            return None
        if any(addr in n for n in PRIVATE):
            return "a private address"
        return None

    def _peers(self, msg: Message) -> list[Address]:
        return [
            decode_xor_address(v, msg.transaction_id) for v in msg.get_all(Attr.XOR_PEER_ADDRESS)
        ]

    def _create_permission(self, msg: Message, alloc: Allocation, now: float) -> list[Out]:
        peers = self._peers(msg)
        if not peers:
            return self._error(
                msg, alloc.client, 400, "Bad Request: no XOR-PEER-ADDRESS", alloc.key
            )
        for peer in peers:
            if self.peer_refusal(peer[0]) is not None:
                self.stats["peer_refused"] += 1
                return self._error(
                    msg, alloc.client, 403, "Forbidden: peer address refused", alloc.key
                )
        for peer in peers:
            alloc.permissions[peer[0]] = now + PERMISSION_LIFETIME
        self.stats["permission"] += 1
        return self._reply(msg, alloc.client, alloc.key, [])

    def _channel_bind(self, msg: Message, alloc: Allocation, now: float) -> list[Out]:
        number = msg.get(Attr.CHANNEL_NUMBER)
        peers = self._peers(msg)
        if number is None or len(number) != 4 or len(peers) != 1:
            return self._error(msg, alloc.client, 400, "Bad Request", alloc.key)
        channel, peer = struct.unpack("!H", number[:2])[0], peers[0]
        if not CHANNEL_MIN <= channel <= LEGACY_CHANNEL_MAX:
            return self._error(msg, alloc.client, 400, "Bad Request: channel number", alloc.key)
        if self.peer_refusal(peer[0]) is not None:
            self.stats["peer_refused"] += 1
            return self._error(msg, alloc.client, 403, "Forbidden: peer address refused", alloc.key)
        bound = alloc.channels.get(channel)
        if (bound is not None and bound[0] != peer) or alloc.by_peer.get(peer, channel) != channel:
            return self._error(msg, alloc.client, 400, "Bad Request: channel in use", alloc.key)
        alloc.channels[channel] = (peer, now + CHANNEL_LIFETIME)
        alloc.by_peer[peer] = channel
        alloc.permissions[peer[0]] = now + PERMISSION_LIFETIME  # §12.2: binding installs one
        self.stats["channel_bind"] += 1
        return self._reply(msg, alloc.client, alloc.key, [])

    def _send_indication(self, msg: Message, src: Address, now: float) -> list[Out]:
        alloc = self.allocations.get(src)
        if alloc is None:
            return []
        try:
            peer = msg.xor_address(Attr.XOR_PEER_ADDRESS)
        except StunError:
            return []
        data = msg.get(Attr.DATA)
        if peer is None or data is None or not self._permitted(alloc, peer[0], now):
            self.stats["send_not_permitted"] += 1
            return []
        self.stats["relayed_to_peer"] += 1
        return [Out(data, peer, alloc.relayed)]

    def _permitted(self, alloc: Allocation, ip: str, now: float) -> bool:
        return alloc.permissions.get(ip, 0.0) > now

    def _release(self, client: Address) -> None:
        alloc = self.allocations.pop(client, None)
        if alloc is not None:
            self.by_relayed.pop(alloc.relayed, None)
            self.ports.close(alloc.relayed)
