"""What natcheck learned about this network's NAT, kept for calls ($XDG_CACHE_HOME, JSON)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path

from voip.natcheck.verdict import NatTests
from voip.natcheck.verdict import NatVerdict

MAX_AGE = 7 * 24 * 3600.0  # s: after a week the network may well be another one


@dataclass(frozen=True)
class NatMemory:
    local_ip: str  # the network it was measured from, as this machine's address on it
    public_ip: str
    mapping: str | None
    filtering: str | None
    lifetime: float | None  # s a quiet mapping was seen to outlive
    measured_at: float  # Unix time


def memory_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "callpeer" / "nat.json"


def _load(path: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember(tests: NatTests, verdict: NatVerdict, now: float | None = None) -> Path | None:
    """Store the result under this machine's local address; None if it could not be written.
    A run without --lifetime keeps a lifetime measured earlier on the same network."""
    if tests.mapped1 is None:
        return None
    path = memory_path()
    known = _load(path)
    local_ip, public_ip = tests.local[0], tests.mapped1[0]
    lifetime = tests.lifetime[0] if tests.lifetime is not None else None
    if lifetime is None:
        old = recall(local_ip, now)
        if old is not None and old.public_ip == public_ip:
            lifetime = old.lifetime
    entry = NatMemory(
        local_ip,
        public_ip,
        verdict.mapping,
        verdict.filtering,
        lifetime,
        time.time() if now is None else now,
    )
    known[local_ip] = asdict(entry)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(known, indent=2), encoding="utf-8")
        tmp.replace(path)
    except OSError:
        return None
    return path


def recall(local_ip: str, now: float | None = None) -> NatMemory | None:
    """What is known about the NAT in front of `local_ip`, if measured recently."""
    raw = _load(memory_path()).get(local_ip)
    if not isinstance(raw, dict):
        return None
    measured_at, lifetime = raw.get("measured_at"), raw.get("lifetime")
    texts = [raw.get(k) for k in ("public_ip", "mapping", "filtering")]
    if not isinstance(measured_at, int | float) or not isinstance(texts[0], str):
        return None
    if not all(t is None or isinstance(t, str) for t in texts[1:]):
        return None
    if lifetime is not None and not isinstance(lifetime, int | float):
        return None
    age = (time.time() if now is None else now) - measured_at
    if not 0 <= age <= MAX_AGE:
        return None
    mapping, filtering = (t if isinstance(t, str) else None for t in texts[1:])
    return NatMemory(
        local_ip,
        texts[0],
        mapping,
        filtering,
        None if lifetime is None else float(lifetime),
        float(measured_at),
    )
