"""The command line's identity: which key file is yours, opening it, and pinning peers' keys."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from voip.cli_output import UsageError
from voip.security.identity import Identity
from voip.security.identity import IdentityError
from voip.security.identity import default_identity_path
from voip.security.identity import load_identity
from voip.security.identity import load_or_create
from voip.security.known_peers import KnownPeers
from voip.security.known_peers import KnownPeersError


def add_identity_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--identity",
        metavar="PATH",
        help="your key file (default: $XDG_CONFIG_HOME/callpeer/identity, made on first use)",
    )


def identity_path(arg: str | None) -> Path:
    """Where the identity is: the default place, or --identity when it can name a key file.
    A path that cannot (empty, a directory, in a directory that does not exist) is what the
    user typed, exit 2; a file there that is unusable is exit 1, as at the default place."""
    if arg is None:
        return default_identity_path()
    if not arg:
        raise UsageError("--identity: an empty path; give the key file's path")
    path = Path(arg).expanduser()
    if path.is_dir():
        raise UsageError(f"--identity: {path} is a directory; give the key file's path")
    if not path.parent.is_dir():
        # Not made for you: a typo would otherwise leave a new key in a new folder tree.
        raise UsageError(f"--identity: no directory {path.parent} to keep a key in")
    return path


def open_identity(path: Path, err: Console, note: str = "") -> Identity:
    """The identity at `path`, made on first use and said so with its fingerprint (on `err`:
    stdout may be JSON); IdentityError when the file there cannot be used."""
    try:
        identity, created = load_or_create(path)
    except IdentityError:
        if not path.exists():
            raise
        # Two callpeers started at once on first use (both sides of a call on one machine):
        # the other made the key a moment ago and won the race. Take that one.
        identity, created = load_identity(path), False
    if created:
        err.print(
            f"created a new identity at {path}, fingerprint {identity.fingerprint}{note}",
            highlight=False,
        )
    return identity


class CallKnownPeers(KnownPeers):
    """known_peers for a call: a key that cannot be written down (a read-only config folder,
    a full disk) is a warning, not an error inside the handshake that would stall the call."""

    def __init__(self, path: Path, warn: Callable[[str], None]):
        super().__init__(path)
        self._warn = warn

    def pin(self, name: str, fp: str) -> None:
        try:
            super().pin(name, fp)
        except KnownPeersError as exc:
            self._warn(
                f"could not remember {name}'s key ({exc}): the next call with {name} will be "
                "a first call again"
            )
