"""`callpeer`: call a peer by name, run the loopback demo, or list audio devices."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console

from rendezvous.local import DEFAULT_SERVER, find_or_host, loopback_server
from voip import events as ev
from voip.call import Call, CallError, CallOptions
from voip.codecs.opus import CodecUnavailable
from voip.config import load_config
from voip.lab.netns import LabError
from voip.media.audio_io import AudioSpecError, open_sink, open_source
from voip.media.soundcard import SoundcardUnavailable
from voip.nat.rendezvous_client import TurnOffer
from voip.plot import PlotUnavailable
from voip.report import render_table
from voip.transport import resolve
from voip.wire.candidates import format_address, parse_address
from voip.wire.signal import check_name
from voip.wire.stun import Address
from voip.wire.turn import rest_password, rest_username, turn_url

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def call_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="callpeer",
        description="Call PEER directly through your NAT. Also: callpeer demo | lab | natcheck | "
        "devices.",
        epilog="Both sides must ask for each other: `callpeer --as alice bob` and "
        "`callpeer --as bob alice`.",
    )
    p.add_argument("peer", metavar="PEER", help="the name of the person to call")
    p.add_argument(
        "--as",
        dest="name",
        metavar="NAME",
        help="your name on the rendezvous (default: config 'name' or your login)",
    )
    p.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="the rendezvous (default: config 'server', else 127.0.0.1:3478, hosted "
        "in this process if none answers there)",
    )
    p.add_argument(
        "--input",
        default="mic",
        metavar="SRC",
        help="mic (default), tone:HZ, silence, or a WAV file",
    )
    p.add_argument(
        "--output",
        default="speaker",
        metavar="SINK",
        help="speaker (default), null, or a WAV file to write",
    )
    p.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="hang up after this many seconds of call (default: until Ctrl-C)",
    )
    p.add_argument(
        "--wait",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to wait for PEER to call back (default 120)",
    )
    p.add_argument("--json", metavar="PATH|-", help="write the call report as JSON (- for stdout)")
    p.add_argument("--plot", metavar="FILE.png", help="draw RTT over time for both paths")
    p.add_argument(
        "--timeline",
        metavar="PATH",
        help="write when each frame was read from the input and played to the output "
        "(monotonic clock, JSON), for measuring mouth-to-ear latency",
    )
    p.add_argument(
        "--dtx",
        action="store_true",
        help="Opus DTX: in silence send a comfort-noise update every 400 ms only",
    )
    p.add_argument(
        "--no-fec",
        dest="fec",
        action="store_false",
        help="no Opus in-band FEC: lost frames are only concealed",
    )
    relay = p.add_argument_group("relay")
    relay.add_argument(
        "--relay",
        choices=("auto", "force", "off"),
        default="auto",
        help="auto (default): audio direct when punching works, else relayed, "
        "and the other path measured alongside; force: audio over the relay, "
        "direct measured; off: never allocate",
    )
    relay.add_argument(
        "--turn",
        metavar="turn:HOST:PORT",
        help="a TURN server of your own (e.g. coturn) instead of the one the rendezvous offers",
    )
    relay.add_argument(
        "--turn-secret", metavar="SECRET", help="its REST API secret (coturn's static-auth-secret)"
    )
    relay.add_argument("--turn-user", metavar="USER", help="or long-term credentials: user")
    relay.add_argument("--turn-password", metavar="PASSWORD", help="and password")
    return p


def turn_offer(args: argparse.Namespace, name: str) -> TurnOffer | None:
    """The --turn options as a TURN server with credentials; UsageError if incomplete."""
    if args.turn is None:
        if args.turn_secret or args.turn_user or args.turn_password:
            raise UsageError("--turn-secret, --turn-user and --turn-password go with --turn")
        return None
    try:
        host, port = turn_url(args.turn)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.turn_secret:
        username = rest_username(int(time.time()) + 24 * 3600, name)
        password = rest_password(args.turn_secret, username)
    elif args.turn_user and args.turn_password:
        username, password = args.turn_user, args.turn_password
    else:
        raise UsageError("--turn needs --turn-secret, or --turn-user and --turn-password")
    return TurnOffer((host, port), username, password)


def demo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="callpeer demo", description="A call between two callpeers on this machine, no set-up."
    )
    p.add_argument("--duration", type=float, default=4.0, metavar="SECONDS")
    p.add_argument("--json", metavar="PATH|-", help="write the report as JSON (- for stdout)")
    return p


# -- output ------------------------------------------------------------------------------


class Presenter:
    """Progress lines and the live call line on stderr; rich when it is a terminal."""

    def __init__(self, console: Console, label: str = ""):
        self.console = console
        self.label = label
        self._status: Any = None
        self._name = "<your name>"
        self._last_plain = 0.0

    def _line(self, text: str) -> None:
        self.console.print(f"{self.label}{text}", highlight=False)

    def _set_status(self, text: str) -> None:
        if not self.console.is_terminal:
            return
        if self._status is None:
            self._status = self.console.status(text)
            self._status.start()
        else:
            self._status.update(text)

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def __call__(self, event: ev.CallEvent) -> None:
        if isinstance(event, ev.Registered):
            self._name = event.name
            self._line(
                f"registered as {event.name}; the rendezvous sees you at "
                f"{format_address(event.public)}"
            )
        elif isinstance(event, ev.Waiting):
            self._line(
                f"waiting for {event.peer} to call you (they run: callpeer --as "
                f"{event.peer} {self._name})..."
            )
            self._set_status(f"waiting for {event.peer}")
        elif isinstance(event, ev.Punching):
            cands = ", ".join(str(c) for c in event.candidates)
            role = "controlling" if event.controlling else "controlled"
            self._line(f"found {event.peer}: punching to {cands} ({role})")
            self._set_status("punching through the NATs")
        elif isinstance(event, ev.RelayAllocated):
            self._line(
                f"relay allocated: {format_address(event.relayed)} on TURN server "
                f"{format_address(event.server)}"
            )
        elif isinstance(event, ev.Connected):
            self._line(
                f"connected {event.path} to {event.remote} ({event.pair}) in "
                f"{event.setup_ms:.0f} ms; audio flowing"
            )
        elif isinstance(event, ev.PathSwitched):
            self._line(f"audio moved to the {event.path} path ({event.remote}): {event.why}")
        elif isinstance(event, ev.Standby):
            self._line(f"measuring the {event.path} path alongside, via {event.remote}")
        elif isinstance(event, ev.LiveStats):
            rtt = "-" if event.rtt_ms is None else f"{event.rtt_ms:.1f} ms"
            text = (
                f"{event.path} | {event.elapsed:5.1f} s | RTT {rtt} | jitter "
                f"{event.jitter_ms:.1f} ms | loss {event.loss_pct:.1f} % | frames "
                f"{event.frames_sent} sent, {event.frames_received} played"
            )
            if self.console.is_terminal:
                self._set_status(text)
            elif event.elapsed - self._last_plain >= 5.0:
                self._last_plain = event.elapsed
                self._line(text)
        elif isinstance(event, ev.Ended):
            self.stop()
            self._line(f"call ended: {event.reason}")


def write_json(report: dict[str, Any], target: str) -> None:
    text = json.dumps(report, indent=2)
    if target == "-":
        sys.stdout.write(text + "\n")
    else:
        Path(target).write_text(text + "\n", encoding="utf-8")


def show_report(report: dict[str, Any], json_target: str | None) -> None:
    # With --json -, stdout is for the JSON alone; the table goes to stderr.
    console = Console(stderr=json_target == "-")
    console.print(render_table(report))
    if json_target:
        write_json(report, json_target)


# -- commands ----------------------------------------------------------------------------


async def _server_address(
    arg: str | None, config_server: str | None, err: Console
) -> tuple[Address, Any]:
    text = arg or config_server
    if text is None:
        address, hosted = await find_or_host(DEFAULT_SERVER)
        if hosted is not None:
            err.print(
                f"no rendezvous answered on {format_address(DEFAULT_SERVER)}; hosting one in "
                "this process (it lives as long as this call)",
                highlight=False,
            )
        return address, hosted
    try:
        host, port = parse_address(text, default_port=3478)
    except ValueError as exc:
        raise UsageError(f"--server: {exc}") from exc
    try:
        return await resolve(host, port), None
    except OSError as exc:
        raise UsageError(f"--server: cannot resolve {host!r}: {exc.strerror or exc}") from exc


def _measured_keepalive(server: Address, err: Console) -> float | None:
    """A keepalive interval from the mapping lifetime natcheck measured on this network."""
    from voip.natcheck.memory import recall  # noqa: PLC0415
    from voip.natcheck.probing import local_ip_towards  # noqa: PLC0415
    from voip.natcheck.verdict import keepalive_interval  # noqa: PLC0415

    try:
        memory = recall(local_ip_towards(server))
    except OSError:
        return None
    if memory is None or memory.lifetime is None:
        return None
    interval = keepalive_interval(memory.lifetime)
    err.print(
        f"your NAT keeps a quiet mapping {memory.lifetime:.0f} s or more (natcheck "
        f"--lifetime): keepalives every {interval:.1f} s",
        highlight=False,
    )
    return interval


async def run_call(args: argparse.Namespace) -> int:
    err = Console(stderr=True, soft_wrap=True)
    config = load_config()
    name = args.name or config.name or getpass.getuser()
    try:
        check_name(name)
        check_name(args.peer)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if name == args.peer:
        raise UsageError(f"you cannot call yourself ({name!r}); pass --as with your own name")
    offer = turn_offer(args, name)
    if offer is not None:
        try:
            offer = TurnOffer(await resolve(*offer.server), offer.username, offer.password)
        except OSError as exc:
            raise UsageError(f"--turn: cannot resolve {offer.server[0]!r}: {exc}") from exc
    source = open_source(args.input)
    try:
        sink = open_sink(args.output)
    except Exception:
        source.close()
        raise
    server, hosted = await _server_address(args.server, config.server, err)
    if hosted is None:
        err.print(f"contacting the rendezvous at {format_address(server)}...", highlight=False)
    keepalive = _measured_keepalive(server, err)
    presenter = Presenter(err)
    call = Call(
        name,
        args.peer,
        source=source,
        sink=sink,
        server=server,
        options=CallOptions(
            wait_timeout=args.wait,
            relay=args.relay,
            turn=offer,
            timeline=args.timeline is not None,
            fec=args.fec,
            dtx=args.dtx,
            keepalive=keepalive,
        ),
        on_event=presenter,
    )
    status = EXIT_OK
    try:
        await call.start()
        try:
            await call.run(args.duration)
        except CallError as exc:
            err.print(f"callpeer: {exc}", highlight=False, style="red")
            status = EXIT_FAILED
    finally:
        await call.hangup("hung up")
        presenter.stop()
        if hosted is not None:
            hosted.close()
    if call.report().path != "none":
        show_report(call.report().to_dict(), args.json)
    elif args.json:
        write_json(call.report().to_dict(), args.json)
    if args.timeline:
        Path(args.timeline).write_text(
            json.dumps(
                {
                    "clock": "monotonic",
                    "frame_ms": 20,
                    "captured_at": call.captured_at,
                    "played_at": call.played_at,
                }
            )
            + "\n",
            encoding="utf-8",
        )
    if args.plot:
        from voip.plot import plot_rtt  # noqa: PLC0415 - matplotlib only when asked for

        err.print(f"RTT plot written to {plot_rtt(call.report(), args.plot)}", highlight=False)
    return status


async def run_demo(args: argparse.Namespace) -> int:
    """Rendezvous and both callers on loopback; each sends a tone and checks what it heard."""
    import tempfile  # noqa: PLC0415

    from voip.codecs.pcm import dominant_frequency  # noqa: PLC0415
    from voip.media.audio_io import ToneSource, WavSink, read_wav  # noqa: PLC0415

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
                options=CallOptions(bind_host="127.0.0.1"),
                on_event=Presenter(err, f"{me}: ") if me == "alice" else None,
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
    return EXIT_OK if ok else EXIT_FAILED


def natcheck_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="callpeer natcheck",
        description="How does your NAT map and filter, and which peers can you call directly? "
        "(RFC 5780 tests against a STUN server with an alternate address: "
        "callpeer-rendezvous --alt-address, or any RFC 5780 server)",
    )
    p.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="the STUN server (default: config 'server', else 127.0.0.1:3478)",
    )
    p.add_argument(
        "--lifetime",
        nargs="?",
        type=float,
        const=LIFETIME_LIMIT,
        metavar="MAX_SECONDS",
        help="also measure how long the NAT keeps a quiet mapping, trying quiet periods up to "
        f"MAX_SECONDS (default {LIFETIME_LIMIT:.0f}); takes up to twice that. Calls then "
        "send keepalives to match",
    )
    p.add_argument("--json", metavar="PATH|-", help="write the result as JSON (- for stdout)")
    return p


LIFETIME_LIMIT = 120.0


async def run_natcheck(args: argparse.Namespace) -> int:
    from voip.natcheck.memory import remember  # noqa: PLC0415
    from voip.natcheck.probing import measure_lifetime, run_tests  # noqa: PLC0415
    from voip.natcheck.verdict import classify  # noqa: PLC0415

    if args.lifetime is not None and not 2 <= args.lifetime <= 3600:
        raise UsageError("--lifetime: MAX_SECONDS must be 2-3600")
    console = Console(stderr=args.json == "-", soft_wrap=True)
    config = load_config()
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    err = Console(stderr=True, soft_wrap=True)
    try:
        if argv and argv[0] == "devices":
            return run_devices()
        if argv and argv[0] == "lab":
            from voip.lab.cli import lab_parser, run_lab  # noqa: PLC0415 - Linux and root only

            return run_lab(lab_parser().parse_args(argv[1:]))
        if argv and argv[0] == "natcheck":
            return asyncio.run(run_natcheck(natcheck_parser().parse_args(argv[1:])))
        if argv and argv[0] == "demo":
            return asyncio.run(_hang_up_on_sigterm(run_demo(demo_parser().parse_args(argv[1:]))))
        return asyncio.run(_hang_up_on_sigterm(run_call(call_parser().parse_args(argv))))
    except (UsageError, AudioSpecError, ValueError) as exc:
        err.print(f"callpeer: {exc}", highlight=False, style="red")
        return EXIT_USAGE
    except (SoundcardUnavailable, CodecUnavailable, LabError, PlotUnavailable) as exc:
        err.print(f"callpeer: {exc}", highlight=False, style="red")
        return EXIT_FAILED
    except OSError as exc:
        err.print(f"callpeer: {exc}", highlight=False, style="red")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
