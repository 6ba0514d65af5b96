"""The identity file and known_peers on disk: modes, reloading, damage, and what users are told."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from voip.security.identity import Identity
from voip.security.identity import IdentityError
from voip.security.identity import default_identity_path
from voip.security.identity import fingerprint
from voip.security.identity import load_identity
from voip.security.identity import load_or_create
from voip.security.identity import short_fingerprint
from voip.security.known_peers import KnownPeers
from voip.security.known_peers import KnownPeersError
from voip.security.known_peers import Trust
from voip.security.known_peers import check_fingerprint
from voip.security.known_peers import default_known_peers_path


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every default path under tmp_path: no test may touch the real ~/.config."""
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_default_paths_follow_xdg_config_home(config_home: Path) -> None:
    assert default_identity_path() == config_home / "callpeer" / "identity"
    assert default_known_peers_path() == config_home / "callpeer" / "known_peers"


def test_first_use_creates_a_0600_key_in_a_0700_folder_and_reloads_it(config_home: Path) -> None:
    identity, created = load_or_create()
    path = config_home / "callpeer" / "identity"
    assert created and identity.path == path
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    again, created_again = load_or_create()
    assert not created_again
    assert again.fingerprint == identity.fingerprint
    assert again.private_bytes == identity.private_bytes


def test_fingerprint_is_ssh_style() -> None:
    identity = Identity.generate()
    fp = identity.fingerprint
    assert fp.startswith("SHA256:") and len(fp) == len("SHA256:") + 43
    assert check_fingerprint(fp) == fp
    assert fp == fingerprint(identity.public)
    assert short_fingerprint(fp) == fp[7:19]


@pytest.mark.parametrize("loose", [0o640, 0o604, 0o644])
def test_a_key_others_can_read_is_refused_with_the_chmod_to_run(loose: int) -> None:
    identity, _ = load_or_create()
    assert identity.path is not None
    identity.path.chmod(loose)
    with pytest.raises(IdentityError) as caught:
        load_or_create()
    message = str(caught.value)
    assert "readable by other users" in message
    assert f"chmod 600 {identity.path}" in message


@pytest.mark.parametrize(
    "text",
    [
        "",
        "callpeer identity v1\n",
        "callpeer identity v1\nnot-base64!!\n",
        "callpeer identity v1\nAAAA\n",  # base64, but not 32 bytes
        "some other file\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    ],
)
def test_a_damaged_identity_is_named_as_such(tmp_path: Path, text: str) -> None:
    path = tmp_path / "identity"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(IdentityError, match=r"the identity at .*identity is damaged"):
        load_identity(path)


def test_a_missing_identity_is_an_identity_error(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="no identity at"):
        load_identity(tmp_path / "nothing")


def test_a_config_folder_that_cannot_be_made_is_an_identity_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(IdentityError, match="cannot create an identity"):
        load_or_create(blocker / "callpeer" / "identity")


def test_known_peers_round_trip_in_a_0600_file(config_home: Path) -> None:
    path = default_known_peers_path()
    bob, carol = Identity.generate(), Identity.generate()
    known = KnownPeers(path)
    assert known.pinned("bob") is None
    assert known.check("bob", bob.public).trust is Trust.FIRST
    known.pin("bob", bob.fingerprint)
    known.pin("carol", carol.fingerprint)
    assert mode(path) == 0o600
    assert path.read_text() == f"bob {bob.fingerprint}\ncarol {carol.fingerprint}\n"
    reread = KnownPeers(path)
    assert reread.pinned("bob") == bob.fingerprint
    assert reread.check("bob", bob.public).trust is Trust.VERIFIED
    changed = reread.check("bob", carol.public)
    assert changed.trust is Trust.CHANGED
    assert (changed.pinned, changed.fingerprint) == (bob.fingerprint, carol.fingerprint)


def test_in_memory_known_peers_write_nothing(config_home: Path) -> None:
    known = KnownPeers()
    known.pin("bob", Identity.generate().fingerprint)
    assert known.pinned("bob") is not None
    assert not config_home.exists()


def test_a_damaged_known_peers_line_is_named_by_number(tmp_path: Path) -> None:
    path = tmp_path / "known_peers"
    path.write_text(f"# pins\nbob {Identity.generate().fingerprint}\ncarol SHA256:short\n")
    with pytest.raises(KnownPeersError, match=r"known_peers, line 3: bad fingerprint"):
        KnownPeers(path)


@pytest.mark.parametrize(
    "bad", ["", "SHA256:", "sha256:" + "A" * 43, "SHA256:" + "A" * 42, "SHA256:" + "!" * 43]
)
def test_check_fingerprint_says_what_one_looks_like(bad: str) -> None:
    with pytest.raises(ValueError, match="expected 'SHA256:' and 43 base64 characters"):
        check_fingerprint(bad)
