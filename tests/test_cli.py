"""The `callpeer` and `callpeer-rendezvous` commands, run as a user runs them."""

from __future__ import annotations

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
from collections.abc import Iterator
from pathlib import Path

import pytest

from voip import cli
from voip.codecs.pcm import dominant_frequency
from voip.media.audio_io import read_wav
from voip.wire.turn import REST_CREDENTIAL_TTL, rest_expiry, rest_password

BIN = Path(sys.executable).parent
SILENT = ("--input", "silence", "--output", "null")  # no sound card needed
COMMANDS = ("call", "demo", "lab", "natcheck", "devices")


def env(tmp_path: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.pop("CALLPEER_SERVER", None)
    e.pop("CALLPEER_NAME", None)
    e["XDG_CONFIG_HOME"] = str(tmp_path / "config")  # no user config leaks into a test
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


@pytest.fixture
def rendezvous(tmp_path: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [str(BIN / "callpeer-rendezvous"), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env(tmp_path),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "listening on udp" in line, line
    yield line.rsplit(" ", 1)[1].strip()
    proc.terminate()
    proc.wait(5)


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


def rendezvous_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "callpeer-rendezvous"), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def test_rendezvous_turn_url_needs_the_secret(tmp_path: Path) -> None:
    result = rendezvous_command("--turn-url", "turn:127.0.0.1:1")
    assert result.returncode == 2 and "--turn-url needs --turn-secret" in result.stderr


def test_rendezvous_command_rejects_bad_listen_address(tmp_path: Path) -> None:
    result = rendezvous_command("--listen", "127.0.0.1:http")
    assert result.returncode == 2 and "port must be 0-65535" in result.stderr


def test_python_m_rendezvous_answers_stun(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "rendezvous", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        host, port = proc.stdout.readline().rsplit(" ", 1)[1].strip().split(":")
        from voip.wire.stun import Class, Message, Method, encode, parse_message_untrusted

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
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no natcheck memory either
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
        ("call", ["--as", "--relay", "--turn-secret", "--no-fec", "--timeline", "PEER"]),
        ("demo", ["--duration", "--json"]),
        ("lab", ["--nat-a", "--same-nat", "--udp-timeout-b", "--no-speech", "--relay"]),
        ("natcheck", ["--server", "--lifetime", "--json"]),
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
