"""Audio: Opus round trip, PLC and FEC, WAV sources and sinks, bad audio specs."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from voip.codecs.opus import OpusDecoder
from voip.codecs.opus import OpusEncoder
from voip.codecs.pcm import FRAME_SAMPLES
from voip.codecs.pcm import dominant_frequency
from voip.codecs.pcm import resample
from voip.codecs.pcm import rms_dbfs
from voip.codecs.pcm import tone
from voip.media.audio_io import AudioSpecError
from voip.media.audio_io import NullSink
from voip.media.audio_io import ToneSource
from voip.media.audio_io import WavSink
from voip.media.audio_io import WavSource
from voip.media.audio_io import open_sink
from voip.media.audio_io import open_source
from voip.media.audio_io import read_wav


def test_opus_round_trip_keeps_the_tone() -> None:
    enc, dec = OpusEncoder(), OpusDecoder()
    src = ToneSource(700)
    out = np.concatenate([dec.decode(enc.encode(src.read())) for _ in range(50)])
    assert len(out) == 50 * FRAME_SAMPLES
    assert dominant_frequency(out[FRAME_SAMPLES * 5 :]) == pytest.approx(700, abs=3)


def test_concealment_and_fec_give_a_full_frame() -> None:
    enc, dec = OpusEncoder(fec=True, expected_loss_pct=20), OpusDecoder()
    src = ToneSource(500)
    packets = [enc.encode(src.read()) for _ in range(20)]
    for p in packets[:10]:
        dec.decode(p)
    assert len(dec.conceal()) == FRAME_SAMPLES
    recovered = dec.recover(packets[11])  # frame 10 rebuilt from the LBRR data in 11
    assert len(recovered) == FRAME_SAMPLES and rms_dbfs(recovered) > -30


def test_corrupt_opus_packet_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="undecodable"):
        OpusDecoder().decode(b"\xff\xff\xff")


def test_wav_sink_and_source_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.wav"
    sink = WavSink(path)
    for i in range(10):
        sink.write(tone(1000, i * FRAME_SAMPLES))
    sink.close()
    pcm, rate = read_wav(path)
    assert rate == 48000 and len(pcm) == 10 * FRAME_SAMPLES
    src = WavSource(path)
    frames = [src.read() for _ in range(11)]
    assert src.finished and not frames[-1].any()  # after the file: silence
    assert dominant_frequency(np.concatenate(frames[:10])) == pytest.approx(1000, abs=2)


def test_wav_source_resamples_and_mixes_down(tmp_path: Path) -> None:
    path = tmp_path / "stereo22k.wav"
    t = np.arange(22050) / 22050
    left = (np.sin(2 * np.pi * 300 * t) * 10000).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes(np.column_stack([left, left]).tobytes())
    src = WavSource(path)
    pcm = np.concatenate([src.read() for _ in range(50)])
    assert dominant_frequency(pcm) == pytest.approx(300, abs=2)
    assert len(resample(left, 22050)) == 48000


def test_unreadable_and_missing_wav_give_clear_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not a wav file")
    with pytest.raises(AudioSpecError, match="not a readable PCM WAV"):
        open_source(str(junk))
    with pytest.raises(AudioSpecError, match="no such WAV file"):
        open_source(str(tmp_path / "absent.wav"))
    with pytest.raises(AudioSpecError, match="cannot write"):
        open_sink(str(tmp_path / "no-such-dir" / "out.wav"))


@pytest.mark.parametrize("spec", ["tone:abc", "tone:5", "tone:"])
def test_bad_tone_specs(spec: str) -> None:
    with pytest.raises(AudioSpecError, match="tone"):
        open_source(spec)


def test_simple_specs() -> None:
    assert open_source("silence").read().any() == False  # noqa: E712
    assert isinstance(open_sink("null"), NullSink)
    assert open_source("tone:440").description == "440 Hz tone"
