"""Connectivity check messages: STUN Binding with ICE's attributes, sans-IO (RFC 8445 §7.1-7.3).

A check from A to B carries USERNAME "B-ufrag:A-ufrag", PRIORITY, ICE-CONTROLLING or
ICE-CONTROLLED with the sender's tie-breaker, USE-CANDIDATE when it nominates, and
MESSAGE-INTEGRITY keyed with B's password, then FINGERPRINT. Answers are keyed with the
answerer's own password.
"""

from __future__ import annotations

from dataclasses import dataclass

from voip.wire.candidates import CandidateType
from voip.wire.candidates import candidate_priority
from voip.wire.stun import Address
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import check_fingerprint
from voip.wire.stun import check_integrity
from voip.wire.stun import encode
from voip.wire.stun import encode_error_code
from voip.wire.stun import encode_xor_address
from voip.wire.stun import text
from voip.wire.stun import u32
from voip.wire.stun import u64


@dataclass(frozen=True)
class Credentials:
    local_ufrag: str
    local_pwd: str
    remote_ufrag: str
    remote_pwd: str

    def check(self, controlling: bool, tiebreaker: int, nominate: bool) -> tuple[bytes, bytes]:
        """(transaction ID, datagram) of a check to the peer."""
        role = Attr.ICE_CONTROLLING if controlling else Attr.ICE_CONTROLLED
        attrs = [
            (Attr.USERNAME, text(f"{self.remote_ufrag}:{self.local_ufrag}")),
            (Attr.PRIORITY, u32(candidate_priority(CandidateType.PRFLX))),
            (role, u64(tiebreaker)),
        ]
        if nominate:
            attrs.append((Attr.USE_CANDIDATE, b""))
        req = Message(Method.BINDING, Class.REQUEST, attributes=tuple(attrs))
        return req.transaction_id, encode(
            req, integrity_key=self.remote_pwd.encode(), fingerprint=True
        )

    def is_for_us(self, msg: Message) -> bool:
        """A check the peer sent us (raises StunError for a USERNAME that is not UTF-8)."""
        username = msg.text(Attr.USERNAME) or ""
        return username == f"{self.local_ufrag}:{self.remote_ufrag}" and authentic(
            msg, self.local_pwd
        )

    def answer(self, msg: Message, src: Address) -> bytes:
        """Success: where the check came from, as we saw it (XOR-MAPPED-ADDRESS)."""
        attrs = [(Attr.XOR_MAPPED_ADDRESS, encode_xor_address(src, msg.transaction_id))]
        return self._reply(msg.reply(Class.SUCCESS, attrs))

    def role_conflict(self, msg: Message) -> bytes:
        attrs = [(Attr.ERROR_CODE, encode_error_code(487, "Role Conflict"))]
        return self._reply(msg.reply(Class.ERROR, attrs))

    def _reply(self, reply: Message) -> bytes:
        return encode(reply, integrity_key=self.local_pwd.encode(), fingerprint=True)


def authentic(msg: Message, password: str) -> bool:
    return check_fingerprint(msg) and check_integrity(msg, password.encode())
