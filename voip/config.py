"""User configuration: $XDG_CONFIG_HOME/callpeer/config.toml and CALLPEER_* variables (tomllib)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

OFF = frozenset({"0", "off", "no", "false"})
ON = frozenset({"1", "on", "yes", "true"})


@dataclass(frozen=True)
class Config:
    server: str | None = None  # HOST:PORT of the rendezvous
    name: str | None = None  # the name to register as
    port_mapping: bool = True  # ask the router to open a port for calls (PCP, NAT-PMP)
    source: Path | None = None  # the file it came from, for error messages


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "callpeer" / "config.toml"


def load_config(path: Path | None = None) -> Config:
    """The config file (if any) overlaid with CALLPEER_SERVER / CALLPEER_NAME /
    CALLPEER_PORT_MAPPING; ValueError if bad."""
    path = path or config_path()
    data: dict[str, object] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from exc
    for key in ("server", "name"):
        if key in data and not isinstance(data[key], str):
            raise ValueError(f"{path}: '{key}' must be a string")
    mapping = data.get("port_mapping", True)
    if not isinstance(mapping, bool):
        raise ValueError(f"{path}: 'port_mapping' must be true or false")
    if (env := os.environ.get("CALLPEER_PORT_MAPPING", "").strip().lower()) in OFF:
        mapping = False
    elif env and env not in ON:
        raise ValueError(f"CALLPEER_PORT_MAPPING={env!r}: say on or off")
    server = os.environ.get("CALLPEER_SERVER") or data.get("server")
    name = os.environ.get("CALLPEER_NAME") or data.get("name")
    return Config(
        server=server if isinstance(server, str) else None,
        name=name if isinstance(name, str) else None,
        port_mapping=mapping,
        source=path if path.exists() else None,
    )
