"""`callpeer-rendezvous`: run the rendezvous server."""

from __future__ import annotations

import argparse
import asyncio
import sys

from rendezvous.logic import RendezvousLogic
from rendezvous.server import RendezvousServer
from voip.nat.candidates import format_address, parse_address

DEFAULT_LISTEN = "0.0.0.0:3478"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="callpeer-rendezvous",
        description="Rendezvous for callpeer: answers STUN Binding and introduces callers.",
    )
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"UDP address to listen on (default {DEFAULT_LISTEN})",
    )
    p.add_argument(
        "--lifetime",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a name is kept without a refresh (default 30)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    return p


async def _run(host: str, port: int, lifetime: float, quiet: bool) -> None:
    server = await RendezvousServer(RendezvousLogic(lifetime)).start(host, port)
    if not quiet:
        print(f"callpeer-rendezvous listening on udp {format_address(server.address)}", flush=True)
    try:
        while True:
            await asyncio.sleep(60)
            if not quiet and server.logic.stats:
                counts = ", ".join(f"{k}={v}" for k, v in sorted(server.logic.stats.items()))
                print(f"{len(server.logic.registry)} online; {counts}", flush=True)
    finally:
        server.close()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        host, port = parse_address(args.listen, default_port=3478, allow_any_port=True)
    except ValueError as exc:
        print(f"callpeer-rendezvous: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_run(host, port, args.lifetime, args.quiet))
    except OSError as exc:
        print(
            f"callpeer-rendezvous: cannot listen on {args.listen}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
