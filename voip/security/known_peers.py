"""known_peers: the keys a caller has met, by name, as SSH's known_hosts (trust on first use).

One line per peer, `NAME SHA256:...`, in `$XDG_CONFIG_HOME/callpeer/known_peers` (mode 0600).
A first call records the key the peer proved in the handshake as soon as it ends, as ssh does
on "yes": the people compare the SAS aloud during that call, and if it did not match, the pin
is what they must remove (`callpeer trust` with the right key). A later call with another key
is stopped before any audio, unless the user accepts the new one. `callpeer trust NAME
FINGERPRINT` pins a key ahead of any call.
"""

from __future__ import annotations

import base64
import enum
import os
import re
from dataclasses import dataclass
from pathlib import Path

from voip.security.identity import config_dir
from voip.security.identity import fingerprint
from voip.wire.signal import check_name

FINGERPRINT_RE = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


class KnownPeersError(Exception):
    """The known_peers file cannot be read or written, or a line in it is damaged."""


def check_fingerprint(fp: str) -> str:
    """A fingerprint as `callpeer whoami` prints it, or ValueError saying what one looks like."""
    if not FINGERPRINT_RE.fullmatch(fp) or not _canonical(fp):
        raise ValueError(
            f"bad fingerprint {fp!r}: expected 'SHA256:' and 43 base64 characters, "
            "as 'callpeer whoami' prints it"
        )
    return fp


def _canonical(fp: str) -> bool:
    """The base64 of a 32-byte digest, written as we write it (the last character's spare
    bits zero): one key, one spelling, so comparing text compares keys."""
    digest = base64.b64decode(fp.removeprefix("SHA256:") + "=")
    return len(digest) == 32 and base64.b64encode(digest).decode().rstrip("=") == fp[7:]


def default_known_peers_path() -> Path:
    return config_dir() / "known_peers"


class Trust(enum.Enum):
    FIRST = "first"  # never met: trusted now, for the first time (compare the SAS)
    VERIFIED = "verified"  # the key we pinned before
    CHANGED = "changed"  # not the key we pinned: stop


@dataclass(frozen=True)
class Verdict:
    trust: Trust
    fingerprint: str  # the key the peer proved
    pinned: str | None = None  # what we had for it, when it differs


class KnownPeers:
    def __init__(self, path: Path | None = None):
        """`path` None: kept in memory only (the embedded demo, tests)."""
        self.path = path
        self._pins: dict[str, str] = self._read() if path is not None else {}

    def pinned(self, name: str) -> str | None:
        return self._pins.get(name)

    def check(self, name: str, public: bytes) -> Verdict:
        fp = fingerprint(public)
        pinned = self._pins.get(name)
        if pinned is None:
            return Verdict(Trust.FIRST, fp)
        if pinned == fp:
            return Verdict(Trust.VERIFIED, fp)
        return Verdict(Trust.CHANGED, fp, pinned)

    def pin(self, name: str, fp: str) -> None:
        """Trust `fp` for `name` from now on, replacing what was there."""
        check_name(name)
        check_fingerprint(fp)
        if self.path is not None:
            self._pins = self._read()  # what another callpeer pinned since we read it stays
        self._pins[name] = fp
        if self.path is not None:
            self._write()

    def _read(self) -> dict[str, str]:
        assert self.path is not None
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            raise KnownPeersError(f"cannot read {self.path}: {exc}") from exc
        pins: dict[str, str] = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields = line.split()
            try:
                if len(fields) != 2:
                    raise ValueError("expected NAME FINGERPRINT")
                pins[check_name(fields[0])] = check_fingerprint(fields[1])
            except ValueError as exc:
                raise KnownPeersError(f"{self.path}, line {number}: {exc}") from exc
        return pins

    def _write(self) -> None:
        """Written whole to a 0600 file beside it, then renamed over it: a crash leaves the old
        file or the new one, never half of one."""
        assert self.path is not None
        body = "".join(f"{name} {fp}\n" for name, fp in sorted(self._pins.items()))
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(body)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise KnownPeersError(f"cannot write {self.path}: {exc}") from exc
