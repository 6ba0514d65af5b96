"""Fuzzing with a budget: every parser of untrusted bytes, fed mutated real packets.

    .venv/bin/python bench/fuzz.py [--inputs 1000000] [--seed 1] [--only stun,rtp] [--list] [-v]
    .venv/bin/python bench/fuzz.py --only NAME --replay HEX     # one input again, traceback shown
    make fuzz FUZZ_ARGS="--inputs 100000"

Each target starts from seeds made by the project's own encoders and sans-IO exchanges: ICE
checks with MESSAGE-INTEGRITY and FINGERPRINT and their answers, Binding requests of every kind
the rendezvous answers, a TURN client and relay through Allocate, Refresh, CreatePermission,
ChannelBind, Send and Data indications and ChannelData, RTP with Opus payloads, RTCP SR, RR,
SDES and BYE compounds, REGISTER, PEER-READY and LEAVE from two rendezvous clients meeting,
SRTP and SRTCP, the Noise XX handshake, and the traffic of a whole call. Each seed is fed once
as it is; the rest of the budget is mutations: bit flips, bytes inserted, deleted and replaced,
truncation, splices of two seeds, 16-bit length fields nudged, random bytes; STUN seeds are also
mutated attribute by attribute and encoded again, signed with the keys the target knows, so that
a mutation gets past MESSAGE-INTEGRITY to the code behind it.

A parser may raise its own error type (StunError, RtpError, RtcpError, ChannelDataError,
NoiseError) and nothing else; the whole-datagram entry points (the rendezvous, its node, the
relay, the TURN client, SRTP, the media handshake, a connected call) may raise nothing at all.
Anything else is an escape, printed with the input's hex, and the exit status is 1.

Stateful targets (servers, a call) are built again every so many inputs, so that what one input
changed (an allocation released, a name taken) does not hide paths from all that follow. Keys and
cookies are fresh at each build: a reproducer that needed a MAC or a cookie to get where it
failed replays only against the state it was found in.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import ipaddress
import itertools
import pickle
import random
import re
import struct
import sys
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from rendezvous.behaviour import Addresses
from rendezvous.behaviour import answer_binding
from rendezvous.logic import RelayOffer
from rendezvous.logic import RendezvousLogic
from rendezvous.node import RendezvousNode
from rendezvous.turn_server import TURN_METHODS
from rendezvous.turn_server import Out
from rendezvous.turn_server import TurnPolicy
from rendezvous.turn_server import TurnServer
from voip.call_core import CallCore
from voip.call_core import CallOptions
from voip.codecs.opus import CodecUnavailable
from voip.codecs.opus import OpusEncoder
from voip.codecs.pcm import FRAME_SAMPLES
from voip.codecs.pcm import silence
from voip.codecs.pcm import tone
from voip.media.audio_io import NullSink
from voip.media.audio_io import ToneSource
from voip.nat.check_messages import Credentials
from voip.nat.rendezvous_client import RendezvousClient
from voip.nat.turn_client import TurnClient
from voip.security.handshake import MediaHandshake
from voip.security.handshake import commitment
from voip.security.handshake import frame
from voip.security.noise import NoiseError
from voip.security.noise import NoiseXX
from voip.security.registration import RegistrationKeyPair
from voip.security.srtp import MediaCipher
from voip.wire.candidates import Candidate
from voip.wire.candidates import CandidateType
from voip.wire.rtcp import SDES
from voip.wire.rtcp import Bye
from voip.wire.rtcp import ReceiverReport
from voip.wire.rtcp import ReportBlock
from voip.wire.rtcp import RtcpError
from voip.wire.rtcp import SenderReport
from voip.wire.rtcp import pack_compound
from voip.wire.rtcp import pack_rtcp
from voip.wire.rtcp import parse_rtcp_untrusted
from voip.wire.rtp import OPUS_PAYLOAD_TYPE
from voip.wire.rtp import RtpError
from voip.wire.rtp import RtpPacket
from voip.wire.rtp import is_rtcp
from voip.wire.rtp import looks_like_rtp_or_rtcp
from voip.wire.rtp import parse_rtp_untrusted
from voip.wire.signal import MAPPING_DEPENDENT
from voip.wire.signal import MAPPING_INDEPENDENT
from voip.wire.signal import IceCredentials
from voip.wire.signal import PeerReady
from voip.wire.signal import Register
from voip.wire.signal import decode_candidate_untrusted
from voip.wire.signal import encode_candidate
from voip.wire.stun import CHANGE_IP
from voip.wire.stun import CHANGE_PORT
from voip.wire.stun import CHANGED_ADDRESS
from voip.wire.stun import HEADER_LEN
from voip.wire.stun import SOURCE_ADDRESS
from voip.wire.stun import Address
from voip.wire.stun import Attr
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.stun import change_request
from voip.wire.stun import check_fingerprint
from voip.wire.stun import check_integrity
from voip.wire.stun import decode_address
from voip.wire.stun import decode_error_code
from voip.wire.stun import decode_xor_address
from voip.wire.stun import encode
from voip.wire.stun import encode_address
from voip.wire.stun import encode_error_code
from voip.wire.stun import encode_xor_address
from voip.wire.stun import looks_like_stun
from voip.wire.stun import parse_message_untrusted
from voip.wire.stun import text
from voip.wire.stun import unknown_required
from voip.wire.turn import CHANNEL_MAX
from voip.wire.turn import ChannelDataError
from voip.wire.turn import looks_like_channel_data
from voip.wire.turn import pack_channel_data
from voip.wire.turn import parse_channel_data_untrusted
from voip.wire.turn import rest_credentials

DEFAULT_INPUTS = 1_000_000
MAX_INPUT = 2048  # longer than any datagram a parser here accepts
RESET_EVERY = 20_000  # inputs between builds of a stateful target
ROOT = Path(__file__).resolve().parent.parent

Transmit = tuple[bytes, Address]
Key = tuple[bytes, bool]  # a MESSAGE-INTEGRITY key, and whether it is for -SHA256

# The simulated internet (documentation ranges): the rendezvous and relay, their RFC 5780
# alternate, TURN clients and a peer, two callers.
SERVER: Address = ("203.0.113.10", 3478)
ALTERNATE: Address = ("203.0.113.11", 3479)
CLIENT: Address = ("203.0.113.1", 40000)
CLIENT2: Address = ("203.0.113.5", 40002)
PEER: Address = ("203.0.113.2", 50000)
ALICE: Address = ("198.51.100.1", 4000)
BOB: Address = ("198.51.100.2", 4002)
INTERNET = ipaddress.ip_network("203.0.113.0/24")
TURN_SECRET = "fuzz"
TID = bytes(range(12))
SIGNAL_KEY = bytes(range(64, 96))


# -- targets and the driver ---------------------------------------------------------------


@dataclass
class Target:
    """One parser and what to feed it.

    `feed` runs one input and names what happened (its outcome kind); it may raise only
    `allowed`. `stun`: the seeds are STUN (mutate them attribute-wise too), signed with `keys`.
    """

    seeds: list[bytes]
    feed: Callable[[bytes], str]
    allowed: tuple[type[Exception], ...] = ()
    stun: bool = False
    keys: tuple[Key, ...] = ()
    tokens: tuple[bytes, ...] = ()
    reset_every: int = 0  # build again after this many inputs (0: never)


@dataclass(frozen=True)
class Spec:
    name: str
    about: str
    build: Callable[[], Target]


TARGETS: dict[str, Spec] = {}


def target(name: str, about: str) -> Callable[[Callable[[], Target]], Callable[[], Target]]:
    def register(build: Callable[[], Target]) -> Callable[[], Target]:
        TARGETS[name] = Spec(name, about, build)
        return build

    return register


@dataclass
class Escape:
    kind: str
    where: str
    count: int
    reproducer: bytes
    trace: str


@dataclass
class Result:
    name: str
    inputs: int = 0
    seconds: float = 0.0
    builds: int = 0
    slowest: float = 0.0  # s, the slowest single input
    outcomes: Counter[str] = field(default_factory=Counter)
    escapes: dict[str, Escape] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0

    @property
    def escaped(self) -> int:
        return sum(e.count for e in self.escapes.values())

    def describe_escapes(self) -> str:
        lines = []
        for key, e in self.escapes.items():
            lines.append(f"ESCAPE in {self.name}: {key} ({e.count} inputs)")
            lines.append(
                f"  reproduce: .venv/bin/python bench/fuzz.py --only {self.name} "
                f"--replay {e.reproducer.hex()}"
            )
            lines.extend("  " + line for line in e.trace.rstrip().splitlines())
        return "\n".join(lines)


_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\d+")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
MAX_DISTINCT_ESCAPES = 50


def kind_of(exc: BaseException) -> str:
    """An error's type and message with numbers and quoted input taken out: its kind."""
    message = _NUMBERS.sub("#", _QUOTED.sub("'...'", str(exc)))
    return f"{type(exc).__name__}: {message}"[:100]


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    last = frames[-1]
    path = Path(last.filename)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    return f"{shown}:{last.lineno} in {last.name}"


def _record(result: Result, exc: Exception, data: bytes) -> None:
    kind, where = kind_of(exc), _where(exc)
    key = f"{kind} at {where}"
    found = result.escapes.get(key)
    if found is not None:
        found.count += 1
    elif len(result.escapes) < MAX_DISTINCT_ESCAPES:
        trace = "".join(traceback.format_exception(exc))
        result.escapes[key] = Escape(kind, where, 1, data, trace)


def run_target(spec: Spec, inputs: int, seed: int = 1) -> Result:
    """Feed `spec`'s target its seeds, then mutations of them, `inputs` in all."""
    rng = random.Random(f"{seed}:{spec.name}")
    result = Result(spec.name)
    start = time.perf_counter()
    built = spec.build()
    mutator = Mutator(built, rng)
    result.builds, since_build = 1, 0
    clock = time.perf_counter
    for _ in range(inputs):
        if built.reset_every and since_build >= built.reset_every:
            built = spec.build()
            mutator = Mutator(built, rng)
            result.builds, since_build = result.builds + 1, 0
        data = built.seeds[since_build] if since_build < len(built.seeds) else mutator()
        since_build += 1
        t0 = clock()
        try:
            outcome = built.feed(data)
        except built.allowed as exc:
            outcome = kind_of(exc)
        except Exception as exc:  # what the fuzzer is here to find
            outcome = "ESCAPE"
            _record(result, exc, data)
        took = clock() - t0
        result.slowest = max(result.slowest, took)
        result.outcomes[outcome] += 1
    result.inputs = inputs
    result.seconds = time.perf_counter() - start
    return result


def replay(spec: Spec, data: bytes) -> int:
    """Feed one input to a fresh build of the target: its outcome, or the traceback."""
    built = spec.build()
    try:
        outcome = built.feed(data)
    except built.allowed as exc:
        outcome = kind_of(exc)
    except Exception:
        traceback.print_exc()
        return 1
    print(f"{spec.name}: {outcome}")
    return 0


# -- the mutator --------------------------------------------------------------------------

INTERESTING_8 = (0x00, 0x01, 0x02, 0x03, 0x10, 0x40, 0x7F, 0x80, 0xC0, 0xFF)
INTERESTING_16 = (
    0x0000, 0x0001, 0x0004, 0x0014, 0x0020, 0x4000, 0x4FFF, 0x5000, 0x7FFE, 0x7FFF, 0x8000,
    0x8028, 0xFFFF,
)  # fmt: skip
NUDGES = (-16, -8, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 8, 16)
STACKS = (1, 1, 1, 1, 2, 2, 3, 4, 8)  # mutations stacked on one input
ATTR_TYPES = (
    *(int(a) for a in Attr),
    SOURCE_ADDRESS,
    CHANGED_ADDRESS,
    0x0000,
    0x7FFF,
    0x8000,
    0xFFFF,
)
METHODS = tuple(int(m) for m in Method)
MACS = {Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT}
STUN_TOKENS = (
    struct.pack("!I", 0x2112A442),  # the magic cookie
    struct.pack("!HH", Attr.MESSAGE_INTEGRITY, 20),
    struct.pack("!HH", Attr.MESSAGE_INTEGRITY_SHA256, 32),
    struct.pack("!HH", Attr.FINGERPRINT, 4),
    struct.pack("!HH", Attr.XOR_MAPPED_ADDRESS, 20),  # the IPv6 form
    struct.pack("!HH", Attr.CP_CANDIDATE, 8),
)


@dataclass(frozen=True)
class _Template:
    """A parsed STUN seed, its MACs taken off, to mutate attribute by attribute."""

    method: int
    cls: Class
    tid: bytes
    cookie: int
    attrs: tuple[tuple[int, bytes], ...]
    signed: bool
    fingerprinted: bool


class Mutator:
    """Fast homemade mutations of a target's seeds, from one `random.Random`."""

    def __init__(self, built: Target, rng: random.Random):
        self.rng = rng
        self.seeds = list(built.seeds) or [b""]
        self.tokens = built.tokens + (STUN_TOKENS if built.stun else ())
        self.keys = built.keys
        self.templates: list[_Template] = []
        self.values: dict[int, list[bytes]] = {}  # attribute values seen, by type
        if built.stun:
            for seed in self.seeds:
                try:
                    msg = parse_message_untrusted(seed)
                except StunError:
                    continue  # ChannelData, RTP: mutated bytewise only
                for atype, value in msg.attributes:
                    self.values.setdefault(atype, []).append(value)
                self.templates.append(
                    _Template(
                        msg.method,
                        msg.cls,
                        msg.transaction_id,
                        msg.cookie,
                        tuple((t, v) for t, v in msg.attributes if t not in MACS),
                        msg.integrity_at is not None or msg.integrity256_at is not None,
                        msg.fingerprint_at is not None,
                    )
                )
        self.value_types = list(self.values) or list(ATTR_TYPES)

    def __call__(self) -> bytes:
        rng = self.rng
        if self.templates and rng.random() < 0.4:
            return self.structured()
        data = bytearray(rng.choice(self.seeds))
        self.mutate(data, rng.choice(STACKS))
        if self.templates and len(data) >= HEADER_LEN and data[0] < 4 and rng.random() < 0.6:
            # Most byte mutations of STUN break its length field: mend it, so they go deeper.
            data += bytes(-(len(data) - HEADER_LEN) % 4)
            data[2:4] = ((len(data) - HEADER_LEN) & 0xFFFF).to_bytes(2, "big")
        del data[MAX_INPUT:]
        return bytes(data)

    def mutate(self, data: bytearray, rounds: int) -> None:
        rng = self.rng
        for _ in range(rounds):
            n = len(data)
            op = rng.randrange(12) if n else 3
            if op == 0:  # flip a bit
                data[rng.randrange(n)] ^= 1 << rng.randrange(8)
            elif op == 1:
                data[rng.randrange(n)] = rng.choice(INTERESTING_8)
            elif op == 2:
                data[rng.randrange(n)] = rng.getrandbits(8)
            elif op == 3:  # insert random bytes
                at = rng.randrange(n + 1)
                data[at:at] = rng.randbytes(1 + rng.randrange(8))
            elif op == 4:  # delete a few
                at = rng.randrange(n)
                del data[at : at + 1 + rng.randrange(8)]
            elif op == 5:  # truncate
                del data[rng.randrange(n) :]
            elif op == 6:  # splice: our head, another seed's tail
                other = rng.choice(self.seeds)
                data[rng.randrange(n + 1) :] = other[rng.randrange(len(other) + 1) :]
            elif op == 7 and n >= 2:  # a 16-bit field (every length here is one), aligned
                at = rng.randrange(n - 1) & ~1
                pick = rng.randrange(3)
                if pick == 0:
                    value = int.from_bytes(data[at : at + 2], "big") + rng.choice(NUDGES)
                elif pick == 1:
                    value = rng.choice(INTERESTING_16)
                else:  # "the rest of the datagram", give or take a header
                    value = n - at - rng.choice((0, 2, 4, 20))
                data[at : at + 2] = (value & 0xFFFF).to_bytes(2, "big")
            elif op == 8:  # duplicate a chunk
                start = rng.randrange(n)
                chunk = data[start : start + 1 + rng.randrange(16)]
                at = rng.randrange(n + 1)
                data[at:at] = chunk
            elif op == 9 and self.tokens:  # write a token (a magic number, a header)
                token = rng.choice(self.tokens)
                at = rng.randrange(n + 1)
                data[at : at + len(token)] = token
            elif op == 10:  # byte arithmetic
                at = rng.randrange(n)
                data[at] = (data[at] + rng.choice(NUDGES)) & 0xFF
            elif op == 11:
                if rng.random() < 0.2:  # random bytes altogether
                    data[:] = rng.randbytes(rng.randrange(64))
                else:
                    data += rng.randbytes(1 + rng.randrange(32))

    def structured(self) -> bytes:
        """A STUN seed with its attributes mutated, encoded again and maybe signed."""
        rng = self.rng
        t = rng.choice(self.templates)
        method, cls, tid, cookie = t.method, t.cls, t.tid, t.cookie
        attrs = list(t.attrs)
        for _ in range(rng.choice(STACKS)):
            op = rng.randrange(9)
            at = rng.randrange(len(attrs) + 1)
            if op <= 2 and at < len(attrs):  # mutate one value, most often
                atype, value = attrs[at]
                buf = bytearray(value)
                self.mutate(buf, 1)
                attrs[at] = (atype, bytes(buf[:1024]))
            elif op == 3 and at < len(attrs):
                del attrs[at]
            elif op == 4 and attrs:  # repeat one
                attrs.insert(at, rng.choice(attrs))
            elif op == 5:  # insert one, often a value seen in another seed
                atype = rng.choice(self.value_types if rng.random() < 0.7 else ATTR_TYPES)
                pool = self.values.get(atype)
                if pool and rng.random() < 0.7:
                    value = rng.choice(pool)
                else:
                    value = rng.randbytes(rng.randrange(40))
                attrs.insert(at, (atype, value))
            elif op == 6 and at < len(attrs):  # retype one
                attrs[at] = (rng.choice(ATTR_TYPES), attrs[at][1])
            elif op == 7:
                method = rng.choice(METHODS) if rng.random() < 0.8 else rng.getrandbits(12)
                cls = Class(rng.randrange(4))
            elif op == 8:
                if rng.random() < 0.5:
                    tid = rng.randbytes(12)
                else:
                    cookie = rng.getrandbits(32)
        key: bytes | None = None
        sha256 = False
        if self.keys and rng.random() < (0.9 if t.signed else 0.2):
            key, sha256 = rng.choice(self.keys)
        fingerprint = rng.random() < (0.9 if t.fingerprinted else 0.2)
        msg = Message(method, cls, tid, tuple(attrs), cookie)
        return encode(msg, integrity_key=key, integrity_sha256=sha256, fingerprint=fingerprint)


def _changed(stats: Counter[str], before: dict[str, int], sent: int) -> str:
    """A server's outcome: the counters one input moved, else whether it answered."""
    moved = sorted(k for k, v in stats.items() if before.get(k) != v)
    return ",".join(moved) if moved else ("answered" if sent else "silent")


# -- seeds --------------------------------------------------------------------------------


def _hosts() -> tuple[Candidate, ...]:
    return (
        Candidate.make(CandidateType.HOST, ("198.18.1.2", 5000)),
        Candidate.make(CandidateType.HOST, ("2001:db8::5", 5000)),
        Candidate.make(CandidateType.SRFLX, ALICE),
        Candidate.make(CandidateType.RELAY, ("203.0.113.20", 49152)),
    )


@cache
def _checks() -> tuple[tuple[bytes, ...], tuple[Key, ...]]:
    """ICE connectivity checks (Binding, USERNAME, PRIORITY, ICE-CONTROLLING/-CONTROLLED,
    USE-CANDIDATE, MESSAGE-INTEGRITY, FINGERPRINT) and their answers, and the two passwords."""
    ours = Credentials("AbCd", "aliceAliceAliceAlice24ch", "EfGh", "bobBobBobBobBobBobBob24c")
    theirs = Credentials(ours.remote_ufrag, ours.remote_pwd, ours.local_ufrag, ours.local_pwd)
    out: list[bytes] = []
    for controlling, nominate in ((True, False), (True, True), (False, False)):
        _, data = ours.check(controlling, 0x1234_5678_9ABC_DEF0, nominate)
        msg = parse_message_untrusted(data)
        out += [data, theirs.answer(msg, ALICE), theirs.answer(msg, ("2001:db8::1", 4000))]
        out.append(theirs.role_conflict(msg))
    keys = ((ours.local_pwd.encode(), False), (ours.remote_pwd.encode(), False))
    return tuple(out), keys


@cache
def _bindings() -> tuple[bytes, ...]:
    """Binding requests as natcheck, old RFC 3489 clients and keepalives send them, and the
    rendezvous's answers from each of its addresses, to IPv4 and IPv6 sources."""
    addresses = Addresses(SERVER, ALTERNATE)
    requests = [
        Message(Method.BINDING, Class.REQUEST, TID),
        Message(Method.BINDING, Class.REQUEST, TID, ((Attr.PADDING, bytes(64)),)),
        Message(
            Method.BINDING,
            Class.REQUEST,
            TID,
            (
                (Attr.CHANGE_REQUEST, change_request(CHANGE_IP | CHANGE_PORT)),
                (Attr.PADDING, bytes(96)),
            ),
        ),
        Message(
            Method.BINDING,
            Class.REQUEST,
            TID,
            ((Attr.RESPONSE_PORT, struct.pack("!HH", 4999, 0)), (Attr.PADDING, bytes(64))),
        ),
        Message(  # RFC 3489: no magic cookie
            Method.BINDING,
            Class.REQUEST,
            TID,
            ((Attr.CHANGE_REQUEST, change_request(CHANGE_PORT)),),
            0x0102_0304,
        ),
        Message(Method.BINDING, Class.INDICATION, TID),
    ]
    out: list[bytes] = []
    for i, req in enumerate(requests):
        data = encode(req, fingerprint=not req.is_classic and i % 2 == 0)
        out.append(data)
        if req.cls != Class.REQUEST:
            continue
        msg = parse_message_untrusted(data)
        for local in addresses.all()[:3]:
            for src in (ALICE, ("2001:db8::2", 4000)):
                out += [o.data for o in answer_binding(msg, src, local, addresses, "fuzz 0.1")]
    return tuple(out)


@cache
def _signals() -> tuple[bytes, ...]:
    """REGISTER, PEER-READY and LEAVE made with their own encoders, plain and signed."""
    hosts = _hosts()
    ice = replace(IceCredentials.generate(), commit=bytes(range(32)))
    key = bytes(range(32, 64))
    messages = [
        Register("alice", None).to_message(TID),
        Register("alice", "bob", hosts, MAPPING_INDEPENDENT, "Y29va2ll", key, ice).to_message(TID),
        Register("bob.b_b-1", "alice", hosts[:1], MAPPING_DEPENDENT, None, key, ice).to_message(),
    ]
    ready = PeerReady("bob", hosts, ice.ufrag, ice.pwd, True, key, MAPPING_DEPENDENT, ice.commit)
    messages += [
        ready.to_message(TID),
        replace(ready, controlling=False, peer_mapping=None, candidates=()).to_message(),
        Message(Method.CP_LEAVE, Class.REQUEST, TID, ((Attr.CP_NAME, text("alice")),)),
    ]
    out: list[bytes] = []
    for msg in messages:
        out.append(encode(msg, fingerprint=True))
        out.append(encode(msg, integrity_key=SIGNAL_KEY, integrity_sha256=True, fingerprint=True))
    return tuple(out)


@cache
def _opus_frames() -> tuple[bytes, ...]:
    try:
        encoder = OpusEncoder()
    except CodecUnavailable:  # no libopus here: payloads of Opus's sizes, TOC bytes in front
        return (b"\x78" + bytes(range(79)), b"\xfc\xff\xfe", b"\x08")
    frames = [encoder.encode(tone(440, i * FRAME_SAMPLES)) for i in range(3)]
    return (*frames, encoder.encode(silence()))


@cache
def _rtp() -> tuple[bytes, ...]:
    """RTP with Opus payloads; CSRCs, a header extension (RFC 8285) and padding added."""
    packets = [
        RtpPacket(OPUS_PAYLOAD_TYPE, 1000 + i, 48_000 + 960 * i, 0x1234_5678, f, marker=i == 0)
        for i, f in enumerate(_opus_frames())
    ]
    out = [bytes(p) for p in packets]
    out.append(bytes(replace(packets[1], csrcs=(1, 2, 3))))
    plain = out[1]
    # Neither our encoder nor Opus makes these two; a peer's stack may.
    extension = struct.pack("!HH", 0xBEDE, 1) + b"\x10\xff\x00\x00"
    out.append(bytes([plain[0] | 0x10]) + plain[1:12] + extension + plain[12:])
    out.append(bytes([plain[0] | 0x20]) + plain[1:] + b"\x00\x00\x00\x04")
    return tuple(out)


@cache
def _rtcp() -> tuple[bytes, ...]:
    """RTCP compounds: SR and RR with report blocks, BYE with and without a reason, SDES."""
    block = ReportBlock(0x1234_5678, 12, -3, 0x0001_0400, 160, 0xABCD_EF01, 0x0000_8000)
    sr = SenderReport(0x9ABC_DEF0, 0xE6A1_2345_6789_ABCD, 96_000, 50, 4_000, (block,))
    rr = ReceiverReport(0x9ABC_DEF0, (block, replace(block, ssrc=7, cumulative_lost=5)))
    bye = Bye((0x9ABC_DEF0,), "hung up")
    chunk = struct.pack("!I", 0x9ABC_DEF0) + b"\x01\x05alice" + b"\x00"
    sdes = struct.pack("!BBH", 0x81, SDES, len(chunk) // 4) + chunk
    return (
        pack_compound([sr]),
        pack_compound([rr]),
        pack_compound([sr, bye]),
        pack_compound([rr, bye]),
        pack_rtcp(Bye((1, 2), "")),
        pack_compound([ReceiverReport(5)]),
        pack_rtcp(sr) + sdes + pack_rtcp(bye),
    )


# -- stateless parsers --------------------------------------------------------------------

_Decoder = Callable[[Message, int, bytes], object]


def _xor(msg: Message, _: int, value: bytes) -> object:
    return decode_xor_address(value, msg.transaction_id)


def _plain(_: Message, __: int, value: bytes) -> object:
    return decode_address(value)


def _error(_: Message, __: int, value: bytes) -> object:
    return decode_error_code(value)


def _candidate(_: Message, __: int, value: bytes) -> object:
    return decode_candidate_untrusted(value)


def _text(msg: Message, atype: int, _: bytes) -> object:
    return msg.text(atype)


def _u32(msg: Message, atype: int, _: bytes) -> object:
    return msg.u32(atype)


def _u64(msg: Message, atype: int, _: bytes) -> object:
    return msg.u64(atype)


DECODERS: dict[int, _Decoder] = {
    **dict.fromkeys(
        (Attr.XOR_MAPPED_ADDRESS, Attr.XOR_PEER_ADDRESS, Attr.XOR_RELAYED_ADDRESS), _xor
    ),
    **dict.fromkeys(
        (
            Attr.MAPPED_ADDRESS,
            Attr.ALTERNATE_SERVER,
            Attr.RESPONSE_ORIGIN,
            Attr.OTHER_ADDRESS,
            Attr.CP_TURN_SERVER,
            SOURCE_ADDRESS,
            CHANGED_ADDRESS,
        ),
        _plain,
    ),
    Attr.ERROR_CODE: _error,
    Attr.CP_CANDIDATE: _candidate,
    **dict.fromkeys(
        (
            Attr.USERNAME,
            Attr.REALM,
            Attr.NONCE,
            Attr.SOFTWARE,
            Attr.CP_NAME,
            Attr.CP_PEER,
            Attr.CP_ROLE,
            Attr.CP_STATUS,
            Attr.CP_TURN_USERNAME,
            Attr.CP_TURN_PASSWORD,
            Attr.CP_NAT_MAPPING,
        ),
        _text,
    ),
    **dict.fromkeys((Attr.LIFETIME, Attr.PRIORITY, Attr.CHANGE_REQUEST), _u32),
    **dict.fromkeys((Attr.ICE_CONTROLLING, Attr.ICE_CONTROLLED), _u64),
}


@target(
    "stun",
    "parse_message_untrusted, then check_integrity, check_fingerprint, unknown_required and "
    "every attribute's decoder (StunError only)",
)
def _stun() -> Target:
    checks, check_keys = _checks()
    turn, rv = _turn_traffic(), _rendezvous_traffic()
    keys = (*check_keys, *rv[1], (turn[1], False), (SIGNAL_KEY, True))
    seeds = [*checks, *_bindings(), *_signals(), *turn[0], *rv[0]]
    seeds = [s for s in seeds if looks_like_stun(s)]

    def feed(data: bytes) -> str:
        msg = parse_message_untrusted(data)
        authentic = any(check_integrity(msg, key) for key, _ in keys)
        fingerprinted = check_fingerprint(msg)
        unknown_required(msg)
        problem = ""
        for atype, value in msg.attributes:
            decode = DECODERS.get(atype)
            if decode is not None:
                try:
                    decode(msg, atype, value)
                except StunError as exc:
                    problem = problem or "; " + kind_of(exc)
        marks = (" authentic" if authentic else "") + (" fingerprinted" if fingerprinted else "")
        return f"parsed{marks}{problem}"

    return Target(seeds, feed, (StunError,), stun=True, keys=keys)


@target(
    "stun_address",
    "decode_address, decode_xor_address, decode_error_code, decode_candidate_untrusted on "
    "attribute values (StunError only)",
)
def _stun_address() -> Target:
    seeds = [
        encode_address(ALICE),
        encode_address(("2001:db8::1", 65535)),
        encode_xor_address(ALICE, TID),
        encode_xor_address(("2001:db8::1", 1), TID),
        encode_error_code(401, "Unauthenticated"),
        encode_error_code(487, "Role Conflict"),
        *(encode_candidate(c) for c in _hosts()),
    ]
    decoders: tuple[tuple[str, Callable[[bytes], object]], ...] = (
        ("address", decode_address),
        ("xor", lambda v: decode_xor_address(v, TID)),
        ("error", decode_error_code),
        ("candidate", decode_candidate_untrusted),
    )

    def feed(data: bytes) -> str:
        outcomes = []
        for name, decode in decoders:
            try:
                decode(data)
            except StunError as exc:
                outcomes.append(f"{name}: {kind_of(exc)}")
        return " / ".join(outcomes) or "all decoded"

    return Target(seeds, feed, (StunError,))


@target("channel_data", "parse_channel_data_untrusted, RFC 8656 and legacy (ChannelDataError)")
def _channel_data() -> Target:
    seeds = [
        pack_channel_data(0x4000, _rtp()[0]),
        pack_channel_data(0x4FFF, _checks()[0][0]),
        pack_channel_data(0x7FFE, b""),
        pack_channel_data(0x4001, _rtcp()[2]) + b"\x00\x00",  # padded to 4, as RFC 8656 allows
    ]

    def feed(data: bytes) -> str:
        with contextlib.suppress(ChannelDataError):
            parse_channel_data_untrusted(data, legacy=True)
        channel, _ = parse_channel_data_untrusted(data)
        return "parsed, legacy channel" if channel > CHANNEL_MAX else "parsed"

    return Target(seeds, feed, (ChannelDataError,))


@target("rtp", "parse_rtp_untrusted (RtpError only)")
def _rtp_target() -> Target:
    def feed(data: bytes) -> str:
        parse_rtp_untrusted(data)
        return "parsed"

    return Target(list(_rtp()), feed, (RtpError,), tokens=(b"\xbe\xde", b"\x10\x00"))


@target("rtcp", "parse_rtcp_untrusted (RtcpError only)")
def _rtcp_target() -> Target:
    def feed(data: bytes) -> str:
        return f"parsed {len(parse_rtcp_untrusted(data))} packets"

    return Target(list(_rtcp()), feed, (RtcpError,))


@target(
    "signal",
    "Register.from_message_untrusted and PeerReady.from_message_untrusted on parsed messages "
    "(StunError only)",
)
def _signal() -> Target:
    seeds = [*_signals(), *_rendezvous_traffic()[0]]

    def feed(data: bytes) -> str:
        msg = parse_message_untrusted(data)
        outcomes: dict[int, str] = {}
        for method, parse in (
            (Method.CP_REGISTER, Register.from_message_untrusted),
            (Method.CP_PEER_READY, PeerReady.from_message_untrusted),
        ):
            try:
                parse(msg)
                outcomes[method] = f"{Method(method).name} read"
            except StunError as exc:
                outcomes[method] = kind_of(exc)
        return outcomes.get(msg.method, outcomes[Method.CP_REGISTER])

    return Target(seeds, feed, (StunError,), stun=True, keys=((SIGNAL_KEY, True),))


@target("srtp", "MediaCipher.unprotect_untrusted, SRTP and SRTCP (never raises)")
def _srtp() -> Target:
    ours_key, theirs_key = bytes(range(28)), bytes(range(100, 128))
    ours, theirs = MediaCipher(ours_key, theirs_key), MediaCipher(theirs_key, ours_key)
    seeds = []
    for i, packet in enumerate((*_rtp(), *_rtcp())):
        plain = packet if is_rtcp(packet) else packet[:2] + struct.pack("!H", i) + packet[4:]
        sealed = theirs.protect(plain)
        if sealed is not None:
            seeds.append(sealed)

    def feed(data: bytes) -> str:
        return "rejected" if ours.unprotect_untrusted(data) is None else "plain"

    return Target(seeds, feed)


# -- the key exchange ---------------------------------------------------------------------

LOW_ORDER_POINTS = tuple(
    bytes.fromhex(h)
    for h in (
        "00" * 32,
        "01" + "00" * 31,
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
        "ec" + "ff" * 30 + "7f",
        "ed" + "ff" * 30 + "7f",
        "ee" + "ff" * 30 + "7f",
    )
)
PROLOGUE = b"callpeer media v1\x00alice\x00bob"


@dataclass(frozen=True)
class _NoiseKeys:
    initiator: X25519PrivateKey
    responder: X25519PrivateKey
    initiator_e: X25519PrivateKey
    responder_e: X25519PrivateKey


@cache
def _noise_keys() -> _NoiseKeys:
    return _NoiseKeys(*(X25519PrivateKey.generate() for _ in range(4)))


def _noise(initiator: bool) -> NoiseXX:
    k = _noise_keys()
    static, e = (k.initiator, k.initiator_e) if initiator else (k.responder, k.responder_e)
    return NoiseXX(initiator, static, PROLOGUE, ephemeral=e, empty_payloads=True)


@cache
def _noise_messages() -> tuple[bytes, bytes, bytes]:
    """msg1, msg2 and msg3 of one XX handshake between the fixed keys (so always the same)."""
    i, r = _noise(True), _noise(False)
    msg1 = i.write_message()
    r.read_message_untrusted(msg1)
    msg2 = r.write_message()
    i.read_message_untrusted(msg2)
    return msg1, msg2, i.write_message()


def _noise_target(expect: int) -> Target:
    messages = _noise_messages()

    def fresh() -> NoiseXX:
        if expect == 1:
            return _noise(False)
        if expect == 2:
            state = _noise(True)
            state.write_message()
            return state
        state = _noise(False)
        state.read_message_untrusted(messages[0])
        state.write_message()
        return state

    state = [fresh()]

    def feed(data: bytes) -> str:
        payload = state[0].read_message_untrusted(data)
        state[0] = fresh()  # it moved on: back to expecting this message
        return f"read, {len(payload)} bytes of payload"

    seeds = [messages[expect - 1], *messages]
    tokens = (*LOW_ORDER_POINTS, messages[0][:32], messages[1][:32])
    return Target(seeds, feed, (NoiseError,), tokens=tokens)


@target("noise_msg1", "NoiseXX.read_message_untrusted, responder reading msg1 (NoiseError)")
def _noise1() -> Target:
    return _noise_target(1)


@target("noise_msg2", "NoiseXX.read_message_untrusted, initiator reading msg2 (NoiseError)")
def _noise2() -> Target:
    return _noise_target(2)


@target("noise_msg3", "NoiseXX.read_message_untrusted, responder reading msg3 (NoiseError)")
def _noise3() -> Target:
    return _noise_target(3)


def _accept(_: bytes) -> str | None:
    return None


@target(
    "handshake",
    "MediaHandshake.handle_untrusted, initiator awaiting msg2 and responder holding a session "
    "(never raises)",
)
def _handshake() -> Target:
    k = _noise_keys()
    msg1, msg2, msg3 = _noise_messages()

    def side(initiator: bool) -> MediaHandshake:
        static, e, peer_e = (
            (k.initiator, k.initiator_e, k.responder_e)
            if initiator
            else (k.responder, k.responder_e, k.initiator_e)
        )
        return MediaHandshake(
            initiator, static, PROLOGUE, _accept, ephemeral=e, peer_commitment=commitment(peer_e)
        )

    def initiator() -> MediaHandshake:
        hs = side(True)
        hs.start(0.0)
        return hs

    def responder() -> MediaHandshake:
        hs = side(False)
        hs.handle_untrusted(frame(1, msg1), 0.0)  # a session, for msg3s to be tried against
        return hs

    sides = {True: initiator(), False: responder()}

    def feed(data: bytes) -> str:
        is_initiator = len(data) > 1 and data[1] == 2
        hs = sides[is_initiator]
        rejected = hs.rejected
        out = hs.handle_untrusted(data, 1.0)
        if hs.done:
            sides[is_initiator] = initiator() if is_initiator else responder()
            return "completed" if hs.result is not None else "failed"
        if out:
            return f"answered with {len(out)}"
        return "rejected" if hs.rejected > rejected else "ignored"

    seeds = [frame(1, msg1), frame(2, msg2), frame(3, msg3)]
    return Target(seeds, feed, tokens=(*LOW_ORDER_POINTS, bytes((16, 1, 0, 0))))


# -- the relay and the rendezvous ---------------------------------------------------------


class _Ports:
    """Relayed addresses for the TurnServer, without sockets."""

    def __init__(self) -> None:
        self.next = 49152

    def open(self) -> Address | None:
        self.next += 1
        return ("203.0.113.20", self.next)

    def close(self, relayed: Address) -> None:
        pass


@dataclass
class TurnScenario:
    server: TurnServer
    clients: tuple[TurnClient, TurnClient]  # allocated, and still allocating: answers pending
    to_server: list[bytes]
    to_client: list[bytes]
    key: bytes
    relayed: Address
    now: float


def turn_scenario() -> TurnScenario:
    """A TURN client and our relay through Allocate (401 first), CreatePermission, ChannelBind,
    ChannelData, Send and Data indications; then at the refresh time, requests whose answers
    are kept from the client (so fuzzed answers find transactions to match): Refresh,
    CreatePermission (one refused 403, one answered 438 later), ChannelBind, and a second
    client's Allocate, challenged and then answered."""
    wall = time.time()
    policy = TurnPolicy(secret=TURN_SECRET, allowed_peers=[INTERNET])
    server = TurnServer(_Ports(), policy, wallclock=wall)
    username, password = rest_credentials(TURN_SECRET, "alice", wall)
    alice, carol = TurnClient(SERVER, username, password), TurnClient(SERVER, username, password)
    to_server: list[bytes] = []
    to_client: list[bytes] = []

    def deliver(
        sent: list[Transmit], now: float, src: Address, client: TurnClient | None
    ) -> list[Out]:
        queue, answers = list(sent), []
        while queue:
            data, _ = queue.pop(0)
            to_server.append(data)
            if looks_like_channel_data(data):
                outs = server.handle_channel_data(data, src, now)
            else:
                outs = server.handle_request(parse_message_untrusted(data), data, src, now)
            for out in outs:
                if out.via is not None:
                    continue  # relayed to a peer
                to_client.append(out.data)
                answers.append(out)
                if client is not None:
                    queue += client.handle(parse_message_untrusted(out.data), SERVER, now) or []
        return answers

    deliver(alice.start(0.0), 0.0, CLIENT, alice)
    deliver(alice.permit([PEER[0]], 0.0), 0.0, CLIENT, alice)
    deliver(alice.bind_channel(PEER, 0.0), 0.0, CLIENT, alice)
    assert alice.relayed is not None and alice.key is not None and PEER in alice.channels
    relayed = alice.relayed
    deliver([alice.wrap(_rtp()[0], PEER)], 0.0, CLIENT, None)  # ChannelData
    deliver([alice.wrap(_rtp()[1], ("203.0.113.3", 5000))], 0.0, CLIENT, None)  # Send
    for peer in (PEER, (PEER[0], PEER[1] + 1)):  # ChannelData, then a Data indication
        to_client += [o.data for o in server.handle_peer(_rtp()[2], relayed, peer, 0.0)]
    now = 540.0  # the client refreshes all three now
    pending = alice.poll(now)
    pending += alice.permit(["203.0.113.3", "198.18.0.9"], now)  # the second refused: 403
    pending += alice.bind_channel(("203.0.113.3", 5000), now)
    deliver(pending, now, CLIENT, None)
    stale = pending[-2][0]  # past the nonce's lifetime, the same request is answered 438
    to_client += [
        o.data
        for o in server.handle_request(parse_message_untrusted(stale), stale, CLIENT, now + 700)
    ]
    [challenge] = deliver(carol.start(now), now, CLIENT2, None)
    deliver(
        carol.handle(parse_message_untrusted(challenge.data), SERVER, now) or [], now, CLIENT2, None
    )
    return TurnScenario(server, (alice, carol), to_server, to_client, alice.key, relayed, now)


@cache
def _turn_traffic() -> tuple[tuple[bytes, ...], bytes]:
    turn = turn_scenario()
    return (*turn.to_server, *turn.to_client), turn.key


@target(
    "turn_client",
    "TurnClient.unwrap_channel, handle and unwrap, as the connector calls them, with "
    "transactions pending (never raises)",
)
def _turn_client() -> Target:
    turn = turn_scenario()
    snapshot = pickle.dumps(turn.clients)
    state = [turn.clients]

    def feed(data: bytes) -> str:
        alice, carol = state[0]
        if looks_like_channel_data(data):
            return "channel data" if alice.unwrap_channel(data, SERVER) else "dropped"
        if not looks_like_stun(data):
            return "not STUN"
        try:
            msg = parse_message_untrusted(data)
        except StunError:  # the connector counts it malformed
            return "malformed"
        for client in (alice, carol):
            try:
                answered = client.handle(msg, SERVER, turn.now)
            except Exception:
                state[0] = pickle.loads(snapshot)
                raise
            if answered is not None:  # it matched a transaction: back to all pending
                events = ",".join(type(e).__name__ for e in client.pop_events())
                state[0] = pickle.loads(snapshot)
                return f"answer, {len(answered)} sent, events: {events or 'none'}"
        return "data indication" if alice.unwrap(msg, SERVER) is not None else "ignored"

    seeds = [*turn.to_client, *_turn_traffic()[0]]
    return Target(seeds, feed, stun=True, keys=((turn.key, False),))


@target(
    "turn_server",
    "TurnServer.handle_request, handle_channel_data and handle_peer with an allocation, "
    "permission and channel in place (never raises)",
)
def _turn_server() -> Target:
    turn = turn_scenario()
    server = turn.server

    def feed(data: bytes) -> str:
        before = dict(server.stats)
        if looks_like_channel_data(data, legacy=True):
            outs = server.handle_channel_data(data, CLIENT, turn.now)
        elif looks_like_stun(data):
            try:
                msg = parse_message_untrusted(data)
            except StunError as exc:
                return kind_of(exc)
            if msg.method not in TURN_METHODS:
                return "not TURN"
            outs = server.handle_request(msg, data, CLIENT, turn.now)
        else:  # what a peer sends to the relayed address
            outs = server.handle_peer(data, turn.relayed, PEER, turn.now)
        return _changed(server.stats, before, len(outs))

    return Target(
        [*turn.to_server, _rtp()[0]],
        feed,
        stun=True,
        keys=((turn.key, False),),
        reset_every=RESET_EVERY,
    )


@dataclass
class _Rendezvous:
    logic: RendezvousLogic
    to_server: list[tuple[bytes, Address]]
    to_client: list[bytes]
    keys: tuple[Key, ...]
    now: float


def _rendezvous(now: float = 1.0) -> _Rendezvous:
    """Two clients register, each asking for the other, are introduced and acknowledge; then
    one leaves (kept from the server, which would free the name)."""
    logic = RendezvousLogic(
        relay=RelayOffer(SERVER, TURN_SECRET), addresses=Addresses(SERVER, ALTERNATE)
    )
    hosts_a = (Candidate.make(CandidateType.HOST, ("198.18.1.2", 5000)),)
    hosts_b = (Candidate.make(CandidateType.HOST, ("2001:db8::7", 6000)),)
    clients = {
        ALICE: RendezvousClient("alice", "bob", SERVER, hosts_a),
        BOB: RendezvousClient("bob", "alice", SERVER, hosts_b),
    }
    to_server: list[tuple[bytes, Address]] = []
    to_client: list[bytes] = []
    queue = [(data, src) for src, c in clients.items() for data, _ in c.start(now)]
    while queue:
        data, src = queue.pop(0)
        to_server.append((data, src))
        for out, dest in logic.handle_datagram(data, src, now):
            to_client.append(out)
            answered = clients[dest].handle(parse_message_untrusted(out), SERVER, now) or []
            queue += [(d, dest) for d, _ in answered]
    assert all(c.peer_ready is not None for c in clients.values()), "no introduction"
    to_server.append((clients[ALICE].leave(now)[0][0], ALICE))
    to_server += [(b, ALICE) for b in _bindings()]
    keys = tuple(
        (
            RegistrationKeyPair(c.identity.private).agree_untrusted(
                logic.keys.public, we_are_client=True
            ),
            True,
        )
        for c in clients.values()
    )
    return _Rendezvous(logic, to_server, to_client, keys, now)


@cache
def _rendezvous_traffic() -> tuple[tuple[bytes, ...], tuple[Key, ...]]:
    rv = _rendezvous()
    return (*(d for d, _ in rv.to_server), *rv.to_client), rv.keys


def _source(sources: dict[bytes, Address], data: bytes, choices: Sequence[Address]) -> Address:
    """Where a seed came from; for a mutation, one of `choices` picked by its bytes."""
    found = sources.get(data)
    return found if found is not None else choices[zlib.crc32(data) % len(choices)]


@target(
    "rendezvous",
    "RendezvousLogic.handle_datagram, with two callers registered and introduced (never raises)",
)
def _rendezvous_target() -> Target:
    rv = _rendezvous()
    logic, sources = rv.logic, dict(rv.to_server)

    def feed(data: bytes) -> str:
        before = dict(logic.stats)
        out = logic.handle_datagram(data, _source(sources, data, (ALICE, BOB)), rv.now)
        return _changed(logic.stats, before, len(out))

    seeds = [d for d, _ in rv.to_server] + rv.to_client + list(_signals())
    return Target(seeds, feed, stun=True, keys=rv.keys, reset_every=RESET_EVERY)


@target(
    "rendezvous_node",
    "RendezvousNode.handle on each of its four addresses, with the rendezvous and relay "
    "behind it (never raises)",
)
def _node() -> Target:
    turn = turn_scenario()
    rv = _rendezvous(turn.now)
    node = RendezvousNode(rv.logic, turn.server, SERVER)
    local_addresses = Addresses(SERVER, ALTERNATE).all()
    sources = dict(rv.to_server) | dict.fromkeys(turn.to_server, CLIENT)

    def feed(data: bytes) -> str:
        src = _source(sources, data, (ALICE, BOB, CLIENT, CLIENT2))
        pick = zlib.crc32(data)
        local = SERVER if pick & 0x30 else local_addresses[(pick >> 6) % len(local_addresses)]
        before = dict(rv.logic.stats) | {"turn " + k: v for k, v in turn.server.stats.items()}
        outs = node.handle(data, src, local, turn.now)
        after = Counter(rv.logic.stats)
        after.update({"turn " + k: v for k, v in turn.server.stats.items()})
        return _changed(after, before, len(outs))

    seeds = [d for d, _ in rv.to_server] + turn.to_server + rv.to_client
    keys = (*rv.keys, (turn.key, False))
    return Target(seeds, feed, stun=True, keys=keys, reset_every=RESET_EVERY)


# -- a connected call ---------------------------------------------------------------------

ALICE_HOST: Address = ("198.51.100.21", 5000)
BOB_HOST: Address = ("198.51.100.22", 6000)


class _Host(Protocol):
    def handle(self, data: bytes, src: Address, now: float) -> list[Transmit]: ...
    def poll(self, now: float) -> list[Transmit]: ...
    def next_deadline(self) -> float | None: ...


class _ServerHost:
    """The rendezvous (no relay) as a host of the simulated internet."""

    def __init__(self) -> None:
        self.node = RendezvousNode(RendezvousLogic(), None, SERVER)

    def handle(self, data: bytes, src: Address, now: float) -> list[Transmit]:
        return [(o.data, o.dest) for o in self.node.handle(data, src, SERVER, now)]

    def poll(self, now: float) -> list[Transmit]:
        return [(o.data, o.dest) for o in self.node.poll(now)]

    def next_deadline(self) -> float | None:
        return self.node.next_deadline()


@dataclass
class _Call:
    alice: CallCore
    bob: CallCore
    server: _ServerHost
    sent: list[tuple[bytes, Address, Address]]  # (data, src, dst), all that crossed the net
    now: float


def _call(seconds: float = 1.0) -> _Call:
    """Alice and Bob, on public addresses, call each other through the rendezvous: registered,
    introduced, checks, key exchange, then audio until `seconds` of simulated time."""

    def core(name: str, peer: str, addr: Address, hz: float) -> CallCore:
        hosts = (Candidate.make(CandidateType.HOST, addr),)
        return CallCore(
            name, peer, SERVER, hosts, source=ToneSource(hz), sink=NullSink(), options=CallOptions()
        )

    alice, bob, server = (
        core("alice", "bob", ALICE_HOST, 440),
        core("bob", "alice", BOB_HOST, 660),
        _ServerHost(),
    )
    hosts: dict[Address, _Host] = {ALICE_HOST: alice, BOB_HOST: bob, SERVER: server}
    sent: list[tuple[bytes, Address, Address]] = []
    queue: list[tuple[float, int, bytes, Address, Address]] = []
    order = itertools.count()

    def send(src: Address, datagrams: list[Transmit], now: float) -> None:
        for data, dst in datagrams:
            sent.append((data, src, dst))
            heapq.heappush(queue, (now + 0.005, next(order), data, src, dst))

    send(ALICE_HOST, alice.start(0.0), 0.0)
    send(BOB_HOST, bob.start(0.0), 0.0)
    now, end = 0.0, seconds
    while now < end:
        timers = [(d, a) for a, h in hosts.items() if (d := h.next_deadline()) is not None]
        due, who = min(timers, default=(end, SERVER))
        arrives = queue[0][0] if queue else end
        now = max(now, min(due, arrives, end))
        if queue and arrives <= due and arrives <= end:
            _, _, data, src, dst = heapq.heappop(queue)
            if (host := hosts.get(dst)) is not None:
                send(dst, host.handle(data, src, now), now)
        elif due <= end and timers:
            send(who, hosts[who].poll(now), now)
        else:
            break
    if not (alice.connected and bob.connected):
        raise RuntimeError(f"the simulated call did not connect: {alice.failure or bob.failure}")
    return _Call(alice, bob, server, sent, now)


def _call_keys(call: _Call) -> tuple[Key, ...]:
    """What signs what Alice receives: her ICE password (checks to her) and the key she
    agreed with the rendezvous (its answers and PEER-READY)."""
    signal = call.alice.connector.signal
    server_key = call.server.node.logic.keys.public
    agreed = RegistrationKeyPair(signal.identity.private).agree_untrusted(
        server_key, we_are_client=True
    )
    return ((signal.ice.pwd.encode(), False), (agreed, True))


WHAT_CALL_DROPS = ("malformed STUN", "SRTP rejected", "handshake rejected")


@target(
    "call_core",
    "CallCore.handle of a connected call: every datagram it was sent, mutated, from Bob's "
    "address or the rendezvous's (never raises)",
)
def _call_core() -> Target:
    call = _call()
    to_alice = [(d, src) for d, src, dst in call.sent if dst == ALICE_HOST]
    sources = dict(to_alice)

    alice, secure = call.alice, call.alice.secure
    assert secure is not None and secure.cipher is not None
    cipher, handshake = secure.cipher, secure.handshake

    def feed(data: bytes) -> str:
        src = _source(sources, data, (BOB_HOST, BOB_HOST, SERVER))
        counts = (alice.connector.malformed, cipher.rejected, handshake.rejected)
        out = alice.handle(data, src, call.now)
        now = (alice.connector.malformed, cipher.rejected, handshake.rejected)
        what = [w for w, a, b in zip(WHAT_CALL_DROPS, counts, now, strict=True) if a != b]
        ended = ", ended" if alice.done else ""
        return f"{' '.join(what) or 'taken'}, {len(out)} sent{ended}"

    return Target(
        [d for d, _ in to_alice],
        feed,
        stun=True,
        keys=_call_keys(call),
        reset_every=RESET_EVERY,
    )


@target(
    "call_media",
    "CallCore.handle and poll of a connected call given mutated RTP and RTCP sealed with Bob's "
    "SRTP key, so they reach the jitter buffer, Opus and RTCP (never raises)",
)
def _call_media() -> Target:
    call = _call()
    assert call.alice.secure is not None and call.bob.secure is not None
    alice_keys, bob_keys = call.alice.secure.result, call.bob.secure.result
    assert alice_keys is not None and bob_keys is not None
    # Bob's packets as he sent them: Alice's keys in a fresh context open them again.
    opener = MediaCipher(alice_keys.local_srtp, alice_keys.remote_srtp)
    plain = [
        p
        for d, src, dst in call.sent
        if src == BOB_HOST and dst == ALICE_HOST and looks_like_rtp_or_rtcp(d)
        if (p := opener.unprotect_untrusted(d)) is not None
    ]
    sealer = MediaCipher(bob_keys.local_srtp, bob_keys.remote_srtp)
    # Each input gets the next sequence number, so none is a replay.
    seq = [max((int.from_bytes(p[2:4], "big") for p in plain if not is_rtcp(p)), default=0)]
    clock = [call.now, 0]

    def feed(data: bytes) -> str:
        packet = bytearray(data)
        if len(packet) >= 4 and not is_rtcp(data):
            seq[0] = (seq[0] + 1) & 0xFFFF
            packet[2:4] = seq[0].to_bytes(2, "big")
        sealed = sealer.protect(bytes(packet))
        if sealed is None:
            return "libsrtp would not seal it"
        audio = call.alice.audio
        before = (audio.counts.packets_malformed, audio.rtcp.malformed, audio.rx.received)
        out = call.alice.handle(sealed, BOB_HOST, clock[0])
        after = (audio.counts.packets_malformed, audio.rtcp.malformed, audio.rx.received)
        clock[1] += 1
        if clock[1] % 25 == 0:  # 20 ms on: the jitter buffer plays out, Opus decodes
            clock[0] += 0.02
            call.alice.poll(clock[0])
        if is_rtcp(data):
            what = "rtcp malformed" if after[1] != before[1] else "rtcp read"
        elif after[0] != before[0]:
            what = "rtp malformed"
        else:
            what = "rtp taken" if after[2] != before[2] else "rtp not this stream's"
        return f"{what}, {len(out)} sent" + (", ended" if call.alice.done else "")

    return Target(plain or list(_rtp()), feed, reset_every=RESET_EVERY // 4)


# -- the command --------------------------------------------------------------------------


def _kinds(result: Result, verbose: bool) -> list[str]:
    shown = result.outcomes.most_common(None if verbose else 6)
    lines = [f"{result.name}: {len(result.outcomes)} outcome kinds"]
    for kind, count in shown:
        lines.append(f"  {100 * count / result.inputs:5.1f}%  {kind}")
    if len(shown) < len(result.outcomes):
        lines.append(f"  ... and {len(result.outcomes) - len(shown)} more (-v lists them)")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--inputs", type=int, default=DEFAULT_INPUTS, help="inputs per target")
    parser.add_argument("--seed", type=int, default=1, help="the mutations' random seed")
    parser.add_argument("--only", help="comma-separated targets (see --list)")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    parser.add_argument("--replay", metavar="HEX", help="feed one input to the --only target")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every outcome kind")
    args = parser.parse_args(argv)
    if args.list:
        for spec in TARGETS.values():
            print(f"{spec.name:<16} {spec.about}")
        return 0
    names = args.only.split(",") if args.only else list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; --list shows them")
    if args.replay is not None:
        if len(names) != 1:
            parser.error("--replay needs one --only target")
        return replay(TARGETS[names[0]], bytes.fromhex(args.replay))

    print(f"fuzzing {len(names)} targets, {args.inputs:,} inputs each, seed {args.seed}")
    header = f"{'target':<16} {'inputs':>10} {'inputs/s':>9} {'kinds':>6} {'slowest':>9}"
    print(f"{header} {'builds':>7} {'escapes':>8}", flush=True)
    results = []
    for name in names:
        r = run_target(TARGETS[name], args.inputs, args.seed)
        results.append(r)
        row = f"{r.name:<16} {r.inputs:>10,} {r.rate:>9,.0f} {len(r.outcomes):>6}"
        print(f"{row} {r.slowest * 1000:>7.1f}ms {r.builds:>7} {r.escaped:>8}", flush=True)
    total = sum(r.seconds for r in results)
    print(f"{sum(r.inputs for r in results):,} inputs in {total:.1f} s")
    print()
    for r in results:
        print("\n".join(_kinds(r, args.verbose)))
    escaped = [r for r in results if r.escapes]
    for r in escaped:
        print()
        print(r.describe_escapes())
    if escaped:
        print(f"\nESCAPES in {', '.join(r.name for r in escaped)}")
        return 1
    print("\nno escapes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
