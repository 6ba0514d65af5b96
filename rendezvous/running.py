"""Running a built rendezvous server: its event loop, its first lines and its counters, and the
kernel fast path (--offload) beside it."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import ssl
import sys
from collections import Counter
from collections.abc import Callable

from rendezvous.batched_routes import forwarder_missing
from rendezvous.offload import ChannelOffload
from rendezvous.offload import OffloadUnavailable
from rendezvous.offload_routes import kernel_counters
from rendezvous.offload_routes import load_offload
from rendezvous.offload_routes import mirror_routes
from rendezvous.redis_presence import share_presence
from rendezvous.server import TLS_PORT
from rendezvous.server import RendezvousServer
from voip.wire.candidates import format_address


def loop_factory(choice: str, tls: bool = False) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop --loop names (None: asyncio's); ValueError for uvloop when it is not
    installed or the server listens on TLS (auto then falls back to asyncio's): uvloop's
    start_tls hands the client's first TLS bytes to the protocol, not to the handshake."""
    if choice == "asyncio" or (choice == "auto" and tls):
        return None
    if tls:
        raise ValueError("--loop uvloop cannot serve TLS (--tls-cert): use --loop asyncio or auto")
    try:
        import uvloop  # noqa: PLC0415 - optional: only the server that asks for it needs it
    except ImportError:
        if choice == "uvloop":
            raise ValueError(
                "--loop uvloop: uvloop is not installed (pip install uvloop)"
            ) from None
        return None
    return uvloop.new_event_loop


async def run_server(
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
    offload: Callable[[RendezvousServer], ChannelOffload | None] | None = None,
    redis: str | None = None,
) -> None:
    tls_host, tls_port = tls_listen or (host, TLS_PORT)
    # The store first: a REGISTER served before it was reached would be served by this
    # process's own rules alone, and could take a name that another key owns in the store.
    days = server.logic.limits.binding_days
    store = None if redis is None else await share_presence(server, redis, days)
    try:
        await server.start(
            host, port, alt_host, tcp=tcp, tls=tls, tls_host=tls_host, tls_port=tls_port, also=also
        )
    except BaseException:
        if store is not None:
            await store.close()
        raise
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
            print(f"live channels forwarded {forwarding(server)}", flush=True)
        if relay is not None:
            relays = relay.fleet.relays if relay.fleet is not None else (relay.server,)
            where = ", ".join(f"turn:{format_address(r)}" for r in relays)
            print(f"offering callers the relay {where}", flush=True)
        addresses = server.logic.addresses
        if addresses is not None and addresses.alternate is not None:
            where = ", ".join(format_address(a) for a in addresses.all())
            print(f"NAT behaviour tests (RFC 5780) on {where}", flush=True)
        if store is not None:
            where = f"names, their keys and asks in Redis at {redis}"
            print(f"{where}, shared as server {store.shared.server_id}", flush=True)
        else:
            names = server.logic.owners.store
            print(f"names and their keys in {names.path} ({len(names):,} bound)", flush=True)
    kernel = offload(server) if offload is not None else None
    if kernel is not None:
        mirror_routes(server, kernel)
        if not quiet:
            where = ", ".join(kernel.interfaces)
            print(f"kernel fast path (tc/eBPF) on {where}: channels in use skip us", flush=True)
            for note in kernel.notes:
                print(note, flush=True)
    try:
        while True:
            await asyncio.sleep(60)
            stats = server.stats + Counter(kernel_counters(kernel) if kernel else {})
            if not quiet and stats:
                counts = ", ".join(f"{k}={v}" for k, v in sorted(stats.items()))
                print(f"{len(server.logic.registry)} online; {counts}", flush=True)
    finally:
        if not quiet:  # what it did, once more on the way out (the lab reads it)
            stats = server.stats + Counter(kernel_counters(kernel) if kernel else {})
            counts = ", ".join(f"{k}={v}" for k, v in sorted(stats.items()))
            print(f"stopped; {counts}", flush=True)
        server.close()
        if store is not None:
            await store.close()


def forwarding(server: RendezvousServer) -> str:
    """How the relay forwards its live channels in user space, and why not in batches."""
    if server.fast is not None and server.fast.batched is not None:
        return "in batches (C: recvmmsg, sendmmsg)"
    if not server.batched:
        return "in Python (--forward python)"
    if server.fast is None or server.fast.out is None:
        return "in Python (batches need one main socket: a single --listen, not dual-stack)"
    return f"in Python ({forwarder_missing()})"


def raise_open_file_limit() -> None:
    """Every relay allocation is a socket: take the open-file limit up to what the system
    allows (the soft default is often 1024), as coturn does."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = min(hard, 1 << 20) if hard != resource.RLIM_INFINITY else 1 << 20
        if soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def start_offload(relay_host: str | None, port: int) -> ChannelOffload | None:
    """--offload: the kernel fast path, or None after a line that says why the relay stays in
    user space."""
    try:
        if relay_host is None:
            raise OffloadUnavailable("this server does not relay")
        return load_offload(relay_host, port)
    except OffloadUnavailable as exc:
        print(f"callpeer-rendezvous: --offload: {exc}; relaying in user space", file=sys.stderr)
        return None
