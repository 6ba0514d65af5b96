"""`--plot FILE.png`: round-trip time over the call for both paths, drawn with matplotlib."""

from __future__ import annotations

from pathlib import Path

from voip.report import CallReport


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def plot_rtt(report: CallReport, path: str | Path) -> Path:
    """Draw every RTT sample of each path against call time; returns the file written."""
    try:
        import matplotlib  # noqa: PLC0415 - optional, heavy: only when a plot is asked for

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError as exc:
        raise PlotUnavailable("--plot needs matplotlib: pip install 'callpeer[plot]'") from exc
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    for name, metrics, colour in (
        ("direct", report.direct, "tab:green"),
        ("relay", report.relay, "tab:orange"),
    ):
        if not metrics.rtt_samples:
            continue
        for source, marker in (("rtcp", "o"), ("stun", "x")):
            points = [(t, 1000 * r) for t, r, s in metrics.rtt_samples if s == source]
            if points:
                xs, ys = zip(*points, strict=True)
                suffix = "audio (RTCP)" if source == "rtcp" else "STUN checks"
                ax.plot(
                    xs,
                    ys,
                    marker=marker,
                    linestyle="-" if source == "rtcp" else ":",
                    color=colour,
                    label=f"{name}: {suffix}",
                )
    ax.set_xlabel("call time (s)")
    ax.set_ylabel("round-trip time (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{report.me} <-> {report.peer}: audio went {report.path}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
