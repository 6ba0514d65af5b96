"""PCM helpers: the call's audio format, tones, resampling and frequency analysis (numpy)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 48_000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 960
Pcm = npt.NDArray[np.int16]


def silence(samples: int = FRAME_SAMPLES) -> Pcm:
    return np.zeros(samples, dtype=np.int16)


def tone(
    freq: float, start_sample: int, samples: int = FRAME_SAMPLES, amplitude: float = 0.3
) -> Pcm:
    """A slice of a continuous sine: frames generated one after another join without clicks."""
    t = (np.arange(samples) + start_sample) / SAMPLE_RATE
    return np.round(np.sin(2 * np.pi * freq * t) * amplitude * 32767).astype(np.int16)


def to_mono_int16(data: npt.NDArray[np.generic], channels: int, sampwidth: int) -> Pcm:
    """Interleaved integer PCM of 1-4 bytes per sample to mono int16 (channels averaged)."""
    arr = np.asarray(data)
    if sampwidth == 1:  # 8-bit WAV is unsigned
        x = (arr.astype(np.float64) - 128.0) / 128.0
    else:
        x = arr.astype(np.float64) / float(2 ** (8 * sampwidth - 1))
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    return np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16)


def resample(pcm: Pcm, from_rate: int, to_rate: int = SAMPLE_RATE) -> Pcm:
    """Linear-interpolation resampling: enough for speech into a 48 kHz call, and cheap."""
    if from_rate == to_rate or len(pcm) == 0:
        return pcm
    n_out = round(len(pcm) * to_rate / from_rate)
    src_t = np.arange(len(pcm)) / from_rate
    dst_t = np.arange(n_out) / to_rate
    return np.round(np.interp(dst_t, src_t, pcm.astype(np.float64))).astype(np.int16)


def dominant_frequency(pcm: Pcm, rate: int = SAMPLE_RATE) -> float:
    """The frequency with the most energy, from a Hann-windowed FFT (parabolic peak refinement)."""
    if len(pcm) < 16:
        return 0.0
    x = pcm.astype(np.float64) * np.hanning(len(pcm))
    spectrum = np.abs(np.fft.rfft(x))
    spectrum[0] = 0.0
    k = int(np.argmax(spectrum))
    if 0 < k < len(spectrum) - 1:
        a, b, c = spectrum[k - 1], spectrum[k], spectrum[k + 1]
        denom = a - 2 * b + c
        k_f = k + (0.5 * (a - c) / denom if denom else 0.0)
    else:
        k_f = float(k)
    return float(k_f * rate / len(pcm))


def rms_dbfs(pcm: Pcm) -> float:
    if len(pcm) == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean((pcm.astype(np.float64) / 32768.0) ** 2)))
    return 20 * float(np.log10(rms)) if rms > 0 else float("-inf")
