"""Call quality as MOS from the ITU-T G.107 E-model (narrowband rating scale).

R = R0 - Is - Id - Ie,eff + A, with G.107's default R0 - Is = 93.2 and advantage A = 0, so
R = 93.2 - Id - Ie,eff.

Id: Cole & Rosenbluth's fit to G.107's delay impairment at default parameters (ACM SIGCOMM CCR
31(2), 2001): Id = 0.024 d + 0.11 (d - 177.3) H(d - 177.3), d the mouth-to-ear delay in ms. It
keeps the talker-echo part of Id that G.107's Idd term alone (zero below 100 ms) leaves out, so
a longer path costs something even when it is short.

Ie,eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl) (G.107 §7.5). G.113 tabulates no Opus
values; we use its Appendix I figures for G.711 with packet-loss concealment (Ie = 0,
Bpl = 25.1) as a stand-in: Opus at 32 kb/s is at least that clean, and its concealment at least
that robust, so the figure errs low rather than high. Loss is taken as random (BurstR = 1).

MOS = 1 + 0.035 R + 7e-6 R (R - 60)(100 - R) for 0 < R < 100 (G.107 Annex B).
"""

from __future__ import annotations

R_DEFAULT = 93.2  # G.107 §7.7: R0 - Is with all default parameters
IE_CODEC = 0.0  # G.113 Appendix I, G.711 (stand-in for Opus, see above)
BPL_CODEC = 25.1  # G.113 Appendix I, G.711 with PLC
OPUS_ALGORITHMIC_DELAY_MS = 26.5  # 20 ms frame + 6.5 ms lookahead (libopus OPUS_GET_LOOKAHEAD)


def delay_impairment(one_way_ms: float) -> float:
    d = max(0.0, one_way_ms)
    return 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)


def effective_equipment_impairment(
    loss_pct: float, ie: float = IE_CODEC, bpl: float = BPL_CODEC, burst_r: float = 1.0
) -> float:
    ppl = max(0.0, min(100.0, loss_pct))
    return ie + (95.0 - ie) * ppl / (ppl / burst_r + bpl)


def r_factor(one_way_ms: float, loss_pct: float) -> float:
    return R_DEFAULT - delay_impairment(one_way_ms) - effective_equipment_impairment(loss_pct)


def mos_from_r(r: float) -> float:
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    return 1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r)


def mos(
    network_one_way_ms: float,
    loss_pct: float,
    jitter_buffer_ms: float,
    codec_delay_ms: float = OPUS_ALGORITHMIC_DELAY_MS,
) -> float:
    """MOS for a path: effective delay = network one way + jitter buffer + codec (G.107 Ta)."""
    effective = network_one_way_ms + jitter_buffer_ms + codec_delay_ms
    return round(mos_from_r(r_factor(effective, loss_pct)), 2)
