"""Audio sources and sinks that need no sound card: tone, silence, WAV files, null."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from voip.codecs.pcm import FRAME_SAMPLES
from voip.codecs.pcm import SAMPLE_RATE
from voip.codecs.pcm import Pcm
from voip.codecs.pcm import resample
from voip.codecs.pcm import silence
from voip.codecs.pcm import to_mono_int16
from voip.codecs.pcm import tone


class AudioSpecError(ValueError):
    """A --input or --output that cannot be used, with the reason."""


class AudioSource(Protocol):
    description: str

    def read(self) -> Pcm:
        """The next 20 ms frame (960 samples); never blocks."""
        ...

    def close(self) -> None: ...


class AudioSink(Protocol):
    description: str

    def write(self, pcm: Pcm) -> None: ...

    def close(self) -> None: ...


class ToneSource:
    def __init__(self, freq: float):
        if not 20 <= freq <= 20_000:
            raise AudioSpecError(f"tone frequency {freq:g} Hz is outside 20-20000 Hz")
        self.freq = freq
        self.description = f"{freq:g} Hz tone"
        self._pos = 0
        # A whole number of hertz repeats every second: compute that second once, not a sine
        # per frame (a frame of numpy sine costs more than Opus encoding it).
        self._second = tone(freq, 0, SAMPLE_RATE) if float(freq).is_integer() else None

    def read(self) -> Pcm:
        if self._second is not None:
            start = self._pos % SAMPLE_RATE  # 48000 is a whole number of frames
            frame = self._second[start : start + FRAME_SAMPLES]
        else:
            frame = tone(self.freq, self._pos)
        self._pos += FRAME_SAMPLES
        return frame

    def close(self) -> None:
        pass


CLICK_PERIOD = 48_000  # one mark a second
CLICK_OFFSET = 24_000  # half a second in, so the first mark is clear of call set-up
CLICK_SAMPLES = 480  # 10 ms
CLICK_HZ = 1000.0


def click_positions(count: int) -> list[int]:
    """Sample indices where ClickSource's marks begin."""
    return [CLICK_OFFSET + k * CLICK_PERIOD for k in range(count)]


class ClickSource:
    """Silence with a 10 ms 1 kHz burst at known sample positions, once a second: marks to find
    in the received audio, for measuring mouth-to-ear latency."""

    description = "clicks (10 ms 1 kHz, once a second)"

    def __init__(self) -> None:
        self._pos = 0

    def read(self) -> Pcm:
        idx = np.arange(self._pos, self._pos + FRAME_SAMPLES)
        self._pos += FRAME_SAMPLES
        phase = (idx - CLICK_OFFSET) % CLICK_PERIOD
        on = (idx >= CLICK_OFFSET) & (phase < CLICK_SAMPLES)
        burst = np.round(0.5 * 32767 * np.sin(2 * np.pi * CLICK_HZ * phase / SAMPLE_RATE))
        return np.where(on, burst, 0).astype(np.int16)

    def close(self) -> None:
        pass


class SilenceSource:
    description = "silence"

    def read(self) -> Pcm:
        return silence()

    def close(self) -> None:
        pass


def read_wav(path: str | Path) -> tuple[Pcm, int]:
    """A WAV file as mono int16 and its rate; AudioSpecError saying why it cannot be read."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = (
                w.getnchannels(),
                w.getsampwidth(),
                w.getframerate(),
                w.getnframes(),
            )
            raw = w.readframes(n)
    except FileNotFoundError as exc:
        raise AudioSpecError(f"no such WAV file: {path}") from exc
    except (wave.Error, EOFError) as exc:
        raise AudioSpecError(f"{path} is not a readable PCM WAV file: {exc}") from exc
    except OSError as exc:
        raise AudioSpecError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if width not in (1, 2, 4):
        raise AudioSpecError(f"{path}: {8 * width}-bit samples are not supported (8, 16, 32)")
    usable = raw[: len(raw) - len(raw) % (width * channels)]
    if width == 1:
        data: npt.NDArray[np.generic] = np.frombuffer(usable, dtype=np.uint8)
    else:
        data = np.frombuffer(usable, dtype="<i2" if width == 2 else "<i4")
    return to_mono_int16(data, channels, width), rate


class WavSource:
    """Plays a WAV file once (any rate, mono or stereo, resampled to 48 kHz), then silence."""

    def __init__(self, path: str | Path):
        pcm, rate = read_wav(path)
        self._pcm = resample(pcm, rate, SAMPLE_RATE)
        self._pos = 0
        self.description = f"WAV {path} ({len(pcm) / rate:.1f} s)"

    @property
    def finished(self) -> bool:
        return self._pos >= len(self._pcm)

    def read(self) -> Pcm:
        frame = self._pcm[self._pos : self._pos + FRAME_SAMPLES]
        self._pos += FRAME_SAMPLES
        if len(frame) < FRAME_SAMPLES:
            frame = np.concatenate([frame, silence(FRAME_SAMPLES - len(frame))])
        return frame

    def close(self) -> None:
        pass


class NullSink:
    description = "null"

    def write(self, pcm: Pcm) -> None:
        pass

    def close(self) -> None:
        pass


class WavSink:
    """Writes what was played out, 48 kHz mono 16-bit, flushed as it goes so nothing is lost."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.description = f"WAV {path}"
        try:
            self._file = self.path.open("wb")  # opened here so a failure leaves nothing half-made
        except OSError as exc:
            raise AudioSpecError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self._w = wave.open(self._file, "wb")  # noqa: SIM115 - closed in close()
        self._w.setnchannels(1)
        self._w.setsampwidth(2)
        self._w.setframerate(SAMPLE_RATE)
        self.frames = 0

    def write(self, pcm: Pcm) -> None:
        self._w.writeframes(pcm.astype("<i2").tobytes())
        self.frames += 1

    def close(self) -> None:
        self._w.close()
        self._file.close()


def open_source(spec: str) -> AudioSource:
    """`mic`, `tone:HZ`, `silence`, `clicks` or a WAV path (`callpeer --help`, `--input`)."""
    if spec == "mic":
        from voip.media.soundcard import MicSource  # noqa: PLC0415 - PortAudio only when used

        return MicSource()
    if spec == "silence":
        return SilenceSource()
    if spec == "clicks":
        return ClickSource()
    if spec.startswith("tone:"):
        try:
            freq = float(spec[5:])
        except ValueError as exc:
            raise AudioSpecError(f"bad tone {spec!r}: expected tone:HZ, e.g. tone:440") from exc
        return ToneSource(freq)
    return WavSource(spec)


def open_sink(spec: str) -> AudioSink:
    """`speaker`, `null` or a WAV path to write."""
    if spec == "speaker":
        from voip.media.soundcard import SpeakerSink  # noqa: PLC0415

        return SpeakerSink()
    if spec == "null":
        return NullSink()
    return WavSink(spec)
