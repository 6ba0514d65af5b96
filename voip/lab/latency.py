"""Mouth-to-ear latency from marks in the audio: sent with ClickSource, found in the received WAV.

Both callers record (with --timeline) when each 20 ms frame was read from the source and when
each frame was played, on time.monotonic, which every process on the machine shares. A mark at
sent sample s was spoken 20 ms before its frame was read (a live source delivers a frame when it
is complete; that packetization delay is part of mouth-to-ear) plus its place in the frame. A
mark found at received sample r was heard when its frame was played plus its place in the frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voip.codecs.pcm import FRAME_SAMPLES
from voip.codecs.pcm import SAMPLE_RATE
from voip.codecs.pcm import Pcm
from voip.lab.scenario import LabCallResult
from voip.lab.scenario import run_lab_call
from voip.lab.topology import LabConfig
from voip.media.audio_io import click_positions
from voip.media.audio_io import read_wav

FRAME_S = FRAME_SAMPLES / SAMPLE_RATE


def find_onsets(pcm: Pcm, threshold: float = 0.1, min_spacing_s: float = 0.5) -> list[int]:
    """Sample indices where bursts begin: the first sample over `threshold` (of full scale)
    after at least `min_spacing_s` below it."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > threshold * 32767)
    onsets: list[int] = []
    for idx in loud:
        if not onsets or idx - onsets[-1] > min_spacing_s * SAMPLE_RATE:
            onsets.append(int(idx))
    return onsets


def mouth_to_ear_ms(captured_at: list[float], played_at: list[float], received: Pcm) -> list[float]:
    """Latency of every mark that was both sent (within the timeline) and found."""
    spoken = [
        captured_at[s // FRAME_SAMPLES] - FRAME_S + (s % FRAME_SAMPLES) / SAMPLE_RATE
        for s in click_positions(len(captured_at) * FRAME_SAMPLES // 48_000 + 1)
        if s // FRAME_SAMPLES < len(captured_at)
    ]
    latencies = []
    for r in find_onsets(received):
        if r // FRAME_SAMPLES >= len(played_at):
            continue
        heard = played_at[r // FRAME_SAMPLES] + (r % FRAME_SAMPLES) / SAMPLE_RATE
        before = [t for t in spoken if t <= heard]
        if before and heard - before[-1] < 0.5:  # marks are 1 s apart: the last one before
            latencies.append(1000.0 * (heard - before[-1]))
    return latencies


@dataclass
class MouthToEar:
    latencies: dict[str, list[float]]  # each listener's, ms
    call: LabCallResult  # the reports, and the lab's baseline echo before the call

    def network_one_way(self) -> float:
        """Half the plain echo's median RTT on the direct path: the network's part, ms."""
        return self.call.baseline["direct"].median / 2


def lab_mouth_to_ear(config: LabConfig, workdir: Path, duration: float) -> MouthToEar:
    """Run a call in the lab with marks both ways; each listener's mouth-to-ear latencies."""
    call = run_lab_call(
        config,
        workdir,
        duration=duration,
        speech=False,
        inputs={"alice": "clicks", "bob": "clicks"},
        timeline=True,
    )
    out = {}
    for me, peer in (("alice", "bob"), ("bob", "alice")):
        sent = json.loads((workdir / f"{peer}.timeline.json").read_text())
        heard = json.loads((workdir / f"{me}.timeline.json").read_text())
        pcm, _ = read_wav(workdir / f"{me}.wav")
        out[me] = mouth_to_ear_ms(sent["captured_at"], heard["played_at"], pcm)
    return MouthToEar(out, call)
