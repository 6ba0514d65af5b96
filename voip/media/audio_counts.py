"""What happened to a call's audio frames, counted as they are sent, received and played."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field


@dataclass
class AudioCounts:
    frames_sent: int = 0
    frames_not_sent: int = 0  # DTX: silence that needed no packet
    frames_comfort: int = 0  # DTX silence played as comfort noise, not counted as concealed
    frames_received: int = 0  # decoded from packets that arrived in time
    frames_concealed: int = 0  # missing frames filled by Opus PLC
    # Missing frames decoded from the next packet's in-band FEC (LBRR). libopus 1.3 cannot say
    # whether a packet carries LBRR (opus_packet_has_lbrr is 1.5), so this counts decodes: one
    # from a packet without LBRR comes out as concealment.
    frames_recovered: int = 0
    frames_late: int = 0  # arrived after their playout time
    frames_expanded: int = 0  # of the concealed: stretched while the buffer grew
    concealed_at: list[float] = field(default_factory=list)  # call time of each concealment
    peer_loss_pct: float | None = None  # what the peer last reported losing of our audio
    longest_gap_ms: float = 0.0  # the longest run of concealed audio a listener heard
    packets_malformed: int = 0
