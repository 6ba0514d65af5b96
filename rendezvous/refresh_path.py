"""Refreshes that change nothing, answered in a few operations (sans-IO).

A registered caller sends the same REGISTER every few seconds to keep its name: the same
attributes (name, cookie, key, peer, candidates, credentials), a new transaction ID and so a
new MESSAGE-INTEGRITY-SHA256 and FINGERPRINT. Once the full rules (rendezvous/logic.py) have
served one, the bytes before its MAC are remembered with the source address, and the same bytes
again from that address are, by construction, the same request: its MAC is checked under the
key agreed with the caller, the name's life extended, and the answer made from the one the full
rules gave, with only XOR-MAPPED-ADDRESS, the MAC and the FINGERPRINT new. Byte for byte the
answer the full rules give (tests/test_refresh_path.py holds it to that).

Each entry has one remembered request at most, the last the full rules served it. It is
forgotten when its registration is no longer the same live entry, when the full rules served
the entry another request (a flapping set of candidates is never answered from an old one),
when its caller asked for something else, once its cookie expires, and at most FORGET_AFTER after
the full rules last saw it: they then look at the name's binding again, and make fresh relay
credentials. The table is capped; what cannot be remembered takes the full rules.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rendezvous.registry import Entry
from rendezvous.registry import Registry
from voip.wire.stun import FINGERPRINT_XOR
from voip.wire.stun import HEADER_LEN
from voip.wire.stun import Address
from voip.wire.stun import Attr
from voip.wire.stun import StunError
from voip.wire.stun import encode_xor_address

if TYPE_CHECKING:
    from rendezvous.logic import Proven

FORGET_AFTER = 600.0  # s after the full rules served it
SWEEP_EVERY = 60.0  # s between sweeps of what is no longer live
_MAC_HEAD = struct.pack("!HH", Attr.MESSAGE_INTEGRITY_SHA256, 32)
_FINGERPRINT_HEAD = struct.pack("!HH", Attr.FINGERPRINT, 4)
_TAIL = 4 + 32 + 8  # MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, last in every REGISTER


@dataclass
class _Known:
    entry: Entry
    wants: str | None  # what the entry asked for when it was served
    key: bytes  # agreed with the caller
    answer_type: bytes  # the answer's first 2 bytes
    rest: bytes  # the answer's attributes after XOR-MAPPED-ADDRESS, packed
    until: float  # when to forget it (its cookie's expiry, or FORGET_AFTER)


class RefreshPath:
    def __init__(self, registry: Registry, capacity: int):
        self.registry = registry
        self.capacity = capacity
        self._known: dict[tuple[Address, bytes], _Known] = {}
        self._swept = 0.0

    def __len__(self) -> int:
        return len(self._known)

    def learn(self, proven: Proven, entry: Entry, answer: bytes, until: float) -> None:
        """The full rules served a REGISTER with `answer` (XOR-MAPPED-ADDRESS first,
        MESSAGE-INTEGRITY-SHA256 and FINGERPRINT last): the same request again from the same
        address may take this path until `until`."""
        request, src, key = proven.msg.raw, proven.src, proven.key
        if len(request) < HEADER_LEN + _TAIL:
            return
        if len(self._known) >= self.capacity and entry.quick is None:
            return
        if request[-_TAIL : -_TAIL + 4] != _MAC_HEAD or request[-8:-4] != _FINGERPRINT_HEAD:
            return
        xor_len = 4 + struct.unpack_from("!H", answer, HEADER_LEN + 2)[0]
        rest = answer[HEADER_LEN + xor_len : -_TAIL]
        known = _Known(entry, entry.wants, key, answer[:2], rest, until)
        self.forget(entry)  # one request per entry: the last one the full rules served
        entry.quick = (src, _identity(request))
        self._known[entry.quick] = known

    def answer(self, data: bytes, src: Address, now: float) -> tuple[bytes, Entry] | None:
        """The answer to a refresh seen before, and its entry; None: the full rules take it."""
        if len(data) < HEADER_LEN + _TAIL:
            return None
        lookup = (src, _identity(data))
        known = self._known.get(lookup)
        if known is None:
            return None
        entry = known.entry
        if (
            now >= known.until
            or entry.quick != lookup  # the full rules served it another request since
            or entry.expires <= now
            or self.registry.get(entry.name, now) is not entry
            or entry.reflexive != src
            or entry.wants != known.wants
        ):
            del self._known[lookup]
            return None
        if data[-_TAIL : -_TAIL + 4] != _MAC_HEAD or data[-8:-4] != _FINGERPRINT_HEAD:
            return None
        signed = data[:2] + struct.pack("!H", len(data) - HEADER_LEN - 8) + data[4:-_TAIL]
        mac = hmac.new(known.key, signed, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, data[-_TAIL + 4 : -8]):
            return None  # a forgery, or a MAC the full rules will say no to
        self.registry.extend(entry, now)
        tid = data[8:20]
        try:
            xor = encode_xor_address(src, tid)
        except (StunError, ValueError, OSError):
            return None
        body = struct.pack("!HH", Attr.XOR_MAPPED_ADDRESS, len(xor)) + xor + known.rest
        head = known.answer_type + struct.pack("!H", len(body) + 36) + data[4:8] + tid
        mac = hmac.new(known.key, head + body, hashlib.sha256).digest()
        body += _MAC_HEAD + mac
        crc = zlib.crc32(head[:2] + struct.pack("!H", len(body) + 8) + head[4:] + body)
        fingerprint = _FINGERPRINT_HEAD + struct.pack("!I", crc ^ FINGERPRINT_XOR)
        return head[:2] + struct.pack("!H", len(body) + 8) + head[4:] + body + fingerprint, entry

    def forget(self, entry: Entry) -> None:
        """The full rules served `entry` a request not to be repeated quickly (an ask that
        introduced, a restart, one the store refused): none of its requests is quick now."""
        if entry.quick is not None:
            self._known.pop(entry.quick, None)
            entry.quick = None

    def sweep(self, now: float) -> None:
        """Forget what is no longer live, once a SWEEP_EVERY at most."""
        if now - self._swept < SWEEP_EVERY:
            return
        self._swept = now
        for lookup, known in list(self._known.items()):
            if now >= known.until or self.registry.get(known.entry.name, now) is not known.entry:
                del self._known[lookup]


def _identity(request: bytes) -> bytes:
    """What makes two REGISTERs the same request: all but the transaction ID, the MAC and the
    FINGERPRINT."""
    return request[:8] + request[HEADER_LEN:-_TAIL]
