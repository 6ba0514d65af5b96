"""The `callpeer` and `callpeer-rendezvous` commands, run as a user runs them."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from argparse import Namespace
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from typing import ClassVar

import pytest
from rich.console import Console

from voip import cli
from voip.call import CallError
from voip.call import CallOptions
from voip.cli_output import Presenter
from voip.codecs.pcm import dominant_frequency
from voip.events import CallEvent
from voip.events import Connected
from voip.events import Ended
from voip.events import Secured
from voip.media.audio_io import read_wav
from voip.report import CallReport
from voip.security.identity import Identity
from voip.security.summary import SecurityReport
from voip.wire.turn import REST_CREDENTIAL_TTL
from voip.wire.turn import rest_expiry
from voip.wire.turn import rest_password

BIN = Path(sys.executable).parent
SILENT = ("--input", "silence", "--output", "null")  # no sound card needed
COMMANDS = ("call", "demo", "lab", "natcheck", "devices", "whoami", "trust")


def env(tmp_path: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.pop("CALLPEER_SERVER", None)
    # Calls bound to every address would ask this machine's router for a port: tests send to
    # loopback only.
    e["CALLPEER_PORT_MAPPING"] = "off"
    e.pop("CALLPEER_NAME", None)
    e["XDG_CONFIG_HOME"] = str(tmp_path / "config")  # no user config leaks into a test
    # ...nor natcheck's memory, nor the rendezvous's name store (names bound to keys, kept
    # for a year): a name one test claimed would be refused to the next, and the real home
    # would be written.
    e["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    e["XDG_STATE_HOME"] = str(tmp_path / "state")
    e["COLUMNS"] = "120"
    return e


def callpeer(*args: str, tmp_path: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "callpeer"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(tmp_path),
        cwd=tmp_path,
        check=False,
    )


def start_rendezvous(home: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """callpeer-rendezvous with `args` (on 127.0.0.1:0 unless they name a --listen), its name
    store under `home`: the process and the HOST:PORT it listens on, once it says so."""
    listen = [] if any(a.startswith("--listen") for a in args) else ["--listen", "127.0.0.1:0"]
    proc = subprocess.Popen(
        [str(BIN / "callpeer-rendezvous"), *listen, *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env(home),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on udp" in line, line
    return proc, line.rsplit(" ", 1)[1].strip()


@contextlib.contextmanager
def running_rendezvous(tmp_path: Path) -> Iterator[str]:
    """A callpeer-rendezvous on loopback, its name store under tmp_path: its HOST:PORT."""
    proc, address = start_rendezvous(tmp_path)
    try:
        yield address
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def rendezvous(tmp_path: Path) -> Iterator[str]:
    with running_rendezvous(tmp_path) as address:
        yield address


def port_3478_free() -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", 3478))
        except OSError as exc:
            return exc.errno != errno.EADDRINUSE
    return True


@pytest.mark.slow
@pytest.mark.skipif(not port_3478_free(), reason="something already listens on udp 127.0.0.1:3478")
def test_two_terminals_with_no_setup_hear_each_other(tmp_path: Path) -> None:
    """The README's two-terminal call, as written: no server given, none running."""
    procs = []
    for me, peer, hz, wav in (("alice", "bob", 440, "a.wav"), ("bob", "alice", 660, "b.wav")):
        procs.append(
            subprocess.Popen(
                [
                    str(BIN / "callpeer"),
                    "--as",
                    me,
                    peer,
                    "--input",
                    f"tone:{hz}",
                    "--output",
                    wav,
                    "--duration",
                    "3",
                    "--json",
                    f"{me}.json",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env(tmp_path),
                cwd=tmp_path,
            )
        )
    outputs = [p.communicate(timeout=40) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    assert "hosting one in this process" in outputs[0][1] + outputs[1][1]
    for me, wav, heard in (("alice", "a.wav", 660), ("bob", "b.wav", 440)):
        report = json.loads((tmp_path / f"{me}.json").read_text())
        assert report["path"] == "direct"
        assert report["paths"]["direct"]["rtt_ms"]["samples"] >= 2
        assert report["paths"]["direct"]["rtt_ms"]["median"] > 0
        pcm, rate = read_wav(tmp_path / wav)
        assert rate == 48000 and len(pcm) > 2 * rate
        assert dominant_frequency(pcm) == pytest.approx(heard, abs=3)


@pytest.mark.slow
def test_demo_prints_a_report_and_json(tmp_path: Path) -> None:
    result = callpeer("demo", "--duration", "1.5", "--json", "-", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["path"] == "direct"
    assert report["demo"]["heard_hz"]["alice"] == pytest.approx(660, abs=3)
    assert "RTT median" in result.stderr  # the table went to stderr, leaving stdout to JSON
    # Encrypted, each side with a key of its own made for the demo, met for the first time...
    security, bobs = report["security"], report["demo"]["bob"]["security"]
    assert security["trust"] == bobs["trust"] == "first"
    assert security["sas"] == bobs["sas"]
    assert security["peer_fingerprint"] != bobs["peer_fingerprint"]
    assert "alice: encrypted: AES-128-GCM; first call with bob: compare the code" in result.stderr
    assert f"both show the code {security['sas']!r}" in result.stderr
    # ...and the user's own identity and known_peers never made or touched.
    assert not (tmp_path / "config").exists()


def test_unknown_peer_times_out_with_a_clear_message(tmp_path: Path, rendezvous: str) -> None:
    result = callpeer(
        "--as",
        "alice",
        "nobody",
        "--server",
        rendezvous,
        *SILENT,
        "--wait",
        "1",
        tmp_path=tmp_path,
    )
    assert result.returncode == 1
    assert "nobody did not call back within 1 s" in result.stderr
    assert "callpeer --as nobody alice" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ("127.0.0.1:99999", "port must be 1-65535"),
        ("no-such-host.invalid:3478", "cannot resolve"),
        (":3478", "no host"),
    ],
)
def test_bad_server_address(tmp_path: Path, server: str, message: str) -> None:
    result = callpeer(
        "--as",
        "alice",
        "bob",
        "--server",
        server,
        *SILENT,
        tmp_path=tmp_path,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_unreadable_wav_is_refused_before_anything_starts(tmp_path: Path) -> None:
    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEjunk")
    result = callpeer(
        "--as", "alice", "bob", "--input", "broken.wav", "--output", "null", tmp_path=tmp_path
    )
    assert result.returncode == 2
    assert "broken.wav is not a readable PCM WAV file" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--as", "bad name", "bob"], "bad name"),
        (["--as", "alice", "alice"], "cannot call yourself"),
        (["--as", "alice", "bob", "--input", "tone:abc"], "expected tone:HZ"),
        (["--as", "alice", "bob", "--turn-secret", "x"], "go with --turn"),
        (["--as", "alice", "bob", "--turn", "stun:example.org"], "expected turn:HOST:PORT"),
        (["--as", "alice", "bob", "--turn", "turn:127.0.0.1:3478"], "--turn needs --turn-secret"),
    ],
)
def test_bad_input_is_a_usage_error(tmp_path: Path, args: list[str], message: str) -> None:
    result = callpeer(*args, "--output", "null", tmp_path=tmp_path)
    assert result.returncode == 2 and message in result.stderr


def test_missing_sound_card_names_the_alternatives(tmp_path: Path) -> None:
    try:
        import sounddevice

        if len(sounddevice.query_devices()) > 0:
            pytest.skip("this machine has a sound device")
    except OSError:
        pass  # no PortAudio at all: the message must say so too
    result = callpeer(
        "--as", "alice", "bob", "--input", "mic", "--output", "null", tmp_path=tmp_path
    )
    assert result.returncode == 1
    assert "--input tone:440" in result.stderr and "Traceback" not in result.stderr


def rendezvous_command(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "callpeer-rendezvous"), *args],
        capture_output=True,
        text=True,
        timeout=10,
        env=env(tmp_path),
        check=False,
    )


def test_rendezvous_turn_url_needs_the_secret(tmp_path: Path) -> None:
    result = rendezvous_command("--turn-url", "turn:127.0.0.1:1", tmp_path=tmp_path)
    assert result.returncode == 2 and "--turn-url needs --turn-secret" in result.stderr


def test_rendezvous_command_rejects_bad_listen_address(tmp_path: Path) -> None:
    result = rendezvous_command("--listen", "127.0.0.1:http", tmp_path=tmp_path)
    assert result.returncode == 2 and "port must be 0-65535" in result.stderr


@pytest.mark.parametrize(
    ("choice", "said"),
    [
        ("auto", "in batches (C: recvmmsg, sendmmsg)"),
        ("batched", "in batches (C: recvmmsg, sendmmsg)"),
        ("python", "in Python (--forward python)"),
    ],
)
def test_rendezvous_says_how_it_forwards_live_channels(
    tmp_path: Path, choice: str, said: str
) -> None:
    proc, _ = start_rendezvous(tmp_path, "--relay-address=127.0.0.1", f"--forward={choice}")
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        assert f"live channels forwarded {said}\n" in lines, lines
    finally:
        proc.terminate()
        proc.wait(5)


def test_python_m_rendezvous_answers_stun(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rendezvous", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env(tmp_path),
    )
    try:
        assert proc.stdout is not None
        host, port = proc.stdout.readline().rsplit(" ", 1)[1].strip().split(":")
        from voip.wire.stun import Class
        from voip.wire.stun import Message
        from voip.wire.stun import Method
        from voip.wire.stun import encode
        from voip.wire.stun import parse_message_untrusted

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.bind(("127.0.0.1", 0))
            s.sendto(encode(Message(Method.BINDING, Class.REQUEST)), (host, int(port)))
            reply = parse_message_untrusted(s.recv(1500))
            assert reply.xor_address() == s.getsockname()
    finally:
        proc.terminate()
        proc.wait(5)


def test_sigterm_hangs_up_and_frees_the_name(tmp_path: Path, rendezvous: str) -> None:
    args = [
        "--as",
        "alice",
        "bob",
        "--server",
        rendezvous,
        *SILENT,
    ]
    proc = subprocess.Popen(
        [str(BIN / "callpeer"), *args, "--wait", "60"],
        stderr=subprocess.PIPE,
        text=True,
        env=env(tmp_path),
        cwd=tmp_path,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "waiting for bob" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(10) == 128 + signal.SIGTERM
    assert "call ended: hung up" in rest
    # Without LEAVE the name would stay held for the 30 s lifetime and this would get 409.
    again = callpeer(*args, "--wait", "1", tmp_path=tmp_path)
    assert again.returncode == 1
    # (Not "409" alone: a port number in the output may contain it.)
    assert "did not call back" in again.stderr and "refused us" not in again.stderr


# -- commands, the PEER shorthand and exit statuses ------------------------------------------


def run_main(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    """`callpeer` in this process, for what needs a monkeypatch or only parses its arguments:
    (exit status, stdout, stderr), argparse's own exits included."""
    for key, value in env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("CALLPEER_SERVER", raising=False)
    monkeypatch.delenv("CALLPEER_NAME", raising=False)
    monkeypatch.chdir(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    try:
        status = cli.main(argv)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    return status, out.getvalue(), err.getvalue()


def test_callpeer_help_lists_every_command_with_a_line(tmp_path: Path) -> None:
    result = callpeer("--help", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for command in COMMANDS:
        [line] = [x for x in lines if x.split()[:1] == [command]]
        assert len(line.split()) > 3, line  # a description after the name
    assert "callpeer [call options] PEER" in result.stdout
    assert "callpeer call lab" in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_its_own_help(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, out, _ = run_main([command, "--help"], tmp_path, monkeypatch)
    assert status == 0
    assert out.startswith(f"usage: callpeer {command} [-h]")


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (
            "call",
            [
                "--as",
                "--relay",
                "--turn-secret",
                "--no-fec",
                "--timeline",
                "PEER",
                "--identity",
                "--accept-new-key",
            ],
        ),
        ("demo", ["--duration", "--json"]),
        ("lab", ["--nat-a", "--same-nat", "--udp-timeout-b", "--no-speech", "--relay"]),
        ("natcheck", ["--server", "--lifetime", "--json"]),
        ("whoami", ["--as", "--identity", "--json"]),
        ("trust", ["NAME", "FINGERPRINT"]),
    ],
)
def test_commands_keep_their_options(
    command: str, options: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out, _ = run_main([command, "--help"], tmp_path, monkeypatch)
    for option in options:
        assert option in out


def test_options_may_come_before_or_after_peer() -> None:
    for words in (["--as", "alice", "bob", "--wait", "3"], ["bob", "--wait", "3", "--as", "alice"]):
        args = cli.parse_args(words)
        assert (args.command, args.name, args.peer, args.wait) == ("call", "alice", "bob", 3.0)
    assert cli.parse_args(["call", "--as", "alice", "bob"]).peer == "bob"
    assert cli.parse_args(["lab", "--nat-a", "symmetric"]).command == "lab"


@pytest.mark.parametrize(
    ("args", "who", "hint"),
    [
        # `call` spelled out: a person named like a command is called, not the command run.
        (["call", "--as", "alice", "lab"], "lab", "they run: callpeer --as lab alice"),
        # Being named like a command is fine; the peer is told to spell `call` out.
        (["--as", "lab", "bob"], "bob", "they run: callpeer call --as bob lab"),
    ],
)
def test_call_lab_calls_someone_named_lab(
    tmp_path: Path, rendezvous: str, args: list[str], who: str, hint: str
) -> None:
    result = callpeer(*args, "--server", rendezvous, *SILENT, "--wait", "1", tmp_path=tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"{who} did not call back within 1 s" in result.stderr
    assert hint in result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_name_as_peer_without_call_says_what_to_type(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, _, err = run_main(["--as", "alice", command, "--wait", "1"], tmp_path, monkeypatch)
    assert status == 2
    assert f"callpeer call --as alice {command} --wait 1" in err
    assert f"callpeer {command} --help" in err
    assert "Traceback" not in err


def test_a_command_name_as_peer_is_refused_before_other_options_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, _, err = run_main(["--as", "alice", "lab", "--nat-a", "cone"], tmp_path, monkeypatch)
    assert status == 2 and "callpeer call --as alice lab --nat-a cone" in err


def test_ambiguous_peer_through_the_installed_command(tmp_path: Path) -> None:
    result = callpeer("--as", "alice", "lab", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "to call someone named lab, type: callpeer call --as alice lab" in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--as", "alice", "bob", "--bogus"], "unrecognized arguments: --bogus"),
        (["call", "--as", "alice"], "required: PEER"),
        (["lab", "--nat-a", "carrier-grade"], "invalid choice"),
        (["lab", "--loss", "200"], "loss must be 0-100 %"),  # checked before anything is built
        (["natcheck", "--lifetime", "1"], "MAX_SECONDS must be 2-3600"),
        (["devices", "extra"], "unrecognized arguments: extra"),
    ],
)
def test_bad_options_exit_2(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_lab(_args: Namespace) -> int:
        raise AssertionError("the lab ran with options it should have refused")

    monkeypatch.setattr(cli, "run_lab", no_lab)
    status, _, err = run_main(argv, tmp_path, monkeypatch)
    assert status == 2 and message in err


def test_a_bad_config_file_is_the_users_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config" / "callpeer" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("name = 3\n")
    status, _, err = run_main(["--as", "alice", "bob", *SILENT], tmp_path, monkeypatch)
    assert status == 2 and "'name' must be a string" in err


def test_a_plot_file_matplotlib_cannot_write_is_refused_before_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    argv = ["--as", "alice", "bob", *SILENT, "--server", "127.0.0.1:9", "--plot", "rtt.xyz"]
    status, _, err = run_main(argv, tmp_path, monkeypatch)
    assert status == 2 and "cannot draw a .xyz file" in err


@pytest.mark.parametrize(
    ("argv", "target"),
    [
        (["--as", "alice", "bob", *SILENT, "--server", "127.0.0.1:9"], "_measured_keepalive"),
        (["natcheck", "--server", "127.0.0.1:9"], "run_tests"),
    ],
)
def test_an_internal_value_error_is_a_failure_not_a_usage_error(
    argv: list[str], target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only what the user typed is exit 2: a ValueError from inside is a bug, exit 1, said so."""
    from voip import cli_call
    from voip.natcheck import probing

    def broken(*_args: object) -> None:
        raise ValueError("something inside went wrong")

    monkeypatch.setattr(cli_call if target == "_measured_keepalive" else probing, target, broken)
    status, _, err = run_main(argv, tmp_path, monkeypatch)
    assert status == 1
    assert "callpeer: internal error: ValueError: something inside went wrong" in err


def test_turn_secret_makes_credentials_as_the_rendezvous_does() -> None:
    from voip.cli_call import turn_offer

    args = Namespace(
        turn="turn:198.51.100.7:3478", turn_secret="s3cret", turn_user=None, turn_password=None
    )
    before = int(time.time())
    offer = turn_offer(args, "alice")
    after = int(time.time())
    assert offer is not None and offer.server == ("198.51.100.7", 3478)
    expiry = rest_expiry(offer.username)
    assert expiry is not None and before <= expiry - REST_CREDENTIAL_TTL <= after
    assert offer.username.endswith(":alice")
    assert offer.password == rest_password("s3cret", offer.username)


# -- identity: whoami, trust, and the keys a call is given -----------------------------------

FP_A = "SHA256:" + "A" * 43
FP_B = "SHA256:" + "B" * 42 + "A"


def config_dir(tmp_path: Path) -> Path:
    return tmp_path / "config" / "callpeer"  # env() points XDG_CONFIG_HOME at tmp_path/config


def test_whoami_makes_an_identity_once_and_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voip.security.identity import load_identity

    status, out, err = run_main(["whoami", "--as", "alice"], tmp_path, monkeypatch)
    assert status == 0, err
    key = config_dir(tmp_path) / "identity"
    assert f"created a new identity at {key}" in err
    fp = load_identity(key).fingerprint
    assert "name: alice" in out and f"fingerprint: {fp}" in out
    assert f"identity: {key}" in out
    assert f"known_peers: {config_dir(tmp_path) / 'known_peers'}" in out
    assert f"callpeer trust alice {fp}" in out  # what the people you call type
    status, out, err = run_main(["whoami", "--as", "alice"], tmp_path, monkeypatch)
    assert status == 0 and "created" not in err and fp in out  # the same key, not a new one


def test_whoami_name_is_the_one_calls_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config" / "callpeer").mkdir(parents=True)
    (tmp_path / "config" / "callpeer" / "config.toml").write_text('name = "carol"\n')
    _, out, _ = run_main(["whoami"], tmp_path, monkeypatch)
    assert "name: carol" in out
    monkeypatch.setattr("getpass.getuser", lambda: "dave")
    (tmp_path / "config" / "callpeer" / "config.toml").unlink()
    _, out, _ = run_main(["whoami"], tmp_path, monkeypatch)
    assert "name: dave" in out
    monkeypatch.setattr("getpass.getuser", lambda: "dave smith")  # not a callpeer name
    status, _, err = run_main(["whoami"], tmp_path, monkeypatch)
    assert status == 2 and "bad name 'dave smith'" in err and "pass --as NAME" in err


def test_whoami_json_alone_on_stdout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "mine.key"
    status, out, err = run_main(
        ["whoami", "--as", "alice", "--identity", str(key), "--json", "-"], tmp_path, monkeypatch
    )
    assert status == 0, err
    result = json.loads(out)
    assert result["name"] == "alice" and result["identity"] == str(key)
    assert result["fingerprint"].startswith("SHA256:") and result["fingerprint"] in err
    # known_peers stays in its place whichever key is yours (see `callpeer call --help`)
    assert result["known_peers"] == str(config_dir(tmp_path) / "known_peers")
    assert (key.stat().st_mode & 0o777) == 0o600


@pytest.mark.parametrize(
    ("problem", "status", "message"),
    [
        ("world-readable", 1, "readable by other users (mode 644): run 'chmod 600 "),
        ("group-readable", 1, "readable by other users (mode 640): run 'chmod 600 "),
        ("damaged", 1, "is damaged: not a callpeer identity file"),
        ("no such folder", 2, "--identity: no directory"),
        ("a folder", 2, "is a directory; give the key file's path"),
    ],
)
def test_an_unusable_identity_is_one_line_and_no_traceback(
    problem: str, status: int, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that is wrong is exit 1; an --identity that names no possible file is exit 2."""
    key = tmp_path / "key"
    if problem in ("world-readable", "group-readable", "damaged"):
        run_main(["whoami", "--identity", str(key)], tmp_path, monkeypatch)
        if problem == "damaged":
            key.write_text("callpeer identity v1\nnot a key\n")
        key.chmod({"world-readable": 0o644, "group-readable": 0o640, "damaged": 0o600}[problem])
    elif problem == "no such folder":
        key = tmp_path / "typo" / "key"
    else:
        key = tmp_path
    for argv in (
        ["whoami", "--identity", str(key)],
        ["--as", "alice", "bob", *SILENT, "--server", "127.0.0.1:9", "--identity", str(key)],
    ):
        code, _, err = run_main(argv, tmp_path, monkeypatch)
        assert code == status and message in err, (argv, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "typo").exists()  # a mistyped folder is not made


def test_an_unwritable_config_folder_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config").write_text("a file where the config folder should be")
    status, _, err = run_main(["whoami"], tmp_path, monkeypatch)
    assert status == 1 and "cannot create an identity at" in err and "Traceback" not in err
    status, _, err = run_main(["trust", "bob", FP_A], tmp_path, monkeypatch)
    assert status == 1 and "known_peers" in err and "Traceback" not in err


def test_trust_pins_a_key_in_a_private_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, out, err = run_main(["trust", "bob", FP_A], tmp_path, monkeypatch)
    assert status == 0, err
    known = config_dir(tmp_path) / "known_peers"
    assert f"pinned bob's key {FP_A} in {known}" in out
    assert known.read_text() == f"bob {FP_A}\n"
    assert (known.stat().st_mode & 0o777) == 0o600
    assert not (config_dir(tmp_path) / "identity").exists()  # pinning needs no key of ours
    status, out, _ = run_main(["trust", "carol", FP_B], tmp_path, monkeypatch)
    assert status == 0 and known.read_text() == f"bob {FP_A}\ncarol {FP_B}\n"
    status, out, _ = run_main(["trust", "bob", FP_A], tmp_path, monkeypatch)
    assert status == 0 and "pinned already" in out and "nothing changed" in out


def test_trust_says_which_key_it_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_main(["trust", "bob", FP_A], tmp_path, monkeypatch)
    status, out, _ = run_main(["trust", "bob", FP_B], tmp_path, monkeypatch)
    assert status == 0
    assert f"pinned bob's key {FP_B}" in out and f"replacing {FP_A}" in out
    assert (config_dir(tmp_path) / "known_peers").read_text() == f"bob {FP_B}\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trust", "bob smith", FP_A], "use 1-64 letters, digits"),
        (["trust", "bob", "SHA256:abc"], "expected 'SHA256:' and 43 base64 characters"),
        (["trust", "bob", "A" * 43], "as 'callpeer whoami' prints it"),
        (["trust", "bob"], "required: FINGERPRINT"),
        (["whoami", "--as", "no/slash"], "bad name 'no/slash'"),
        (["whoami", "--identity", ""], "--identity: an empty path"),
    ],
)
def test_bad_identity_input_is_a_usage_error(
    argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    status, _, err = run_main(argv, tmp_path, monkeypatch)
    assert status == 2 and message in err
    assert not config_dir(tmp_path).exists()  # nothing made or pinned


def test_a_damaged_known_peers_stops_trust_and_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir(tmp_path).mkdir(parents=True)
    (config_dir(tmp_path) / "known_peers").write_text("bob SHA256:short\n")
    for argv in (["trust", "carol", FP_A], ["--as", "alice", "bob", *SILENT]):
        status, _, err = run_main(argv, tmp_path, monkeypatch)
        assert status == 1 and "known_peers, line 1: bad fingerprint" in err, err
        assert "Traceback" not in err
    assert not (config_dir(tmp_path) / "identity").exists()  # stopped before making a key


class FakeCall:
    """Stands in for `Call` in run_call: keeps what it was given; fails as `failure` says."""

    made: ClassVar[list[FakeCall]] = []

    def __init__(self, name: str, peer: str, **kwargs: Any):
        self.name, self.peer = name, peer
        self.options: CallOptions = kwargs["options"]
        self.on_event: Callable[[CallEvent], None] = kwargs["on_event"]
        self.failure: str | None = None
        self.captured_at: list[float] = []
        self.played_at: list[float] = []
        FakeCall.made.append(self)

    async def start(self) -> None:
        pass

    async def run(self, duration: float | None = None) -> None:
        if self.failure is not None:  # as Call: Ended first, then CallError from connected()
            self.on_event(Ended(self.failure, ok=False))
            raise CallError(self.failure)

    async def hangup(self, reason: str = "hung up") -> None:
        pass

    def report(self) -> CallReport:
        return CallReport(self.name, self.peer)


@pytest.fixture
def fake_call(monkeypatch: pytest.MonkeyPatch) -> type[FakeCall]:
    from voip import cli_call

    FakeCall.made = []
    monkeypatch.setattr(cli_call, "Call", FakeCall)
    return FakeCall


CALL_ARGS = ["--as", "alice", "bob", *SILENT, "--server", "127.0.0.1:9"]


def test_a_call_gets_the_identity_and_known_peers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_call: type[FakeCall]
) -> None:
    from voip.security.identity import load_identity

    status, _, err = run_main(CALL_ARGS, tmp_path, monkeypatch)
    assert status == 0, err
    key = config_dir(tmp_path) / "identity"
    [call] = fake_call.made
    assert call.options.identity is not None
    assert call.options.identity.fingerprint == load_identity(key).fingerprint
    fp = call.options.identity.fingerprint
    assert f"created a new identity at {key}, fingerprint {fp}" in err
    assert call.options.known_peers is not None
    assert call.options.known_peers.path == config_dir(tmp_path) / "known_peers"
    assert call.options.accept_new_key is False
    status, _, err = run_main(CALL_ARGS, tmp_path, monkeypatch)
    assert status == 0 and "created" not in err  # said once, on creation
    assert fake_call.made[1].options.identity is not None
    assert fake_call.made[1].options.identity.public == call.options.identity.public


def test_identity_and_accept_new_key_options_reach_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_call: type[FakeCall]
) -> None:
    key = tmp_path / "other.key"
    argv = [*CALL_ARGS, "--identity", str(key), "--accept-new-key"]
    status, _, err = run_main(argv, tmp_path, monkeypatch)
    assert status == 0, err
    [call] = fake_call.made
    assert call.options.identity is not None and call.options.identity.path == key
    assert call.options.accept_new_key is True
    # known_peers is the default one, whichever key is ours (documented in --help)
    assert call.options.known_peers is not None
    assert call.options.known_peers.path == config_dir(tmp_path) / "known_peers"


def test_a_changed_key_is_the_error_line_once_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_call: type[FakeCall]
) -> None:
    from voip.security.known_peers import KnownPeers
    from voip.security.peer_verifier import PeerVerifier

    pinned, proved = Identity.generate(), Identity.generate()
    known = KnownPeers()
    known.pin("bob", pinned.fingerprint)
    reason = PeerVerifier("bob", None, known)(proved.public)  # the words a real call ends with
    assert reason is not None

    def failing(*args: Any, **kwargs: Any) -> FakeCall:
        call = FakeCall(*args, **kwargs)
        call.failure = reason
        return call

    from voip import cli_call

    monkeypatch.setattr(cli_call, "Call", failing)
    status, _, err = run_main(CALL_ARGS, tmp_path, monkeypatch)
    assert status == 1
    assert f"callpeer: {reason}" in err
    assert err.count(pinned.fingerprint) == 1  # printed once, not again as "call ended: ..."
    assert proved.fingerprint in err and "--accept-new-key" in err and "callpeer trust" in err
    assert "Traceback" not in err


def test_a_key_that_cannot_be_written_down_is_a_warning(tmp_path: Path) -> None:
    from voip.cli_identity import CallKnownPeers

    path = tmp_path / "known_peers"
    (tmp_path / "known_peers.tmp").mkdir()  # the file known_peers is written through: blocked
    warnings: list[str] = []
    known = CallKnownPeers(path, warnings.append)
    known.pin("bob", FP_A)  # inside the handshake: must not raise
    assert known.pinned("bob") == FP_A  # still trusted for this call
    [warning] = warnings
    assert "could not remember bob's key" in warning and "a first call again" in warning


def presented(*events: CallEvent, pinned_in: str = "known_peers") -> str:
    out = io.StringIO()
    presenter = Presenter(Console(file=out, width=300), "alice: ", pinned_in=pinned_in)
    for event in events:
        presenter(event)
    return out.getvalue()


@pytest.mark.parametrize(
    ("trust", "wanted"),
    [
        ("verified", f"alice: encrypted: AES-128-GCM, bob's key verified (fingerprint {FP_A[:19]}"),
        (
            "first",
            "alice: encrypted: AES-128-GCM; first call with bob: compare the code 'LAVA-7K2Q' "
            f"aloud (bob's key {FP_A}, now remembered in known_peers)",
        ),
        ("accepted", "bob's NEW key accepted (--accept-new-key): compare the code 'LAVA-7K2Q'"),
    ],
)
def test_the_secured_line(trust: str, wanted: str) -> None:
    text = presented(Secured("bob", "AES-128-GCM", FP_A, trust, "LAVA-7K2Q"))
    assert wanted in text
    assert len(text.strip().splitlines()) == 1
    if trust == "verified":
        assert "LAVA" not in text  # nothing to compare: the key was known
    if trust == "accepted":
        assert f"{FP_A} replaced the old one in known_peers" in text


def test_the_demo_says_where_its_pins_go() -> None:
    event = Secured("bob", "AES-128-GCM", FP_A, "first", "LAVA-7K2Q")
    assert "now remembered in memory, for this demo only" in presented(
        event, pinned_in="memory, for this demo only"
    )


def test_call_ended_is_shown_unless_the_command_says_it_as_its_error() -> None:
    assert presented(Ended("bob did not call back", ok=False)) == ""
    connected = Connected("direct", "192.0.2.1:4000", "host-host", 12.0)
    assert "call ended: no audio from bob" in presented(
        connected, Ended("no audio from bob for 10 s", ok=False)
    )
    assert "call ended: hung up" in presented(Ended("hung up", ok=True))


def caption(report: dict[str, Any]) -> str:
    from voip.report import render_table

    return str(render_table(report).caption)


def test_the_table_says_how_the_call_was_protected() -> None:
    report = CallReport("alice", "bob").to_dict()
    assert "not encrypted: no key exchange (no audio)" in caption(report)
    del report["security"]  # a report saved by a callpeer from before encryption
    assert "not encrypted (a report from before callpeer encrypted calls)" in caption(report)
    security = SecurityReport("AES-128-GCM", FP_A, True, "LAVA-7K2Q", "verified")
    report["security"] = security.to_dict()
    assert "encrypted AES-128-GCM; bob's key verified" in caption(report)
    security = SecurityReport("AES-128-GCM", FP_A, False, "LAVA-7K2Q", "first", 3)
    report["security"] = security.to_dict()
    text = caption(report)
    assert "encrypted AES-128-GCM; first call with bob: SAS LAVA-7K2Q" in text
    assert "3 forged or replayed packets dropped" in text


def test_the_table_and_verdict_say_the_relay_went_over_tls_and_the_family() -> None:
    from voip.report import render_table

    report = CallReport("alice", "bob", path="relay", setup_ms=90.0)
    report.relay.available, report.relay.remote = True, "203.0.113.20:50000"
    report.relay.transport = "tls"
    report.relay.add_rtt(1.0, 0.012, "rtcp")
    report.direct.available, report.direct.remote = True, "[2001:db8:2::2]:40000"
    as_dict = report.to_dict()
    assert as_dict["paths"]["relay"]["family"] == "ipv4"
    assert as_dict["paths"]["direct"]["family"] == "ipv6"
    assert as_dict["verdict"].startswith("relayed over TLS only: no direct path")
    console = Console(record=True, width=200)
    console.print(render_table(as_dict))
    text = console.export_text()
    assert "yes (over TLS)" in text and "yes (IPv6)" in text


def test_demo_security_compares_the_codes_as_people_would() -> None:
    def side(sas: str) -> SecurityReport:
        return SecurityReport("AES-128-GCM", FP_A, False, sas, "first")

    ok, line = cli.demo_security(side("LAVA-7K2Q"), side("LAVA-7K2Q"))
    assert ok and "both show the code 'LAVA-7K2Q'" in line
    ok, line = cli.demo_security(side("LAVA-7K2Q"), side("MOSS-3X8P"))
    assert not ok and "WRONG" in line
    ok, line = cli.demo_security(None, side("LAVA-7K2Q"))
    assert not ok and "no key exchange" in line


def start_caller(home: Path, me: str, peer: str, server: str, *extra: str) -> subprocess.Popen[str]:
    home.mkdir(exist_ok=True)
    return subprocess.Popen(
        [str(BIN / "callpeer"), "--as", me, peer, "--server", server, *SILENT, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(home),  # each caller its own config: its own identity and known_peers
        cwd=home,
    )


def call_both(
    alice_home: Path, bob_home: Path, server: str, *alice_extra: str
) -> tuple[subprocess.Popen[str], str]:
    """alice and bob call each other for a second: alice's process, once over, and stderr."""
    call = ("--duration", "1", "--wait", "10")
    alice = start_caller(alice_home, "alice", "bob", server, *call, *alice_extra)
    bob = start_caller(bob_home, "bob", "alice", server, *call)
    alice_err = alice.communicate(timeout=30)[1]
    bob.communicate(timeout=30)
    return alice, alice_err


@pytest.mark.slow
def test_a_changed_key_stops_a_real_call_until_accepted(tmp_path: Path, rendezvous: str) -> None:
    alice_home, bob_home = tmp_path / "alice", tmp_path / "bob"
    alice, err = call_both(alice_home, bob_home, rendezvous)
    assert alice.returncode == 0, err
    assert "first call with bob: compare the code" in err
    alice, err = call_both(alice_home, bob_home, rendezvous)
    assert alice.returncode == 0, err
    assert "bob's key verified" in err
    # bob's key changes: a new identity, as after reinstalling. The rendezvous holds the name
    # for the old key, so this is another rendezvous (one that lies would do the same).
    (bob_home / "config" / "callpeer" / "identity").unlink()
    with running_rendezvous(tmp_path / "another") as another:
        alice, err = call_both(alice_home, bob_home, another)
        assert alice.returncode == 1
        assert "callpeer: bob's key has changed" in err and "--accept-new-key" in err
        assert "Traceback" not in err and "call ended" not in err  # said once, as the error
        alice, err = call_both(alice_home, bob_home, another, "--accept-new-key")
        assert alice.returncode == 0, err
        assert "bob's NEW key accepted" in err


def test_two_callpeers_making_the_first_identity_at_once_share_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both sides of a call started together on one machine: the loser of the race to make
    the key takes the winner's, rather than failing."""
    from voip import cli_identity
    from voip.security.identity import IdentityError
    from voip.security.identity import load_identity
    from voip.security.identity import save_identity

    path = tmp_path / "identity"
    winner = Identity.generate(path)

    def lost_the_race(where: Path) -> tuple[Identity, bool]:
        save_identity(winner, where)  # the other process, between our check and our create
        raise IdentityError(f"{where} exists already; not overwriting an identity")

    monkeypatch.setattr(cli_identity, "load_or_create", lost_the_race)
    out = io.StringIO()
    identity = cli_identity.open_identity(path, Console(file=out))
    assert identity.public == winner.public == load_identity(path).public
    assert out.getvalue() == ""  # we did not create it: nothing to announce
