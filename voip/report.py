"""The call report: the JSON contract of DESIGN.md and the table printed at the end of a call."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from voip.media import emodel


@dataclass
class PathMetrics:
    """Measurements of one path, from packets actually exchanged on it."""

    remote: str | None = None
    available: bool = False
    reason: str | None = None  # why it is unavailable
    rtt_samples: list[tuple[float, float, str]] = field(default_factory=list)  # (t, rtt s, source)
    jitter_ms: float | None = None
    loss_pct: float | None = None

    def add_rtt(self, t: float, rtt: float, source: str) -> None:
        self.rtt_samples.append((t, rtt, source))

    @property
    def rtts_ms(self) -> list[float]:
        return [1000.0 * r for _, r, _ in self.rtt_samples]

    def latest_rtt_ms(self) -> float | None:
        return 1000.0 * self.rtt_samples[-1][1] if self.rtt_samples else None

    def to_dict(self, jitter_buffer_ms: float) -> dict[str, Any]:
        if not self.available:
            return {
                "available": False,
                "remote": self.remote,
                "reason": self.reason,
                "rtt_ms": None,
                "jitter_ms": None,
                "loss_pct": None,
                "mos": None,
            }
        rtts = self.rtts_ms
        rtt: dict[str, Any] | None = None
        mos = None
        if rtts:
            rtt = {
                "median": round(statistics.median(rtts), 2),
                "p95": round(percentile(rtts, 95), 2),
                "min": round(min(rtts), 2),
                "samples": len(rtts),
                "sources": sorted({s for _, _, s in self.rtt_samples}),
            }
            mos = emodel.mos(rtt["median"] / 2, self.loss_pct or 0.0, jitter_buffer_ms)
        return {
            "available": True,
            "remote": self.remote,
            "rtt_ms": rtt,
            "jitter_ms": None if self.jitter_ms is None else round(self.jitter_ms, 2),
            "loss_pct": None if self.loss_pct is None else round(self.loss_pct, 2),
            "mos": mos,
        }


def percentile(values: list[float], pct: float) -> float:
    """Linear-interpolated percentile (numpy's default method), without numpy for a short list."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * pct / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@dataclass
class AudioCounts:
    frames_sent: int = 0
    frames_received: int = 0  # decoded from packets that arrived in time
    frames_concealed: int = 0  # missing frames filled by Opus PLC
    frames_recovered: int = 0  # missing frames rebuilt from in-band FEC
    frames_late: int = 0  # arrived after their playout time
    packets_malformed: int = 0


@dataclass
class CallReport:
    me: str
    peer: str
    path: str = "none"
    setup_ms: float | None = None
    wait_ms: float | None = None
    duration_s: float = 0.0
    ended: str = ""
    local_public: str | None = None
    jitter_buffer_ms: float = 60.0
    direct: PathMetrics = field(default_factory=PathMetrics)
    relay: PathMetrics = field(default_factory=lambda: PathMetrics(reason="no relay configured"))
    audio: AudioCounts = field(default_factory=AudioCounts)
    candidates_tried: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "me": self.me,
            "peer": self.peer,
            "path": self.path,
            "setup_ms": None if self.setup_ms is None else round(self.setup_ms, 1),
            "wait_ms": None if self.wait_ms is None else round(self.wait_ms, 1),
            "duration_s": round(self.duration_s, 2),
            "ended": self.ended,
            "local_public": self.local_public,
            "jitter_buffer_ms": self.jitter_buffer_ms,
            "candidates_tried": self.candidates_tried,
            "paths": {
                "direct": self.direct.to_dict(self.jitter_buffer_ms),
                "relay": self.relay.to_dict(self.jitter_buffer_ms),
            },
            "audio": {
                "frames_sent": self.audio.frames_sent,
                "frames_received": self.audio.frames_received,
                "frames_concealed": self.audio.frames_concealed,
                "frames_recovered": self.audio.frames_recovered,
                "frames_late": self.audio.frames_late,
                "packets_malformed": self.audio.packets_malformed,
            },
        }


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}{unit}" if unit != " ms" or value < 100 else f"{value:.1f}{unit}"
    return f"{value}{unit}"


def render_table(report: dict[str, Any]) -> Any:
    """A rich Table of a report dict (the JSON form, so a saved report renders the same)."""
    from rich.table import Table  # noqa: PLC0415 - only the CLI draws tables

    title = (
        f"callpeer: {report['me']} <-> {report['peer']}, path {report['path']}, "
        f"setup {_fmt(report['setup_ms'], ' ms')}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("")
    names = ("direct", "relay")
    paths = [report["paths"][n] for n in names]
    for name in names:
        table.add_column(name, justify="right")

    def availability(p: dict[str, Any]) -> str:
        return "yes" if p["available"] else f"no ({p.get('reason') or '-'})"

    table.add_row("available", *(availability(p) for p in paths))
    table.add_row("remote", *(_fmt(p.get("remote")) for p in paths))
    for stat in ("median", "p95"):
        table.add_row(f"RTT {stat}", *(_fmt((p["rtt_ms"] or {}).get(stat), " ms") for p in paths))
    table.add_row("jitter", *(_fmt(p.get("jitter_ms"), " ms") for p in paths))
    table.add_row("loss", *(_fmt(p.get("loss_pct"), " %") for p in paths))
    table.add_row("MOS (G.107)", *(_fmt(p.get("mos")) for p in paths))
    a = report["audio"]
    table.caption = (
        f"audio frames: sent {a['frames_sent']}, received {a['frames_received']}, "
        f"concealed {a['frames_concealed']}, FEC-recovered {a['frames_recovered']}; "
        f"ended: {report['ended']}"
    )
    table.caption_justify = "left"
    return table
