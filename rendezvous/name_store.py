"""Which key owns which name at the rendezvous: trust on first use, kept in SQLite.

A name is bound to the first identity key that registers it (and proves it holds the key, see
rendezvous/logic.py); from then on only that key may use it, online or not. The bindings
survive restarts in a local SQLite file (`callpeer-rendezvous --store`); ":memory:" keeps
nothing, for tests and the embedded rendezvous. This is the one place the server's logic
touches a disk: on a new claim, and when a name is seen again after a long while (last_seen
is written at most once per TOUCH_INTERVAL, never on every refresh). A binding not seen for
`max_age` is released, so names claimed and abandoned do not fill the store forever.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

MEMORY = ":memory:"
TOUCH_INTERVAL = 3600.0  # s between writes of a name's last_seen
# A name seen on one day only (claimed, used, never back) is on probation: released after
# PROBATION unseen rather than max_age, so claims a stranger makes and drops cannot hold the
# store for a year. Seen again a day or more after its claim, it is kept the full max_age.
PROBATION = 7 * 86400.0
SETTLED_AFTER = 86400.0
DEFAULT_MAX_AGE_DAYS = 365
SCHEMA_VERSION = 1
BUSY_TIMEOUT = 1.0  # s to wait for another process's write; a datagram handler waits on it

_SCHEMA = """
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY,
    key BLOB NOT NULL,
    first_claimed REAL NOT NULL,
    last_seen REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS names_by_last_seen ON names (last_seen);
"""


class NameStoreError(Exception):
    """The store cannot be opened, read or written, in words a server operator can act on."""


@dataclass(frozen=True)
class Binding:
    name: str
    key: bytes  # the owner's X25519 identity public key
    first_claimed: float  # wall-clock seconds (Unix time)
    last_seen: float


def default_store_path() -> Path:
    """$XDG_STATE_HOME/callpeer-rendezvous/names.sqlite3 (~/.local/state when unset)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "callpeer-rendezvous" / "names.sqlite3"


class NameStore:
    """Bindings of names to keys. Every method raises NameStoreError, and only that, when the
    database fails; the caller decides what a request gets then."""

    def __init__(self, path: str | Path = MEMORY, *, max_age_days: int = DEFAULT_MAX_AGE_DAYS):
        self.path = str(path)
        self.max_age = max_age_days * 86400.0
        try:
            if self.path != MEMORY:
                _create_private(Path(self.path))
            # Autocommit: each claim is one statement, atomic on its own, even against another
            # process sharing the file. Any thread: a server built in one thread may serve from
            # another's event loop, one at a time, and a refusal there would be a silent 508.
            self._db = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
            self._setup_retrying()
            self._count = int(self._db.execute("SELECT COUNT(*) FROM names").fetchone()[0])
        except (OSError, sqlite3.Error) as exc:
            raise NameStoreError(f"cannot open the name store {self.path}: {_why(exc)}") from exc

    def _setup_retrying(self) -> None:
        """Two servers opening one new file at once: switching it to WAL takes a lock that
        SQLite's busy timeout does not wait for, so the loser tries again a moment later."""
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                self._setup()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def _setup(self) -> None:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"made by a newer callpeer-rendezvous (v{version})")
        if self.path != MEMORY:
            # WAL: readers never wait on the writer; NORMAL: a power cut may lose the last
            # claims (their owners claim again) but never corrupts the file.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def __len__(self) -> int:
        return self._count

    def lookup(self, name: str, wall: float) -> Binding | None:
        """The binding of `name`, or None when it is free (never claimed, or released)."""
        try:
            row = self._db.execute(
                "SELECT key, first_claimed, last_seen FROM names WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                return None
            try:
                binding = Binding(name, bytes(row[0]), float(row[1]), float(row[2]))
            except (TypeError, ValueError) as exc:  # a damaged row: no binding we can trust
                raise NameStoreError(f"name store {self.path}: a damaged row for {name!r}") from exc
            if not self._expired(binding, wall):
                return binding
            # Unseen too long: released now, whatever the next purge would have done.
            self._count -= self._db.execute("DELETE FROM names WHERE name = ?", (name,)).rowcount
            return None
        except sqlite3.Error as exc:
            raise NameStoreError(f"name store {self.path}: {_why(exc)}") from exc

    def claim(self, name: str, key: bytes, wall: float) -> bool:
        """Bind a free `name` to `key`: True if it is now bound to it, False if another
        claim came first (another process on the same file)."""
        try:
            cursor = self._db.execute(
                "INSERT INTO names (name, key, first_claimed, last_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING",
                (name, key, wall, wall),
            )
        except sqlite3.Error as exc:
            raise NameStoreError(f"name store {self.path}: {_why(exc)}") from exc
        self._count += cursor.rowcount
        return cursor.rowcount == 1

    def touch(self, binding: Binding, wall: float) -> bool:
        """Note that the owner was seen: written only when the stored time is an interval old,
        so a name refreshed every few seconds costs a write an hour. True when written."""
        if wall - binding.last_seen < TOUCH_INTERVAL:
            return False
        try:
            self._db.execute(
                "UPDATE names SET last_seen = ? WHERE name = ? AND key = ?",
                (wall, binding.name, binding.key),
            )
        except sqlite3.Error as exc:
            raise NameStoreError(f"name store {self.path}: {_why(exc)}") from exc
        return True

    def _expired(self, binding: Binding, wall: float) -> bool:
        unseen = wall - binding.last_seen
        settled = binding.last_seen - binding.first_claimed >= SETTLED_AFTER
        return unseen > (self.max_age if settled else min(self.max_age, PROBATION))

    def purge(self, wall: float) -> int:
        """Release every binding unseen for max_age, or for PROBATION if it was seen on one
        day only; how many went."""
        probation = min(self.max_age, PROBATION)
        try:
            gone = self._db.execute(
                "DELETE FROM names WHERE last_seen < ? OR "
                "(last_seen - first_claimed < ? AND last_seen < ?)",
                (wall - self.max_age, SETTLED_AFTER, wall - probation),
            ).rowcount
        except sqlite3.Error as exc:
            raise NameStoreError(f"name store {self.path}: {_why(exc)}") from exc
        self._count -= gone
        return int(gone)

    def close(self) -> None:
        self._db.close()


def _create_private(path: Path) -> None:
    """The file (and its directory, if missing) readable by the server's user alone: the
    store says who uses this server, and when."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
