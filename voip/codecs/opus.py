"""Opus encoder and decoder for 20 ms mono frames at 48 kHz (opuslib over libopus).

opuslib makes and configures the codec states; the per-frame calls go to libopus through
opuslib's own ctypes prototypes with buffers allocated once, because opuslib's wrappers
allocate and convert on every frame (its decode turns 960 samples into a Python list), which
cost three times what libopus itself spends on a frame.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from voip.codecs.pcm import FRAME_SAMPLES
from voip.codecs.pcm import SAMPLE_RATE
from voip.codecs.pcm import Pcm

# libopus CTL request numbers (opus_defines.h). opuslib 3.0.1's `inband_fec` setter forgets to
# pass its value, so the CTLs are issued directly.
OPUS_SET_VBR = 4006
OPUS_SET_INBAND_FEC = 4012
OPUS_SET_PACKET_LOSS_PERC = 4014
OPUS_SET_DTX = 4016
OPUS_GET_LOOKAHEAD = 4027

DEFAULT_BITRATE = 32_000  # wideband speech with room for in-band FEC
MAX_PACKET = 1275  # bytes: the largest Opus frame (RFC 6716 §3.4)


class CodecUnavailable(RuntimeError):
    """libopus (or opuslib) cannot be loaded on this machine."""


def _opuslib() -> Any:
    try:
        import opuslib  # noqa: PLC0415 - loads libopus through ctypes; fail with a clear message
        import opuslib.api.ctl  # noqa: PLC0415
        import opuslib.api.decoder  # noqa: PLC0415
        import opuslib.api.encoder  # noqa: PLC0415
    except Exception as exc:  # opuslib raises a bare Exception when libopus is missing
        raise CodecUnavailable(
            f"Opus is not available ({exc}); install libopus: apt-get install libopus0"
        ) from exc
    return opuslib


def _ctl_set(request: int) -> Any:
    opuslib = _opuslib()
    return opuslib.api.ctl.ctl_set(request)


class OpusEncoder:
    def __init__(
        self,
        bitrate: int = DEFAULT_BITRATE,
        fec: bool = True,
        expected_loss_pct: int = 0,
        dtx: bool = False,
    ):
        opuslib = _opuslib()
        self._enc = opuslib.Encoder(SAMPLE_RATE, 1, opuslib.APPLICATION_VOIP)
        self._enc.bitrate = bitrate
        self._encode = opuslib.api.encoder.libopus_encode
        # The frame is copied into this buffer, whose pointer is made once: numpy's
        # `.ctypes.data_as` builds a ctypes object and casts it on every call.
        self._pcm = np.empty(FRAME_SAMPLES, dtype=np.int16)
        self._pcm_pointer = self._pcm.ctypes.data_as(opuslib.api.c_int16_pointer)
        self._out = ctypes.create_string_buffer(MAX_PACKET)
        # Constant bitrate: SRTP hides the words but not the packet sizes, and variable-bitrate
        # speech leaks which phrases were said through them (RFC 6562 §3: use CBR under SRTP).
        # DTX has already chosen to show the silences for bandwidth, and needs VBR: its
        # comfort-noise updates are told from speech by their size (a few bytes, or CBR's 80).
        self._ctl(OPUS_SET_VBR, int(dtx))
        self._ctl(OPUS_SET_INBAND_FEC, int(fec))
        self._ctl(OPUS_SET_DTX, int(dtx))
        self.set_expected_loss(expected_loss_pct)

    def _ctl(self, request: int, value: int) -> None:
        opuslib = _opuslib()
        opuslib.api.encoder.encoder_ctl(self._enc.encoder_state, _ctl_set(request), value)

    def set_expected_loss(self, pct: int) -> None:
        """Tell the encoder how much loss to expect: it sizes in-band FEC (LBRR) from this."""
        self._ctl(OPUS_SET_PACKET_LOSS_PERC, max(0, min(100, int(pct))))

    @property
    def lookahead_samples(self) -> int:
        opuslib = _opuslib()
        get = opuslib.api.ctl.get(OPUS_GET_LOOKAHEAD, ctypes.c_int)
        return int(opuslib.api.encoder.encoder_ctl(self._enc.encoder_state, get))

    def encode(self, pcm: Pcm) -> bytes:
        if len(pcm) != FRAME_SAMPLES:
            raise ValueError(f"Opus frames here are {FRAME_SAMPLES} samples, got {len(pcm)}")
        self._pcm[:] = pcm
        size = self._encode(
            self._enc.encoder_state,
            self._pcm_pointer,
            FRAME_SAMPLES,
            self._out,
            MAX_PACKET,
        )
        if size < 0:
            raise ValueError(f"libopus could not encode a frame (error {size})")
        return self._out.raw[:size]


class OpusDecoder:
    def __init__(self) -> None:
        opuslib = _opuslib()
        self._dec = opuslib.Decoder(SAMPLE_RATE, 1)
        self._decode = opuslib.api.decoder.libopus_decode
        self._pcm = np.empty(FRAME_SAMPLES, dtype=np.int16)
        self._pcm_pointer = self._pcm.ctypes.data_as(opuslib.api.c_int16_pointer)

    def _run(self, data: bytes | None, fec: bool) -> Pcm:
        size = self._decode(
            self._dec.decoder_state,
            data,
            len(data) if data else 0,
            self._pcm_pointer,
            FRAME_SAMPLES,
            int(fec),
        )
        if size < 0:
            raise ValueError(f"undecodable Opus packet (libopus error {size})")
        return self._pcm[:size].copy()

    def decode(self, payload: bytes) -> Pcm:
        """Decode one packet; raises ValueError for a packet libopus rejects."""
        if not payload:
            raise ValueError("undecodable Opus packet: empty")
        return self._run(payload, fec=False)

    def conceal(self) -> Pcm:
        """Packet-loss concealment: libopus extrapolates the missing frame."""
        return self._run(None, fec=False)

    def recover(self, next_payload: bytes) -> Pcm:
        """Rebuild a lost frame from the FEC (LBRR) data carried in the packet after it."""
        try:
            return self._run(next_payload, fec=True)
        except ValueError:
            return self.conceal()
