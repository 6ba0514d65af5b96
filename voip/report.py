"""The call report: its JSON (docs/report.md is the contract) and the table printed at the end."""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass
from dataclasses import field
from typing import Any

from voip.media import emodel
from voip.media.audio_counts import AudioCounts
from voip.security.summary import SecurityReport


@dataclass
class PathMetrics:
    """Measurements of one path, from packets actually exchanged on it."""

    remote: str | None = None
    available: bool = False
    reason: str | None = None  # why it is unavailable
    rtt_samples: list[tuple[float, float, str]] = field(default_factory=list)  # (t, rtt s, source)
    jitter_ms: float | None = None
    loss_pct: float | None = None
    probes_answered: int = 0  # on the standby path: STUN probes, one a second
    probes_lost: int = 0
    found_by: str | None = None  # direct: how it was found (port_mapper.found_by); relay: None
    transport: str | None = None  # relay: how we reach the relay server (udp, tcp, tls)
    # relay, when the rendezvous offered several: each one's server, RTT (ms, None if it did
    # not answer) and whether it was chosen, in the order offered. None: no choice was made.
    choice: list[dict[str, Any]] | None = None

    def probe_loss_pct(self) -> float | None:
        sent = self.probes_answered + self.probes_lost
        return None if sent == 0 else 100.0 * self.probes_lost / sent

    def probe_jitter_ms(self) -> float | None:
        """Variation of the standby path's delay from its probes: half the mean change between
        successive RTTs, as a one-way figure comparable with RFC 3550's interarrival jitter."""
        rtts = [r for _, r, _ in self.rtt_samples]
        if len(rtts) < 2:
            return None
        return 1000.0 * sum(abs(b - a) for a, b in itertools.pairwise(rtts)) / (2 * (len(rtts) - 1))

    def add_rtt(self, t: float, rtt: float, source: str) -> None:
        self.rtt_samples.append((t, rtt, source))

    @property
    def rtts_ms(self) -> list[float]:
        return [1000.0 * r for _, r, _ in self.rtt_samples]

    def latest_rtt_ms(self) -> float | None:
        return 1000.0 * self.rtt_samples[-1][1] if self.rtt_samples else None

    def to_dict(self, jitter_buffer_ms: float) -> dict[str, Any]:
        out = self._figures(jitter_buffer_ms)
        if self.choice is not None:  # absent, not null, when one relay was all there was
            out["choice"] = [dict(relay) for relay in self.choice]
        return out

    def _figures(self, jitter_buffer_ms: float) -> dict[str, Any]:
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
            "found_by": self.found_by,
            "transport": self.transport or "udp",  # the direct path is UDP whatever happens
            # Which IP family carried it: the remote's ("[v6]:port" is IPv6).
            "family": None if self.remote is None else ("ipv6" if "[" in self.remote else "ipv4"),
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
class CallReport:
    me: str
    peer: str
    path: str = "none"
    setup_ms: float | None = None
    direct_ms: float | None = None  # introduction to audio on the direct path, if it went there
    wait_ms: float | None = None
    duration_s: float = 0.0
    ended: str = ""
    local_public: str | None = None
    path_switches: int = 0
    jitter_buffer_ms: float = 20.0  # the mean delay the adaptive buffer added
    direct: PathMetrics = field(default_factory=PathMetrics)
    relay: PathMetrics = field(default_factory=lambda: PathMetrics(reason="no relay configured"))
    audio: AudioCounts = field(default_factory=AudioCounts)
    candidates_tried: list[str] = field(default_factory=list)
    # Each side's NAT mapping as learned at registration ("endpoint-independent", "dependent")
    nat_mapping: dict[str, str | None] = field(default_factory=dict)
    keepalive_s: float | None = None
    # What our router said when asked for a port: protocol and public address, or the reason
    # it gave none; None when it was not asked (--no-port-mapping, or no gateway to ask).
    port_mapping: dict[str, str | None] | None = None
    security: SecurityReport | None = None  # None: no key exchange finished (no audio either)

    def to_dict(self) -> dict[str, Any]:
        paths = {
            "direct": self.direct.to_dict(self.jitter_buffer_ms),
            "relay": self.relay.to_dict(self.jitter_buffer_ms),
        }
        return {
            "me": self.me,
            "peer": self.peer,
            "path": self.path,
            "setup_ms": None if self.setup_ms is None else round(self.setup_ms, 1),
            "direct_ms": None if self.direct_ms is None else round(self.direct_ms, 1),
            "wait_ms": None if self.wait_ms is None else round(self.wait_ms, 1),
            "duration_s": round(self.duration_s, 2),
            "ended": self.ended,
            "local_public": self.local_public,
            "path_switches": self.path_switches,
            "jitter_buffer_ms": self.jitter_buffer_ms,
            "candidates_tried": self.candidates_tried,
            "nat_mapping": self.nat_mapping,
            "keepalive_s": self.keepalive_s,
            "port_mapping": self.port_mapping,
            "security": None if self.security is None else self.security.to_dict(),
            "paths": paths,
            "verdict": verdict(self.path, paths),
            "audio": {
                "frames_sent": self.audio.frames_sent,
                "frames_not_sent": self.audio.frames_not_sent,
                "frames_comfort": self.audio.frames_comfort,
                "frames_received": self.audio.frames_received,
                "frames_concealed": self.audio.frames_concealed,
                "frames_recovered": self.audio.frames_recovered,
                "frames_late": self.audio.frames_late,
                "frames_expanded": self.audio.frames_expanded,
                # after the buffer has had time to learn the path (its histogram's half-life
                # is about 3 s): what a listener hears once the call has settled
                "frames_concealed_after_3s": sum(1 for t in self.audio.concealed_at if t >= 3.0),
                "peer_loss_pct": self.audio.peer_loss_pct,
                "longest_gap_ms": self.audio.longest_gap_ms,
                "packets_malformed": self.audio.packets_malformed,
            },
        }


def verdict(active: str, paths: dict[str, dict[str, Any]]) -> str:
    """One line saying what going direct gained on this call, from the measured figures."""
    direct, relay = paths["direct"], paths["relay"]
    # The relay as reached over TCP or TLS (RFC 8656 §3.1), where it was: "relayed over TLS".
    over = relay.get("transport")
    relayed = "relayed" if over in (None, "udp") else f"relayed over {over.upper()}"
    if direct["rtt_ms"] and relay["rtt_ms"]:
        saved = relay["rtt_ms"]["median"] - direct["rtt_ms"]["median"]
        how = f"saves {saved:.0f} ms" if saved >= 0 else f"costs {-saved:.0f} ms"
        return (
            f"direct {how} round trip; MOS {direct['mos']:.2f} direct vs "
            f"{relay['mos']:.2f} {relayed} (audio went {active})"
        )
    if direct["rtt_ms"]:
        return f"direct only: relay not measured ({relay.get('reason') or 'unavailable'})"
    if relay["rtt_ms"]:
        return f"{relayed} only: no direct path ({direct.get('reason') or 'unavailable'})"
    return "no path was measured"


def _difference(direct: Any, relay: Any, unit: str) -> str:
    if not isinstance(direct, (int, float)) or not isinstance(relay, (int, float)):
        return "-"
    return f"{relay - direct:+.2f}{unit}"


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}{unit}" if unit != " ms" or value < 100 else f"{value:.1f}{unit}"
    return f"{value}{unit}"


def render_table(report: dict[str, Any]) -> Any:
    """A rich Table of a report dict (the JSON form, so a saved report renders the same):
    direct | relay | difference (relay minus direct), and the verdict under it."""
    from rich.table import Table  # noqa: PLC0415 - only the CLI draws tables

    direct, relay = report["paths"]["direct"], report["paths"]["relay"]
    how = direct.get("found_by") if report["path"] == "direct" else None
    title = (
        f"callpeer: {report['me']} <-> {report['peer']}, audio {report['path']}"
        f"{f' ({how})' if how else ''}, setup {_fmt(report['setup_ms'], ' ms')}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for name in ("direct", "relay", "relay - direct"):
        table.add_column(name, justify="right")

    def availability(p: dict[str, Any]) -> str:
        if not p["available"]:
            return f"no ({p.get('reason') or '-'})"
        over = p.get("transport")  # the relay over TCP or TLS; IPv6 said of either
        notes = [f"over {over.upper()}"] if over not in (None, "udp") else []
        notes += ["IPv6"] if p.get("family") == "ipv6" else []
        return f"yes ({', '.join(notes)})" if notes else "yes"

    def row(label: str, get: Any, unit: str = "", diff: bool = True) -> None:
        a, b = get(direct), get(relay)
        table.add_row(label, _fmt(a, unit), _fmt(b, unit), _difference(a, b, unit) if diff else "")

    table.add_row("available", availability(direct), availability(relay), "")
    row("remote", lambda p: p.get("remote"), diff=False)
    for stat in ("median", "p95"):
        row(f"RTT {stat}", lambda p, s=stat: (p["rtt_ms"] or {}).get(s), " ms")
    row("jitter", lambda p: p.get("jitter_ms"), " ms")
    row("loss", lambda p: p.get("loss_pct"), " %")
    row("MOS (G.107)", lambda p: p.get("mos"))
    a = report["audio"]
    # A report saved before calls were encrypted has no "security" key at all: it was not
    # encrypted either, but not for want of a key exchange, so it is worded apart.
    security = report.get("security")
    if security is not None:
        peer = report["peer"]
        protection = f"encrypted {security['cipher']}; " + {
            "verified": f"{peer}'s key verified",
            "first": f"first call with {peer}: SAS {security['sas']}",
            "accepted": f"{peer}'s new key accepted: SAS {security['sas']}",
        }.get(security["trust"], f"{peer}'s key: {security['trust']}, SAS {security['sas']}")
        if security.get("packets_rejected"):
            protection += f"; {security['packets_rejected']} forged or replayed packets dropped"
    elif "security" in report:
        protection = "not encrypted: no key exchange (no audio)"
    else:
        protection = "not encrypted (a report from before callpeer encrypted calls)"
    table.caption = (
        f"{report.get('verdict', '')}\n"
        f"{protection}\n"
        f"audio frames: sent {a['frames_sent']}, received {a['frames_received']}, "
        f"concealed {a['frames_concealed']}, FEC-recovered {a['frames_recovered']}; "
        f"ended: {report['ended']}"
    )
    table.caption_justify = "left"
    return table
