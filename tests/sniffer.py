"""What a listener on the path hears: RTP payloads it captured, decoded as the peer's codec."""

from __future__ import annotations

import statistics

import numpy as np

from voip.codecs.opus import OpusDecoder
from voip.codecs.pcm import FRAME_SAMPLES
from voip.codecs.pcm import SAMPLE_RATE
from voip.wire.rtp import RtpError
from voip.wire.rtp import parse_rtp_untrusted


def tone_ratio(packets: list[bytes], hz: float) -> float:
    """The median, over the packets Opus decodes at all, of the energy in the `hz` bins against
    the bins on either side. A plain Opus stream of that tone scores about 2.7; decoded
    ciphertext is low-frequency noise, whose median over 300 trials of random bytes never
    passed 0.5. 0.0 when nothing decodes."""
    decoder = OpusDecoder()
    width = SAMPLE_RATE / FRAME_SAMPLES  # Hz per bin of a frame's FFT
    k = round(hz / width)
    ratios = []
    for packet in packets:
        try:
            pcm = decoder.decode(parse_rtp_untrusted(packet).payload)
        except (RtpError, ValueError):
            continue  # what a sniffer's decoder makes of most ciphertext
        spectrum = np.abs(np.fft.rfft(np.asarray(pcm, dtype=np.float64)))
        around = spectrum[k - 4 : k - 1].sum() + spectrum[k + 2 : k + 6].sum() + 1e-9
        ratios.append(float(spectrum[k - 1 : k + 2].sum() / around))
    return statistics.median(ratios) if ratios else 0.0
