"""Benchmark: speech quality through the lab at 0, 3 and 10 % loss, with FEC on and off.

    sudo .venv/bin/python bench/speech_quality.py [--repeat 2]

alice sends real speech (espeak-ng); bob's recording is aligned with what was sent and scored
with PESQ (ITU-T P.862.2 wideband, MOS-LQO 1-4.64) and STOI (0-1). The loss is random, on
each of the callers' links, so the audio crosses it once.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from voip.codecs.pcm import resample
from voip.lab.bench_args import lab_ready
from voip.lab.bench_args import table_head
from voip.lab.bench_args import table_row
from voip.lab.quality import score
from voip.lab.scenario import run_lab_call
from voip.lab.topology import LabConfig
from voip.media.audio_io import read_wav

TEXT = (
    "The quick brown fox jumps over the lazy dog. A call that works on a clean loopback is "
    "not yet a phone. Make the media path hold up under the jitter, loss and path changes of "
    "a real internet, and measure what a listener would notice."
)


def one_call(loss: float, fec: bool, seed: int) -> tuple[float, float, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = LabConfig(nat_a="cone", nat_b="cone", delay_a=5, delay_b=5, loss=loss, seed=seed)
        result = run_lab_call(
            config,
            work,
            duration=14.0,
            speech=True,
            speech_text=TEXT,
            extra_args=[] if fec else ["--no-fec"],
        )
        sent, rate = read_wav(work / "speech.wav")
        heard, _ = read_wav(work / "bob.wav")
        quality = score(resample(sent, rate), heard)
        report = result.callers["bob"].report or {}
        audio = report.get("audio", {})
        counts = {k: audio.get(k, 0) for k in ("frames_recovered", "frames_concealed")}
        return quality.pesq_wb, quality.stoi, counts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    if not lab_ready():
        return 1
    print(f"espeak-ng speech, alice to bob, 5 ms each way; median of {args.repeat} calls")
    table_head("loss", "FEC", "PESQ-WB", "STOI", "frames FEC-decoded", "frames concealed")
    for loss in (0.0, 3.0, 10.0):
        for fec in (True, False):
            runs = [one_call(loss, fec, seed) for seed in range(args.repeat)]
            pesq_wb = statistics.median(r[0] for r in runs)
            stoi = statistics.median(r[1] for r in runs)
            rec = statistics.median(r[2]["frames_recovered"] for r in runs)
            con = statistics.median(r[2]["frames_concealed"] for r in runs)
            fec_on = "on" if fec else "off"
            table_row(
                f"{loss:g} %", fec_on, f"{pesq_wb:.2f}", f"{stoi:.3f}", f"{rec:g}", f"{con:g}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
