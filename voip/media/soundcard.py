"""Microphone and speaker through sounddevice (PortAudio), imported only when asked for."""

from __future__ import annotations

import contextlib
import queue
from typing import Any

import numpy as np

from voip.codecs.pcm import FRAME_SAMPLES
from voip.codecs.pcm import SAMPLE_RATE
from voip.codecs.pcm import Pcm
from voip.codecs.pcm import silence

HINT = "use --input tone:440, silence or a WAV file, and --output null or a WAV file"


class SoundcardUnavailable(RuntimeError):
    """No PortAudio, or no usable device."""


def _sounddevice() -> Any:
    try:
        import sounddevice  # noqa: PLC0415 - PortAudio is optional; import only when asked
    except OSError as exc:  # sounddevice raises OSError when libportaudio is missing
        raise SoundcardUnavailable(
            f"no sound system: {exc} (apt-get install libportaudio2); {HINT}"
        ) from exc
    return sounddevice


def list_devices() -> str:
    sd = _sounddevice()
    devices = sd.query_devices()
    if len(devices) == 0:
        raise SoundcardUnavailable(f"PortAudio found no audio devices; {HINT}")
    return str(devices)


def _open(kind: str, **kwargs: Any) -> Any:
    sd = _sounddevice()
    try:
        stream = getattr(sd, kind)(
            samplerate=SAMPLE_RATE, channels=1, dtype="int16", blocksize=FRAME_SAMPLES, **kwargs
        )
        stream.start()
    except Exception as exc:  # sd.PortAudioError and ValueError for a missing default device
        what = "microphone" if kind == "InputStream" else "speaker"
        raise SoundcardUnavailable(f"cannot open the {what}: {exc}; {HINT}") from exc
    return stream


class _Stream:
    """A PortAudio stream, and the frames queued between its thread and the call."""

    def __init__(self, kind: str) -> None:
        self._frames: queue.Queue[Pcm] = queue.Queue(maxsize=50)
        self._stream = _open(kind, callback=self._callback)

    def _callback(self, data: Any, frames: int, time: Any, status: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


class MicSource(_Stream):
    description = "microphone"

    def __init__(self) -> None:
        super().__init__("InputStream")

    def _callback(self, indata: Any, frames: int, time: Any, status: Any) -> None:
        if self._frames.full():  # the sender stalled: drop the oldest audio, keep latency low
            with contextlib.suppress(queue.Empty):
                self._frames.get_nowait()
        with contextlib.suppress(queue.Full):
            self._frames.put_nowait(np.array(indata[:, 0], dtype=np.int16))

    def read(self) -> Pcm:
        try:
            return self._frames.get_nowait()
        except queue.Empty:
            return silence()


class SpeakerSink(_Stream):
    description = "speaker"

    def __init__(self) -> None:
        super().__init__("OutputStream")

    def _callback(self, outdata: Any, frames: int, time: Any, status: Any) -> None:
        try:
            pcm = self._frames.get_nowait()
        except queue.Empty:
            pcm = silence(frames)
        outdata[:, 0] = pcm[:frames] if len(pcm) >= frames else np.pad(pcm, (0, frames - len(pcm)))

    def write(self, pcm: Pcm) -> None:
        with contextlib.suppress(queue.Full):
            self._frames.put_nowait(pcm)
