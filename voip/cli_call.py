"""`callpeer call`: a call's options, TURN credentials from them, and one call to its end."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import time
from pathlib import Path

from rich.console import Console

from voip.call import Call
from voip.call import CallError
from voip.call import CallOptions
from voip.cli_identity import CallKnownPeers
from voip.cli_identity import add_identity_argument
from voip.cli_identity import identity_path
from voip.cli_identity import open_identity
from voip.cli_output import EXIT_FAILED
from voip.cli_output import EXIT_OK
from voip.cli_output import Presenter
from voip.cli_output import UsageError
from voip.cli_output import show_report
from voip.cli_output import write_json
from voip.cli_servers import call_servers
from voip.cli_servers import tls_name
from voip.config import Config
from voip.config import load_config
from voip.media.audio_io import AudioSpecError
from voip.media.audio_io import open_sink
from voip.media.audio_io import open_source
from voip.nat.server_transports import TLS_PORT
from voip.nat.server_transports import Transport
from voip.nat.signal_events import TurnOffer
from voip.security.known_peers import default_known_peers_path
from voip.transport import resolve
from voip.wire.signal import check_name
from voip.wire.stun import Address
from voip.wire.turn import rest_credentials
from voip.wire.turn import turn_uri

CALL_HELP = "call PEER directly through your NAT (callpeer PEER ... is short for this)"
CALL_DESCRIPTION = "Call PEER directly through your NAT."
CALL_EPILOG = (
    "Both sides must ask for each other: `callpeer --as alice bob` and "
    "`callpeer --as bob alice` (`call` may be left out unless PEER is named like a command: "
    "`callpeer call lab`)."
)


def add_call_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("peer", metavar="PEER", help="the name of the person to call")
    p.add_argument(
        "--as",
        dest="name",
        metavar="NAME",
        help="your name on the rendezvous (default: config 'name' or your login)",
    )
    p.add_argument(
        "--server",
        action="append",
        metavar="HOST:PORT",
        help="the rendezvous (default: config 'server', else 127.0.0.1:3478, hosted in this "
        "process if none answers there); given again, or a name with several addresses: "
        "each in turn, the next when one stops answering",
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
    p.add_argument(
        "--no-port-mapping",
        dest="port_mapping",
        action="store_false",
        help="do not ask your router to open a port for the call (PCP, NAT-PMP); also "
        "CALLPEER_PORT_MAPPING=off or port_mapping = false in the config file",
    )
    reach = p.add_argument_group(
        "networks that block UDP",
        "The rendezvous and the relay are reached over UDP first; where no answer comes "
        "(hotel and office networks), over TCP to the same port, then TLS (RFC 8656).",
    )
    reach.add_argument(
        "--server-transport",
        choices=("auto", "udp", "tcp", "tls"),
        default="auto",
        help="how to reach the rendezvous: auto (default) tries UDP, then TCP, then TLS on "
        "--tls-port; the others use that one alone, at --server's port",
    )
    reach.add_argument(
        "--tls-port",
        type=int,
        default=TLS_PORT,
        metavar="PORT",
        help=f"where auto tries TLS (default {TLS_PORT})",
    )
    reach.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="the CA (or the server's own self-signed certificate) to check TLS servers "
        "with, instead of the system's",
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
        help="a TURN server of your own (e.g. coturn) instead of the one the rendezvous "
        "offers; turn:HOST:PORT?transport=tcp for TCP only, turns:HOST:PORT for TLS",
    )
    relay.add_argument(
        "--turn-secret", metavar="SECRET", help="its REST API secret (coturn's static-auth-secret)"
    )
    relay.add_argument("--turn-user", metavar="USER", help="or long-term credentials: user")
    relay.add_argument("--turn-password", metavar="PASSWORD", help="and password")
    keys = p.add_argument_group(
        "keys",
        "Audio is encrypted end to end, and each side proves its long-term key. A first call "
        "remembers PEER's key in known_peers (compare the code it shows aloud); a later call "
        "with another key stops before any audio. known_peers is "
        "$XDG_CONFIG_HOME/callpeer/known_peers whichever --identity is yours: it holds the "
        "keys of the people you call, and is the file `callpeer trust` writes.",
    )
    add_identity_argument(keys)
    keys.add_argument(
        "--accept-new-key",
        action="store_true",
        help="go on when PEER proves a key other than the one known_peers holds for them, and "
        "remember the new one (check it with them first: their `callpeer whoami`)",
    )


def user_config() -> Config:
    """The config file and CALLPEER_* variables; a bad one is the user's to fix (exit 2)."""
    try:
        return load_config()
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def caller_name(arg: str | None, config: Config) -> str:
    """Who you are on the rendezvous: --as, else config 'name', else your login; UsageError
    when it is no valid name, saying how to choose one if it was not typed."""
    name = arg or config.name or getpass.getuser()
    try:
        return check_name(name)
    except ValueError as exc:
        where = "" if arg else " (it came from config 'name' or your login: pass --as NAME)"
        raise UsageError(f"{exc}{where}") from exc


def turn_offer(args: argparse.Namespace, name: str) -> TurnOffer | None:
    """The --turn options as a TURN server with credentials; UsageError if incomplete."""
    if args.turn is None:
        if args.turn_secret or args.turn_user or args.turn_password:
            raise UsageError("--turn-secret, --turn-user and --turn-password go with --turn")
        return None
    try:
        host, port, transport = turn_uri(args.turn)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.turn_secret:
        username, password = rest_credentials(args.turn_secret, name, time.time())
    elif args.turn_user and args.turn_password:
        username, password = args.turn_user, args.turn_password
    else:
        raise UsageError("--turn needs --turn-secret, or --turn-user and --turn-password")
    forced = None if transport == "auto" else Transport(transport)
    return TurnOffer((host, port), username, password, forced, tls_name(host))


def check_plot_path(path: str) -> None:
    """Refuse a --plot file matplotlib cannot write now, rather than after the call."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase  # noqa: PLC0415 - heavy
    except ImportError:
        return  # plot_rtt says what to install
    kinds = FigureCanvasBase.get_supported_filetypes()
    suffix = Path(path).suffix[1:].lower()
    if suffix and suffix not in kinds:
        raise UsageError(
            f"--plot: cannot draw a .{suffix} file; one of: {', '.join(sorted(kinds))}"
        )


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
    config = user_config()
    name = caller_name(args.name, config)
    try:
        check_name(args.peer)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if name == args.peer:
        raise UsageError(f"you cannot call yourself ({name!r}); pass --as with your own name")
    offer = turn_offer(args, name)
    if offer is not None:
        try:
            offer = dataclasses.replace(offer, server=await resolve(*offer.server))
        except OSError as exc:
            raise UsageError(f"--turn: cannot resolve {offer.server[0]!r}: {exc}") from exc
    if args.plot:
        check_plot_path(args.plot)
    path = identity_path(args.identity)  # a bad --identity is refused before any key is made
    # known_peers is read first: a damaged one stops the call before a new identity is made.
    known = CallKnownPeers(
        default_known_peers_path(),
        lambda text: err.print(f"callpeer: warning: {text}", style="yellow", highlight=False),
    )
    identity = open_identity(
        path, err, " (`callpeer whoami` shows it again; give it to the people you call)"
    )
    try:
        source = open_source(args.input)
        try:
            sink = open_sink(args.output)
        except Exception:
            source.close()
            raise
    except AudioSpecError as exc:  # a bad tone, WAV file or path: what the user typed
        raise UsageError(str(exc)) from exc
    servers = await call_servers(args.server, config.servers, err)
    transport = args.server_transport
    if servers.hosted is None:
        err.print(f"contacting the rendezvous at {servers.describe()}...", highlight=False)
    keepalive = _measured_keepalive(servers.addresses[0], err)
    presenter = Presenter(err)
    call = Call(
        name,
        args.peer,
        source=source,
        sink=sink,
        server=servers.addresses,
        options=CallOptions(
            wait_timeout=args.wait,
            relay=args.relay,
            turn=offer,
            timeline=args.timeline is not None,
            fec=args.fec,
            dtx=args.dtx,
            keepalive=keepalive,
            identity=identity,
            known_peers=known,
            accept_new_key=args.accept_new_key,
            port_mapping=args.port_mapping and config.port_mapping,
            server_transport=None if transport == "auto" else Transport(transport),
            server_name=servers.names.get(servers.addresses[0]),
            server_names=servers.names,
            tls_ca=args.tls_ca,
            tls_port=args.tls_port,
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
        if servers.hosted is not None:
            servers.hosted.close()
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
