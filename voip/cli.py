"""`callpeer`: its commands (call, demo, lab, natcheck, devices, whoami, trust), and
`callpeer PEER` for a call."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import sys
import traceback
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console

from rendezvous.local import DEFAULT_SERVER
from rendezvous.local import loopback_server
from voip.call import Call
from voip.call import CallError
from voip.call import CallOptions
from voip.call_messages import COMMANDS
from voip.cli_call import CALL_DESCRIPTION
from voip.cli_call import CALL_EPILOG
from voip.cli_call import CALL_HELP
from voip.cli_call import add_call_arguments
from voip.cli_call import check_plot_path
from voip.cli_call import run_call
from voip.cli_call import user_config
from voip.cli_keys import add_key_commands
from voip.cli_keys import run_trust
from voip.cli_keys import run_whoami
from voip.cli_output import EXIT_FAILED
from voip.cli_output import EXIT_OK
from voip.cli_output import EXIT_USAGE
from voip.cli_output import Presenter
from voip.cli_output import UsageError
from voip.cli_output import show_report
from voip.cli_output import write_json
from voip.codecs.opus import CodecUnavailable
from voip.lab.cli import LAB_DESCRIPTION
from voip.lab.cli import LAB_HELP
from voip.lab.cli import add_lab_arguments
from voip.lab.cli import config_from_args
from voip.lab.cli import run_lab
from voip.lab.netns import LabError
from voip.media.soundcard import SoundcardUnavailable
from voip.plot import PlotUnavailable
from voip.security.identity import Identity
from voip.security.identity import IdentityError
from voip.security.known_peers import KnownPeers
from voip.security.known_peers import KnownPeersError
from voip.security.summary import SecurityReport
from voip.transport import resolve
from voip.wire.candidates import format_address
from voip.wire.candidates import parse_address

LIFETIME_LIMIT = 120.0
NATCHECK_DESCRIPTION = (
    "How does your NAT map and filter, and which peers can you call directly? "
    "(RFC 5780 tests against a STUN server with an alternate address: "
    "callpeer-rendezvous --alt-address, or any RFC 5780 server)"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="callpeer",
        usage="%(prog)s [-h] COMMAND ...\n       %(prog)s [call options] PEER",
        description="Peer-to-peer voice calls through NAT routers.",
        epilog="`callpeer PEER [options]` is short for `callpeer call PEER [options]`, "
        "options before or after PEER. A first word that names a command runs it: to call "
        "someone named like a command, type `callpeer call lab`. "
        "`callpeer COMMAND --help` lists a command's options.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=True)
    call = sub.add_parser(
        "call",
        prog="callpeer call",
        help=CALL_HELP,
        description=CALL_DESCRIPTION,
        epilog=CALL_EPILOG,
    )
    add_call_arguments(call)
    demo = sub.add_parser(
        "demo",
        prog="callpeer demo",
        help="a call between two callpeers on this machine, no set-up",
        description="A call between two callpeers on this machine, no set-up.",
    )
    demo.add_argument("--duration", type=float, default=4.0, metavar="SECONDS")
    demo.add_argument("--json", metavar="PATH|-", help="write the report as JSON (- for stdout)")
    add_lab_arguments(
        sub.add_parser("lab", prog="callpeer lab", help=LAB_HELP, description=LAB_DESCRIPTION)
    )
    natcheck = sub.add_parser(
        "natcheck",
        prog="callpeer natcheck",
        help="how your NAT maps and filters, and which peers you can call directly",
        description=NATCHECK_DESCRIPTION,
    )
    natcheck.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="the STUN server (default: config 'server', else 127.0.0.1:3478)",
    )
    natcheck.add_argument(
        "--lifetime",
        nargs="?",
        type=float,
        const=LIFETIME_LIMIT,
        metavar="MAX_SECONDS",
        help="also measure how long the NAT keeps a quiet mapping, trying quiet periods up to "
        f"MAX_SECONDS (default {LIFETIME_LIMIT:.0f}); takes up to twice that. Calls then "
        "send keepalives to match",
    )
    natcheck.add_argument(
        "--json", metavar="PATH|-", help="write the result as JSON (- for stdout)"
    )
    sub.add_parser(
        "devices",
        prog="callpeer devices",
        help="the sound devices PortAudio sees",
        description="List the sound devices PortAudio sees.",
    )
    add_key_commands(sub)
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, by one rule: a first word that names a command runs that command (so
    do -h, --help and nothing at all); anything else is a call, as if `call` came first. In that
    shorthand PEER may not be a command's name: `callpeer --as alice lab` is refused, saying to
    type `callpeer call --as alice lab`, rather than guessed at."""
    parser = build_parser()
    if not argv or argv[0] in COMMANDS or argv[0] in ("-h", "--help"):
        return parser.parse_args(argv)
    args, unknown = parser.parse_known_args(["call", *argv])
    if args.peer in COMMANDS:
        raise UsageError(
            f"{args.peer!r} is a callpeer command, not a name to call without `call`: to run "
            f"it, put it first (callpeer {args.peer} --help); to call someone named "
            f"{args.peer}, type: callpeer call {shlex.join(argv)}"
        )
    if unknown:  # checked after PEER, so `--as alice lab --nat-a cone` gets the line above
        parser.parse_args(["call", *argv])  # argparse says what it did not know, and exits 2
    return args


async def run_demo(args: argparse.Namespace) -> int:
    """Rendezvous and both callers on loopback; each sends a tone and checks what it heard."""
    import tempfile  # noqa: PLC0415

    from voip.codecs.pcm import dominant_frequency  # noqa: PLC0415
    from voip.media.audio_io import ToneSource  # noqa: PLC0415
    from voip.media.audio_io import WavSink  # noqa: PLC0415
    from voip.media.audio_io import read_wav  # noqa: PLC0415

    err = Console(stderr=True, soft_wrap=True)
    server = await loopback_server().start("127.0.0.1", 0)
    err.print(
        f"demo: rendezvous on udp {format_address(server.address)}; alice sends 440 Hz, "
        f"bob sends 660 Hz, for {args.duration:g} s",
        highlight=False,
    )
    tones = {"alice": 440.0, "bob": 660.0}
    with tempfile.TemporaryDirectory(prefix="callpeer-demo-") as tmp:
        calls = {
            me: Call(
                me,
                peer,
                source=ToneSource(tones[me]),
                sink=WavSink(Path(tmp) / f"{me}.wav"),
                server=server.address,
                # Keys made for this run and pins kept in memory: the demo never touches the
                # user's own identity or known_peers.
                options=CallOptions(
                    bind_host="127.0.0.1", identity=Identity.generate(), known_peers=KnownPeers()
                ),
                on_event=(
                    Presenter(err, f"{me}: ", pinned_in="memory, for this demo only")
                    if me == "alice"
                    else None
                ),
            )
            for me, peer in (("alice", "bob"), ("bob", "alice"))
        }
        try:
            for call in calls.values():
                await call.start()
            await asyncio.gather(*(c.run(args.duration) for c in calls.values()))
        except CallError as exc:
            err.print(f"callpeer demo: {exc}", style="red", highlight=False)
            return EXIT_FAILED
        finally:
            for call in calls.values():
                await call.hangup()
            server.close()
        heard = {
            me: round(dominant_frequency(read_wav(Path(tmp) / f"{me}.wav")[0]), 1) for me in calls
        }
    report = calls["alice"].report().to_dict()
    report["demo"] = {"heard_hz": heard, "sent_hz": tones, "bob": calls["bob"].report().to_dict()}
    show_report(report, args.json)
    ok = all(abs(heard[me] - tones[peer]) < 5 for me, peer in (("alice", "bob"), ("bob", "alice")))
    err.print(
        f"alice heard {heard['alice']} Hz (bob sent 660), bob heard {heard['bob']} Hz "
        f"(alice sent 440): {'both right' if ok else 'WRONG'}",
        highlight=False,
    )
    secured, line = demo_security(calls["alice"].security, calls["bob"].security)
    err.print(line, highlight=False)
    return EXIT_OK if ok and secured else EXIT_FAILED


def demo_security(a: SecurityReport | None, b: SecurityReport | None) -> tuple[bool, str]:
    """Whether the demo's two ends (alice's, bob's) agree on the key exchange, as two people
    comparing the code aloud would check: the same SAS on both sides, or someone sat between."""
    if a is None or b is None:
        return False, "no key exchange finished: the audio was not encrypted: WRONG"
    if a.sas != b.sas:
        return False, f"alice shows the code {a.sas!r} but bob {b.sas!r}: WRONG"
    return True, (
        f"alice and bob both show the code {a.sas!r}: encrypted end to end ({a.cipher}), "
        "as two people comparing it aloud would confirm"
    )


async def run_natcheck(args: argparse.Namespace) -> int:
    from voip.natcheck.memory import remember  # noqa: PLC0415
    from voip.natcheck.probing import measure_lifetime  # noqa: PLC0415
    from voip.natcheck.probing import run_tests  # noqa: PLC0415
    from voip.natcheck.verdict import classify  # noqa: PLC0415

    if args.lifetime is not None and not 2 <= args.lifetime <= 3600:
        raise UsageError("--lifetime: MAX_SECONDS must be 2-3600")
    console = Console(stderr=args.json == "-", soft_wrap=True)
    config = user_config()
    text = args.server or config.server or format_address(DEFAULT_SERVER)
    try:
        host, port = parse_address(text, default_port=3478)
        server = await resolve(host, port)
    except (ValueError, OSError) as exc:
        raise UsageError(f"--server: {exc}") from exc
    console.print(
        f"testing how your NAT behaves, with {format_address(server)}...", highlight=False
    )
    tests = await run_tests(server)
    if args.lifetime is not None and tests.mapped1 is not None:
        console.print(
            f"measuring how long your NAT keeps a quiet mapping (up to {args.lifetime:.0f} s "
            f"of quiet; this takes up to {2 * args.lifetime:.0f} s)...",
            highlight=False,
        )
        started = asyncio.get_running_loop().time()

        def progress(line: str) -> None:
            elapsed = asyncio.get_running_loop().time() - started
            console.print(f"  [{elapsed:5.1f} s] {line}", highlight=False)

        await measure_lifetime(server, args.lifetime, progress, tests)
    verdict = classify(tests)
    result = verdict.to_dict(tests)
    rows = [
        ("your address here", result["local"]),
        ("as the internet sees it", result["public"]),
        ("mapping", result["mapping"] or "unknown"),
        ("filtering", result["filtering"] or "unknown"),
        ("hairpinning", verdict.hairpinning or "not tested"),
        ("public ports", verdict.port_allocation or "not tested"),
        ("mapping lifetime", verdict.lifetime or "not measured (--lifetime)"),
        ("so", verdict.kind),
        ("direct calls work with", verdict.direct_with),
        ("what would help", verdict.advice),
    ]
    for label, value in rows:
        console.print(f"{label:>24}: {value}", highlight=False)
    for note in tests.notes:
        console.print(f"{'note':>24}: {note}", highlight=False)
    if verdict.reachable:
        saved = remember(tests, verdict)
        if saved is not None and tests.lifetime is not None:
            console.print(f"{'saved for calls':>24}: {saved}", highlight=False)
    if args.json:
        write_json(result, args.json)
    return EXIT_OK if verdict.reachable else EXIT_FAILED


def run_devices() -> int:
    from voip.media.soundcard import list_devices  # noqa: PLC0415

    print(list_devices())
    return EXIT_OK


def run_checked_lab(args: argparse.Namespace) -> int:
    """`callpeer lab`, its options checked before anything is built: a bad one is exit 2."""
    try:
        config_from_args(args).validate()
    except LabError as exc:  # validate() judges only the options
        raise UsageError(str(exc)) from exc
    if args.plot:
        check_plot_path(args.plot)  # alice's callpeer would refuse it and bob wait in vain
    return run_lab(args)


async def _hang_up_on_sigterm(coro: Coroutine[Any, Any, int]) -> int:
    """Run a command so that SIGTERM, like Ctrl-C, hangs up properly (BYE, name released)."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):  # no signal handlers on some platforms
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return 128 + signal.SIGTERM


def run(args: argparse.Namespace) -> int:
    if args.command == "devices":
        return run_devices()
    if args.command == "lab":
        return run_checked_lab(args)
    if args.command == "natcheck":
        return asyncio.run(run_natcheck(args))
    if args.command == "whoami":
        return run_whoami(args)
    if args.command == "trust":
        return run_trust(args)
    command = run_demo(args) if args.command == "demo" else run_call(args)
    return asyncio.run(_hang_up_on_sigterm(command))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    err = Console(stderr=True, soft_wrap=True)
    try:
        return run(parse_args(argv))
    except UsageError as exc:  # only what the user typed, checked where it is read, is exit 2
        err.print(f"callpeer: {exc}", highlight=False, style="red")
        return EXIT_USAGE
    except (
        SoundcardUnavailable,
        CodecUnavailable,
        LabError,
        PlotUnavailable,
        IdentityError,  # the key file is missing, damaged or open to others: the file is wrong
        KnownPeersError,  # not what was typed, so exit 1, and the message says what to do
        OSError,
    ) as exc:
        err.print(f"callpeer: {exc}", highlight=False, style="red")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug, never the user's input: the traceback is for the report
        traceback.print_exc()
        err.print(
            f"callpeer: internal error: {type(exc).__name__}: {exc}", highlight=False, style="red"
        )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
