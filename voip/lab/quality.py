"""Objective speech quality of what was heard against what was sent: PESQ (ITU-T P.862.2,
wideband) and STOI, after aligning the two recordings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import correlate
from scipy.signal import resample_poly

from voip.codecs.pcm import SAMPLE_RATE
from voip.codecs.pcm import Pcm


@dataclass(frozen=True)
class Quality:
    pesq_wb: float  # MOS-LQO, 1.0-4.64
    stoi: float  # 0-1
    offset_ms: float  # how much later the received recording is


def align(reference: Pcm, degraded: Pcm) -> tuple[np.ndarray, np.ndarray, int]:
    """The two signals cut to where they overlap, the received one shifted by the lag that
    correlates them best (found by FFT cross-correlation)."""
    ref = reference.astype(np.float64)
    deg = degraded.astype(np.float64)
    lag = int(np.argmax(correlate(deg, ref, mode="full", method="fft"))) - (len(ref) - 1)
    if lag >= 0:
        deg = deg[lag:]
    else:
        ref = ref[-lag:]
    n = min(len(ref), len(deg))
    return ref[:n], deg[:n], lag


def score(reference: Pcm, degraded: Pcm) -> Quality:
    from pesq import pesq  # noqa: PLC0415 - optional, compiled: only the quality bench needs it
    from pystoi import stoi  # noqa: PLC0415

    ref, deg, lag = align(reference, degraded)
    ref16 = resample_poly(ref, 1, 3) / 32768.0  # P.862.2 wants 16 kHz
    deg16 = resample_poly(deg, 1, 3) / 32768.0
    return Quality(
        pesq_wb=float(pesq(16_000, ref16, deg16, "wb")),
        stoi=float(stoi(ref16, deg16, 16_000, extended=False)),
        offset_ms=1000.0 * lag / SAMPLE_RATE,
    )
