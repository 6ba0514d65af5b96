"""RTP sender state and receiver statistics, sans-IO (RFC 3550 §6.4, Appendix A.1, A.3, A.8)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from dataclasses import field

from voip.wire.rtp import OPUS_CLOCK_RATE
from voip.wire.rtp import OPUS_PAYLOAD_TYPE
from voip.wire.rtp import RtpPacket

RTP_SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000  # A.1: a jump larger than this is a restart, not loss
MAX_MISORDER = 100


@dataclass
class RtpSender:
    """Numbers outgoing frames: random SSRC, sequence and timestamp start (§5.1), wrapping."""

    payload_type: int = OPUS_PAYLOAD_TYPE
    ssrc: int = field(default_factory=lambda: secrets.randbits(32))
    sequence: int = field(default_factory=lambda: secrets.randbits(16))
    timestamp: int = field(default_factory=lambda: secrets.randbits(32))
    packet_count: int = 0
    octet_count: int = 0

    def skip(self, samples: int) -> None:
        """A frame not sent (DTX): the clock moves on, the sequence does not (RFC 3550 §5.1)."""
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF

    def packetize(self, payload: bytes, samples: int, marker: bool = False) -> RtpPacket:
        pkt = RtpPacket(
            self.payload_type, self.sequence, self.timestamp, self.ssrc, payload, marker
        )
        self.sequence = (self.sequence + 1) % RTP_SEQ_MOD
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF
        self.packet_count += 1
        self.octet_count += len(payload)
        return pkt


@dataclass
class RtpReceiverStats:
    """What we saw of one incoming stream: extended sequence, loss, interarrival jitter."""

    clock_rate: int = OPUS_CLOCK_RATE
    ssrc: int | None = None
    base_seq: int = 0
    max_seq: int = 0
    cycles: int = 0
    received: int = 0
    duplicates_or_late: int = 0
    jitter: float = 0.0  # in timestamp units, J += (|D| - J) / 16
    _transit: float | None = None
    _expected_prior: int = 0
    _received_prior: int = 0
    _bad_seq: int = RTP_SEQ_MOD + 1

    def update(self, pkt: RtpPacket, arrival: float) -> int | None:
        """Account for a packet; returns its extended sequence number, or None if it is ignored."""
        seq = pkt.sequence
        if self.ssrc is None:
            self.ssrc = pkt.ssrc
            self.base_seq = self.max_seq = seq
            self._bad_seq = RTP_SEQ_MOD + 1
        elif pkt.ssrc != self.ssrc:
            return None
        else:
            udelta = (seq - self.max_seq) % RTP_SEQ_MOD
            if 0 < udelta < MAX_DROPOUT:
                if seq < self.max_seq:
                    self.cycles += RTP_SEQ_MOD  # wrapped around
                self.max_seq = seq
            elif udelta == 0 or udelta > RTP_SEQ_MOD - MAX_MISORDER:
                # duplicate or reordered: counted as received (A.3 semantics), not a new maximum
                if udelta == 0:
                    self.duplicates_or_late += 1
            elif seq == self._bad_seq:
                self.base_seq = self.max_seq = seq
                self.cycles = 0
                self.received = 0
                self._expected_prior = self._received_prior = 0
                self._transit = None
            else:
                self._bad_seq = (seq + 1) % RTP_SEQ_MOD
                return None
        self.received += 1
        self._update_jitter(pkt.timestamp, arrival)
        return self.extended_seq_of(seq)

    def extended_seq_of(self, seq: int) -> int:
        ext = self.cycles + seq
        if seq > self.max_seq and seq - self.max_seq > RTP_SEQ_MOD // 2:
            ext -= RTP_SEQ_MOD  # a late packet from before the last wrap
        return ext

    def _update_jitter(self, rtp_ts: int, arrival: float) -> None:
        transit = arrival * self.clock_rate - rtp_ts
        if self._transit is not None:
            d = transit - self._transit
            # The timestamp is 32 bits; a wrap shows as a jump of 2^32 units.
            if d > 2**31:
                d -= 2**32
            elif d < -(2**31):
                d += 2**32
            self.jitter += (abs(d) - self.jitter) / 16.0
        self._transit = transit

    @property
    def extended_max(self) -> int:
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        return 0 if self.ssrc is None else self.extended_max - self.base_seq + 1

    @property
    def lost(self) -> int:
        return self.expected - self.received

    @property
    def loss_pct(self) -> float:
        expected = self.expected
        return 0.0 if expected <= 0 else max(0.0, 100.0 * self.lost / expected)

    @property
    def jitter_ms(self) -> float:
        return 1000.0 * self.jitter / self.clock_rate

    def interval_fraction_lost(self) -> int:
        """Fraction lost since the last call, of 256 (A.3); advances the interval."""
        expected = self.expected
        exp_int = expected - self._expected_prior
        rec_int = self.received - self._received_prior
        self._expected_prior, self._received_prior = expected, self.received
        lost_int = exp_int - rec_int
        return 0 if exp_int <= 0 or lost_int <= 0 else min(255, (lost_int << 8) // exp_int)
