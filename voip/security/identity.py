"""A caller's long-term identity: one X25519 key pair in a mode-0600 file, and its fingerprint.

The same key proves a name at the rendezvous (voip/security/registration.py agrees a MAC key
from it) and is the static key of the call's Noise handshake (voip/security/noise.py), which is
what the peer pins in its known_peers. Its fingerprint is written as SSH writes one:
`SHA256:` and the unpadded base64 of the SHA-256 of the 32-byte public key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

PUBLIC_KEY_BYTES = 32
FILE_HEADER = "callpeer identity v1"


class IdentityError(Exception):
    """An identity file that cannot be read or written, in words a user can act on."""


def fingerprint(public: bytes) -> str:
    digest = hashlib.sha256(public).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def short_fingerprint(fp: str) -> str:
    """The first 12 characters after `SHA256:`: enough to tell two keys apart when shown."""
    return fp.removeprefix("SHA256:")[:12]


def default_identity_path() -> Path:
    return config_dir() / "identity"


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "callpeer"


@dataclass(frozen=True)
class Identity:
    private: X25519PrivateKey
    public: bytes
    path: Path | None = None  # None: made for this run only (tests, the embedded demo)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    @property
    def private_bytes(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @classmethod
    def generate(cls, path: Path | None = None) -> Identity:
        private = X25519PrivateKey.generate()
        return cls(private, _public(private), path)

    @classmethod
    def from_private_bytes(cls, raw: bytes, path: Path | None = None) -> Identity:
        if len(raw) != 32:
            raise IdentityError("an X25519 private key is 32 bytes")
        private = X25519PrivateKey.from_private_bytes(raw)
        return cls(private, _public(private), path)


def _public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def load_identity(path: Path) -> Identity:
    """The identity in `path`; IdentityError if it is missing, unreadable, malformed, or
    readable by others (as ssh refuses a private key other users can read)."""
    try:
        mode = path.stat().st_mode & 0o777
        lines = path.read_text(encoding="ascii").split()
    except FileNotFoundError as exc:
        raise IdentityError(f"no identity at {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise IdentityError(f"cannot read the identity at {path}: {exc}") from exc
    if mode & 0o077:
        raise IdentityError(
            f"the identity at {path} is readable by other users (mode {mode:o}): "
            f"run 'chmod 600 {path}'"
        )
    header = " ".join(lines[:3])
    try:
        if header != FILE_HEADER or len(lines) != 4:
            raise ValueError("not a callpeer identity file")
        return Identity.from_private_bytes(base64.b64decode(lines[3], validate=True), path)
    except (ValueError, IdentityError) as exc:
        raise IdentityError(f"the identity at {path} is damaged: {exc}") from exc


def save_identity(identity: Identity, path: Path) -> None:
    """Write the key where only its owner can read it: created 0600, never widened. Written to
    a file of its own and linked into place, so nobody ever reads half a key, and two callpeers
    creating one at the same moment cannot both win (FileExistsError for the one that lost)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise IdentityError(f"cannot create an identity at {path}: {exc}") from exc
    body = FILE_HEADER + "\n" + base64.b64encode(identity.private_bytes).decode() + "\n"
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(body)
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        raise IdentityError(f"cannot create an identity at {path}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def load_or_create(path: Path | None = None) -> tuple[Identity, bool]:
    """The identity at `path` (the default place if None), made on first use. True when it
    was just created, so the caller can say so and print the fingerprint."""
    path = path or default_identity_path()
    if path.exists():
        return load_identity(path), False
    identity = Identity.generate(path)
    try:
        save_identity(identity, path)
    except FileExistsError:  # another callpeer made it a moment ago: that one is ours
        return load_identity(path), False
    return identity, True
