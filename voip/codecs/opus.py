"""Opus encoder and decoder for 20 ms mono frames at 48 kHz (opuslib over libopus)."""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from voip.codecs.pcm import FRAME_SAMPLES, SAMPLE_RATE, Pcm

# libopus CTL request numbers (opus_defines.h). opuslib 3.0.1's `inband_fec` setter forgets to
# pass its value, so the CTLs are issued directly.
OPUS_SET_INBAND_FEC = 4012
OPUS_SET_PACKET_LOSS_PERC = 4014
OPUS_SET_DTX = 4016
OPUS_GET_LOOKAHEAD = 4027

DEFAULT_BITRATE = 32_000  # wideband speech with room for in-band FEC


class CodecUnavailable(RuntimeError):
    """libopus (or opuslib) cannot be loaded on this machine."""


def _opuslib() -> Any:
    try:
        import opuslib  # noqa: PLC0415 - loads libopus through ctypes; fail with a clear message
        import opuslib.api.ctl  # noqa: PLC0415
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
        return bytes(self._enc.encode(pcm.astype("<i2").tobytes(), FRAME_SAMPLES))


class OpusDecoder:
    def __init__(self) -> None:
        opuslib = _opuslib()
        self._dec = opuslib.Decoder(SAMPLE_RATE, 1)

    def _pcm(self, data: bytes) -> Pcm:
        return np.frombuffer(data, dtype="<i2").astype(np.int16)

    def decode(self, payload: bytes) -> Pcm:
        """Decode one packet; raises ValueError for a packet libopus rejects."""
        try:
            return self._pcm(self._dec.decode(payload, FRAME_SAMPLES))
        except Exception as exc:  # opuslib.OpusError: a corrupt packet from the network
            raise ValueError(f"undecodable Opus packet: {exc}") from exc

    def conceal(self) -> Pcm:
        """Packet-loss concealment: libopus extrapolates the missing frame."""
        return self._pcm(self._dec.decode(b"", FRAME_SAMPLES))

    def recover(self, next_payload: bytes) -> Pcm:
        """Rebuild a lost frame from the FEC (LBRR) data carried in the packet after it."""
        try:
            return self._pcm(self._dec.decode(next_payload, FRAME_SAMPLES, decode_fec=True))
        except Exception:
            return self.conceal()
