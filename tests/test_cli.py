"""The `callpeer` and `callpeer-rendezvous` commands, run as a user runs them."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from voip.codecs.pcm import dominant_frequency
from voip.media.audio_io import read_wav

BIN = Path(sys.executable).parent
SILENT = ("--input", "silence", "--output", "null")  # no sound card needed


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
