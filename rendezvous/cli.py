"""`callpeer-rendezvous`: run the rendezvous server, and the TURN relay if asked."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import ipaddress
import os
import resource
import secrets
import ssl
import sys
from collections.abc import Callable

from rendezvous.limits import OPTIONS as LIMIT_OPTIONS
from rendezvous.limits import Limits
from rendezvous.logic import RelayOffer
from rendezvous.logic import RendezvousLogic
from rendezvous.name_store import MEMORY
from rendezvous.name_store import NameStore
from rendezvous.name_store import NameStoreError
from rendezvous.name_store import default_store_path
from rendezvous.server import RECEIVE_BUFFER
from rendezvous.server import TLS_PORT
from rendezvous.server import RendezvousServer
from rendezvous.tls import server_context
from rendezvous.turn_server import TurnPolicy
from rendezvous.workers import DEFAULT_RANGE
from rendezvous.workers import Worker
from rendezvous.workers import run_workers
from voip.wire.candidates import format_address
from voip.wire.candidates import parse_address
from voip.wire.turn import turn_url

DEFAULT_LISTEN = "0.0.0.0:3478"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="callpeer-rendezvous",
        description="Rendezvous for callpeer: answers STUN Binding, introduces callers, and "
        "relays (TURN, RFC 8656) when asked to.",
    )
    p.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help=f"address to listen on, UDP and TCP (default {DEFAULT_LISTEN}); give it twice "
        "for IPv4 and IPv6 ([2001:db8::10]:3478), or [::]:3478 for both on one socket",
    )
    p.add_argument(
        "--no-tcp",
        action="store_true",
        help="no TCP listener on the --listen port (UDP only, and TLS if asked for)",
    )
    p.add_argument(
        "--tls-cert",
        metavar="FILE",
        help="PEM certificate chain: listen on TLS too (STUN, signalling and TURN, for "
        "callers whose networks block UDP); needs --tls-key",
    )
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument(
        "--tls-listen",
        metavar="HOST:PORT",
        help=f"TLS address (default the --listen host, port {TLS_PORT}; 443 gets through "
        "most firewalls but needs root)",
    )
    p.add_argument(
        "--alt-address",
        metavar="HOST",
        help="a second IP of this host: listen there too, and on port+1 of both, for RFC 5780 "
        "NAT behaviour tests (callpeer natcheck)",
    )
    p.add_argument(
        "--lifetime",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a name is kept without a refresh (default 30)",
    )
    p.add_argument(
        "--store",
        metavar="PATH",
        help="SQLite file of names and the keys that own them, kept across restarts (default "
        f"{default_store_path()}; '{MEMORY}' keeps nothing)",
    )
    relay = p.add_argument_group("relay (TURN)")
    relay.add_argument(
        "--relay-address",
        action="append",
        default=[],
        metavar="HOST",
        help="be a TURN relay too, with relayed addresses on HOST (this machine's "
        "public address); default: the --listen host if it is an IPv4 one, not 0.0.0.0. "
        "Give it twice, an IPv4 and an IPv6 address, for IPv6 and dual allocations "
        "(RFC 8656)",
    )
    relay.add_argument("--no-relay", action="store_true", help="never relay")
    relay.add_argument(
        "--min-port",
        type=int,
        metavar="PORT",
        help="relayed ports from --min-port to --max-port, drawn at random (coturn's "
        "options; default: the kernel's pick, from its ephemeral range)",
    )
    relay.add_argument("--max-port", type=int, metavar="PORT", help="see --min-port")
    relay.add_argument(
        "--turn-secret",
        metavar="SECRET",
        help="shared secret for TURN REST credentials (coturn's "
        "static-auth-secret); default: a random one",
    )
    relay.add_argument(
        "--turn-url",
        metavar="turn:HOST:PORT",
        help="offer callers this TURN server instead of our own (coturn with "
        "use-auth-secret, or callpeer-rendezvous on the relay host), with "
        "credentials from --turn-secret",
    )
    relay.add_argument(
        "--allow-peer",
        action="append",
        default=[],
        metavar="CIDR",
        help="relay to peers in this range too, though it is not globally reachable (private, "
        "carrier-grade NAT, documentation and other IANA special-purpose ranges are refused "
        "by default; repeatable)",
    )
    relay.add_argument(
        "--allow-loopback-peers",
        action="store_true",
        help="relay to loopback peers: only for a relay that is itself on loopback",
    )
    caps = p.add_argument_group("limits (what strangers can make this server hold)")
    defaults = Limits()
    for option, name, what in LIMIT_OPTIONS:
        caps.add_argument(
            option,
            dest=name,
            type=positive_int,
            default=getattr(defaults, name),
            metavar="N",
            help=f"{what} (default {getattr(defaults, name):,})",
        )
    speed = p.add_argument_group("speed")
    speed.add_argument(
        "--workers",
        type=positive_int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="processes sharing the port, one a core (default: this machine's cores, "
        f"{os.cpu_count() or 1}); each relays for the clients the kernel gives it, and one "
        "holds the names. With more than one, relayed ports come from --min-port/--max-port "
        f"(default {DEFAULT_RANGE[0]}-{DEFAULT_RANGE[1]}), split between them",
    )
    speed.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop: uvloop (libuv, faster wake-ups) or asyncio's own; auto: uvloop when "
        "it is installed (default)",
    )
    speed.add_argument(
        "--rcvbuf",
        type=positive_int,
        default=RECEIVE_BUFFER,
        metavar="BYTES",
        help=f"receive buffer of each listening socket (default {RECEIVE_BUFFER:,}, as coturn; "
        "past net.core.rmem_max only as root): bursts from many callers at once wait there",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop --loop names (None: asyncio's); ValueError for uvloop when it is not
    installed (auto then falls back to asyncio's)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional: only the server that asks for it needs it
    except ImportError:
        if choice == "uvloop":
            raise ValueError(
                "--loop uvloop: uvloop is not installed (pip install uvloop)"
            ) from None
        return None
    return uvloop.new_event_loop


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_server(
    args: argparse.Namespace, host: str, store: NameStore | None = None
) -> RendezvousServer:
    """The server the arguments describe: ValueError for arguments that do not fit together,
    then NameStoreError if the store (--store, or the default file) cannot be opened."""
    offer = None
    if args.turn_url:
        if not args.turn_secret:
            raise ValueError("--turn-url needs --turn-secret (the TURN server's REST secret)")
        offer = RelayOffer(turn_url(args.turn_url), args.turn_secret)
    try:
        allowed = [ipaddress.ip_network(c, strict=False) for c in args.allow_peer]
    except ValueError as exc:
        raise ValueError(f"--allow-peer: {exc}") from exc
    limits = Limits(**{name: getattr(args, name) for _, name, _ in LIMIT_OPTIONS})
    # Opened only once the arguments are known good: a typo never creates a store file.
    if store is None:
        store = open_store(args.store, limits.binding_days)
    logic = RendezvousLogic(args.lifetime, relay=offer, limits=limits, store=store)
    wildcard = host in ("0.0.0.0", "::", "")  # noqa: S104
    relay_host, relay_host6 = relay_addresses(args.relay_address)
    # By default the relay is on the --listen host, if that is an IPv4 address (see above).
    relay_host = relay_host or (None if wildcard or ":" in host else host)
    if args.no_relay or relay_host is None or (offer is not None and not args.relay_address):
        return RendezvousServer(logic)
    policy = TurnPolicy(
        secret=args.turn_secret,
        allowed_peers=allowed,
        allow_loopback_peers=args.allow_loopback_peers,
        limits=limits,
    )
    return RendezvousServer.with_relay(relay_host, logic, policy, relay_host6, port_range(args))


def port_range(args: argparse.Namespace) -> tuple[int, int] | None:
    """--min-port and --max-port as a range, or None; ValueError unless both, in order."""
    if args.min_port is None and args.max_port is None:
        return None
    if args.min_port is None or args.max_port is None:
        raise ValueError("--min-port and --max-port go together")
    if not 1024 <= args.min_port <= args.max_port <= 65535:
        raise ValueError("--min-port and --max-port: 1024 <= min <= max <= 65535")
    return args.min_port, args.max_port


def relay_addresses(given: list[str]) -> tuple[str | None, str | None]:
    """(where allocations are, where IPv6 ones are) from --relay-address given up to twice;
    ValueError for anything else. An IPv6 address alone is refused: an Allocate that names no
    family asks for IPv4 (RFC 8656 §7.2), which such a relay could not give."""
    four = [a for a in given if ":" not in a]
    six = [a for a in given if ":" in a]
    if len(four) > 1 or len(six) > 1:
        raise ValueError("--relay-address: at most twice, an IPv4 and an IPv6 address")
    if six and not four:
        raise ValueError("--relay-address: an IPv6 address goes with an IPv4 one")
    return (four[0] if four else None), (six[0] if six else None)


def tls_options(
    args: argparse.Namespace, host: str
) -> tuple[ssl.SSLContext | None, tuple[str, int]]:
    """The TLS context (None without --tls-cert) and where to listen on TLS: ValueError for
    options that do not fit together, OSError or ssl.SSLError for files that cannot be used."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    where = (host, TLS_PORT)
    if args.tls_listen:
        if not args.tls_cert:
            raise ValueError("--tls-listen needs --tls-cert and --tls-key")
        where = parse_address(args.tls_listen, default_port=TLS_PORT, allow_any_port=True)
    context = server_context(args.tls_cert, args.tls_key) if args.tls_cert else None
    return context, where


async def _run(
    server: RendezvousServer,
    host: str,
    port: int,
    quiet: bool,
    alt_host: str | None = None,
    *,
    tcp: bool = True,
    tls: ssl.SSLContext | None = None,
    tls_listen: tuple[str, int] | None = None,
    also: tuple[tuple[str, int], ...] = (),
    on_started: Callable[[RendezvousServer], None] | None = None,
) -> None:
    tls_host, tls_port = tls_listen or (host, TLS_PORT)
    await server.start(
        host, port, alt_host, tcp=tcp, tls=tls, tls_host=tls_host, tls_port=tls_port, also=also
    )
    if on_started is not None:
        on_started(server)
    if not quiet:
        print(f"callpeer-rendezvous listening on udp {format_address(server.address)}", flush=True)
        for extra in server.also:
            print(f"listening on udp {format_address(extra)} too", flush=True)
        if server.tcp_address is not None:
            print(f"listening on tcp {format_address(server.tcp_address)}", flush=True)
        if server.tls_address is not None:
            print(f"listening on tls {format_address(server.tls_address)}", flush=True)
        relay = server.logic.relay
        if server.relay_ports is not None:
            where = " and ".join(server.relay_ports.hosts)
            print(f"relaying (TURN) with allocations on {where}", flush=True)
        if relay is not None:
            print(f"offering callers the relay turn:{format_address(relay.server)}", flush=True)
        addresses = server.logic.addresses
        if addresses is not None and addresses.alternate is not None:
            where = ", ".join(format_address(a) for a in addresses.all())
            print(f"NAT behaviour tests (RFC 5780) on {where}", flush=True)
        store = server.logic.owners.store
        print(f"names and their keys in {store.path} ({len(store):,} bound)", flush=True)
    try:
        while True:
            await asyncio.sleep(60)
            stats = server.stats
            if not quiet and stats:
                counts = ", ".join(f"{k}={v}" for k, v in sorted(stats.items()))
                print(f"{len(server.logic.registry)} online; {counts}", flush=True)
    finally:
        server.close()


def raise_open_file_limit() -> None:
    """Every relay allocation is a socket: take the open-file limit up to what the system
    allows (the soft default is often 1024), as coturn does."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = min(hard, 1 << 20) if hard != resource.RLIM_INFINITY else 1 << 20
        if soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raise_open_file_limit()
    try:
        listens = [
            parse_address(text, default_port=3478, allow_any_port=True)
            for text in args.listen or [DEFAULT_LISTEN]
        ]
        if len({":" in h for h, _ in listens}) != len(listens):
            raise ValueError("--listen: once, or twice with an IPv4 and an IPv6 address")
        (host, port), also = listens[0], tuple(listens[1:])
        tls, tls_listen = tls_options(args, host)
        factory = loop_factory(args.loop)
        if args.workers > 1:
            build_server(args, host, NameStore(MEMORY)).close()  # the arguments fit together
            port_range(args)
        server = build_server(args, host)
        server.receive_buffer = args.rcvbuf
    except ValueError as exc:
        print(f"callpeer-rendezvous: {exc}", file=sys.stderr)
        return 2
    except (OSError, ssl.SSLError) as exc:  # ssl.SSLError is an OSError; named for the reader
        print(f"callpeer-rendezvous: cannot use the TLS certificate or key: {exc}", file=sys.stderr)
        return 1
    except NameStoreError as exc:
        print(f"callpeer-rendezvous: {exc}", file=sys.stderr)
        return 1
    store = server.logic.owners.store
    if args.workers > 1:
        store.close()  # each worker opens what it needs, after the fork
        if server.turn is not None or args.turn_url:
            args.turn_secret = args.turn_secret or secrets.token_urlsafe(18)  # one for all
        try:
            return run_workers(
                args.workers, listens, lambda worker: serve_worker(worker, args, tls, tls_listen)
            )
        except OSError as exc:
            where = " or ".join(args.listen or [DEFAULT_LISTEN])
            print(f"callpeer-rendezvous: cannot listen on {where}: {exc}", file=sys.stderr)
            return 1
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(
                _run(
                    server,
                    host,
                    port,
                    args.quiet,
                    args.alt_address,
                    tcp=not args.no_tcp,
                    tls=tls,
                    tls_listen=tls_listen,
                    also=also,
                )
            )
    except OSError as exc:
        where = " or ".join(
            [*(args.listen or [DEFAULT_LISTEN]), *([format_address(tls_listen)] if tls else [])]
        )
        print(
            f"callpeer-rendezvous: cannot listen on {where}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        store.close()
    return 0


def serve_worker(
    worker: Worker,
    args: argparse.Namespace,
    tls: ssl.SSLContext | None,
    tls_listen: tuple[str, int],
) -> int:
    """One worker of --workers: the server the arguments describe, on its share of the relay
    ports and of the total quota; the home also with the names, TCP, TLS and RFC 5780."""
    mine = copy.copy(args)
    whole = port_range(args) or DEFAULT_RANGE
    mine.min_port, mine.max_port = worker.port_slice(whole)
    mine.allocations = max(1, args.allocations // worker.count)
    (host, port), also = worker.listens[0], tuple(worker.listens[1:])
    server = build_server(mine, host, None if worker.home else NameStore(MEMORY))
    if server.turn is not None and server.relay_ports is not None:
        server.turn.policy.sibling_hosts = frozenset(server.relay_ports.hosts)
        server.turn.policy.sibling_ports = whole
    server.receive_buffer, server.reuse_port = args.rcvbuf, True
    run = _run(
        server,
        host,
        port,
        args.quiet or not worker.home,
        args.alt_address if worker.home else None,
        tcp=worker.home and not args.no_tcp,
        tls=tls if worker.home else None,
        tls_listen=tls_listen,
        also=also,
        on_started=worker.started,
    )
    try:
        with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
            runner.run(run)
    except KeyboardInterrupt:
        pass
    finally:
        server.logic.owners.store.close()
    return 0


def open_store(path: str | None, max_age_days: int) -> NameStore:
    """The store --store names; the default file if none (created 0600 in a 0700 directory)."""
    return NameStore(path or default_store_path(), max_age_days=max_age_days)
