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
    servers: tuple[str, ...] = ()  # HOST:PORT of the rendezvous; several: the next if one dies
    name: str | None = None  # the name to register as
    port_mapping: bool = True  # ask the router to open a port for calls (PCP, NAT-PMP)
    source: Path | None = None  # the file it came from, for error messages

    @property
    def server(self) -> str | None:
        """The first rendezvous (natcheck probes with one)."""
        return self.servers[0] if self.servers else None


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "callpeer" / "config.toml"


def load_config(path: Path | None = None) -> Config:
    """The config file (if any) overlaid with CALLPEER_SERVER / CALLPEER_NAME /
    CALLPEER_PORT_MAPPING; ValueError if bad. 'server' is a string or a list of them, and
    CALLPEER_SERVER may name several, separated by commas."""
    path = path or config_path()
    data: dict[str, object] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from exc
    if "name" in data and not isinstance(data["name"], str):
        raise ValueError(f"{path}: 'name' must be a string")
    servers = _servers(data.get("server", []))
    if servers is None:
        raise ValueError(f"{path}: 'server' must be a string or a list of strings")
    mapping = data.get("port_mapping", True)
    if not isinstance(mapping, bool):
        raise ValueError(f"{path}: 'port_mapping' must be true or false")
    if (env := os.environ.get("CALLPEER_PORT_MAPPING", "").strip().lower()) in OFF:
        mapping = False
    elif env and env not in ON:
        raise ValueError(f"CALLPEER_PORT_MAPPING={env!r}: say on or off")
    if env_servers := os.environ.get("CALLPEER_SERVER"):
        servers = tuple(s.strip() for s in env_servers.split(",") if s.strip())
    name = os.environ.get("CALLPEER_NAME") or data.get("name")
    return Config(
        servers=servers,
        name=name if isinstance(name, str) else None,
        port_mapping=mapping,
        source=path if path.exists() else None,
    )


def _servers(value: object) -> tuple[str, ...] | None:
    """'server' as the file gives it: one string or a list of them (None if neither)."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None
