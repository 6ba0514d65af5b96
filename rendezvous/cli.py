"""`callpeer-rendezvous`: run the rendezvous server, and the TURN relay if asked."""

from __future__ import annotations

import argparse
import asyncio
import copy
import ipaddress
import secrets
import signal
import socket
import ssl
import sys
from collections.abc import Callable

from rendezvous.batched_routes import forwarder_missing
from rendezvous.cli_options import DEFAULT_LISTEN
from rendezvous.cli_options import build_parser
from rendezvous.limits import OPTIONS as LIMIT_OPTIONS
from rendezvous.limits import Limits
from rendezvous.logic import RelayOffer
from rendezvous.logic import RendezvousLogic
from rendezvous.name_store import MEMORY
from rendezvous.name_store import NameStore
from rendezvous.name_store import NameStoreError
from rendezvous.name_store import default_store_path
from rendezvous.offload import ChannelOffload
from rendezvous.redis_presence import StoreUnreachable
from rendezvous.relay_fleet import RelayFleet
from rendezvous.running import loop_factory
from rendezvous.running import raise_open_file_limit
from rendezvous.running import run_server
from rendezvous.running import start_offload
from rendezvous.server import TLS_PORT
from rendezvous.server import RendezvousServer
from rendezvous.tls import server_context
from rendezvous.turn_server import TurnPolicy
from rendezvous.workers import Worker
from rendezvous.workers import default_relay_range
from rendezvous.workers import run_workers
from voip.wire.candidates import format_address
from voip.wire.candidates import parse_address
from voip.wire.turn import turn_url


def build_server(
    args: argparse.Namespace, host: str, store: NameStore | None = None
) -> RendezvousServer:
    """The server the arguments describe: ValueError for arguments that do not fit together,
    then NameStoreError if the store (--store, or the default file) cannot be opened."""
    offer = None
    if args.turn_url:
        if not args.turn_secret:
            raise ValueError("--turn-url needs --turn-secret (the TURN server's REST secret)")
        relays = tuple(dict.fromkeys(resolved(turn_url(url)) for url in args.turn_url))
        fleet = RelayFleet(relays) if len(relays) > 1 else None
        offer = RelayOffer(relays[0], args.turn_secret, fleet=fleet)
    try:
        allowed = [ipaddress.ip_network(c, strict=False) for c in args.allow_peer]
    except ValueError as exc:
        raise ValueError(f"--allow-peer: {exc}") from exc
    limits = Limits(**{name: getattr(args, name) for _, name, _ in LIMIT_OPTIONS})
    if not 1.0 <= args.lifetime <= 86400.0:  # NaN too: no comparison holds
        raise ValueError("--lifetime: 1 to 86400 seconds")
    if args.redis is not None:
        if args.store is not None:
            raise ValueError("--store and --redis: with --redis, names and their keys are in Redis")
        if not args.redis.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("--redis: a URL such as redis://HOST:PORT/DB")
        store = NameStore(MEMORY)  # unused: the logic asks Redis
    # Opened only once the arguments are known good: a typo never creates a store file.
    if store is None:
        store = open_store(args.store, limits.binding_days)
    logic = RendezvousLogic(args.lifetime, relay=offer, limits=limits, store=store)
    if offer is not None and offer.fleet is not None:
        offer.fleet.stats = logic.stats  # relays going down and coming back, counted
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
    server = RendezvousServer.with_relay(relay_host, logic, policy, relay_host6, port_range(args))
    server.batched = args.forward != "python"
    if args.forward == "batched" and (missing := forwarder_missing()):
        raise ValueError(f"--forward batched: {missing}")
    return server


def resolved(address: tuple[str, int]) -> tuple[str, int]:
    """A relay's address as callers are told it: an IP address (a name is looked up once, at
    start); ValueError if it cannot be."""
    host, port = address
    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        raise ValueError(f"--turn-url: cannot resolve {host!r}: {exc}") from exc
    # IPv4 first: a caller registered over IPv4 allocates over IPv4 (as the offer always was).
    info.sort(key=lambda found: found[0] != socket.AF_INET)
    return str(info[0][4][0]), port


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
        factory = loop_factory(args.loop, tls is not None)
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
        shared: list[ChannelOffload] = []  # loaded once, before the workers, who inherit it

        def prepare(resolved: list[tuple[str, int]]) -> None:
            ports = server.relay_ports
            offload = start_offload(ports.host if ports else None, resolved[0][1])
            shared.extend([offload] if offload else [])

        def serve(worker: Worker) -> int:
            kernel = shared[0] if shared else None
            return serve_worker(worker, args, tls, tls_listen, lambda _: kernel)

        try:
            return run_workers(args.workers, listens, serve, prepare if args.offload else None)
        except OSError as exc:
            where = " or ".join(args.listen or [DEFAULT_LISTEN])
            print(f"callpeer-rendezvous: cannot listen on {where}: {exc}", file=sys.stderr)
            return 1
        finally:
            for offload in shared:
                offload.close()
    loaded: list[ChannelOffload] = []
    signal.signal(signal.SIGTERM, interrupted)  # stopped as by Ctrl-C: the kernel path detached

    def kernel_path(running: RendezvousServer) -> ChannelOffload | None:
        ports = running.relay_ports
        offload = start_offload(ports.host if ports else None, running.address[1])
        loaded.extend([offload] if offload else [])
        return offload

    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(
                run_server(
                    server,
                    host,
                    port,
                    args.quiet,
                    args.alt_address,
                    tcp=not args.no_tcp,
                    tls=tls,
                    tls_listen=tls_listen,
                    also=also,
                    offload=kernel_path if args.offload else None,
                    redis=args.redis,
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
    except StoreUnreachable as exc:
        print(f"callpeer-rendezvous: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        store.close()
        for offload in loaded:
            offload.close()
    return 0


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_worker(
    worker: Worker,
    args: argparse.Namespace,
    tls: ssl.SSLContext | None,
    tls_listen: tuple[str, int],
    offload: Callable[[RendezvousServer], ChannelOffload | None],
) -> int:
    """One worker of --workers: the server the arguments describe, on its share of the relay
    ports and of the total quota; the home also with the names, TCP, TLS and RFC 5780."""
    mine = copy.copy(args)
    whole = port_range(args) or default_relay_range()
    mine.min_port, mine.max_port = worker.port_slice(whole)
    mine.allocations = max(1, args.allocations // worker.count)
    (host, port), also = worker.listens[0], tuple(worker.listens[1:])
    server = build_server(mine, host, None if worker.home else NameStore(MEMORY))
    if server.turn is not None and server.relay_ports is not None:
        server.turn.policy.sibling_hosts = frozenset(server.relay_ports.hosts)
        server.turn.policy.sibling_ports = whole
        server.turn.policy.own_ports = (mine.min_port, mine.max_port)
    server.receive_buffer, server.reuse_port = args.rcvbuf, True
    worker.shares_names = args.redis is not None
    run = run_server(
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
        offload=offload,
        redis=args.redis,  # each worker serves the names of its clients; alone, the home
    )
    try:
        with asyncio.Runner(
            loop_factory=loop_factory(args.loop, worker.home and tls is not None)
        ) as runner:
            runner.run(run)
    except KeyboardInterrupt:
        pass
    finally:
        server.logic.owners.store.close()
    return 0


def open_store(path: str | None, max_age_days: int) -> NameStore:
    """The store --store names; the default file if none (created 0600 in a 0700 directory)."""
    return NameStore(path or default_store_path(), max_age_days=max_age_days)
