"""`callpeer-rendezvous`'s options: what a user may type, with the help that says what each does."""

from __future__ import annotations

import argparse
import os
import sys

from rendezvous.limits import OPTIONS as LIMIT_OPTIONS
from rendezvous.limits import Limits
from rendezvous.name_store import MEMORY
from rendezvous.name_store import default_store_path
from rendezvous.server import RECEIVE_BUFFER
from rendezvous.server import TLS_PORT
from rendezvous.workers import default_relay_range

DEFAULT_LISTEN = "0.0.0.0:3478"
# One worker a core where SO_REUSEPORT spreads UDP between processes (Linux); one elsewhere.
DEFAULT_WORKERS = (os.cpu_count() or 1) if sys.platform.startswith("linux") else 1


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
    p.add_argument(
        "--redis",
        metavar="URL",
        help="keep names, their keys and who asks for whom in Redis (redis://HOST:PORT/DB), "
        "shared with every rendezvous that names the same one: callers registered with "
        "different servers find each other",
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
        action="append",
        metavar="turn:HOST:PORT",
        help="offer callers this TURN server instead of our own (coturn with "
        "use-auth-secret, or callpeer-rendezvous on the relay host), with "
        "credentials from --turn-secret; given again, a fleet sharing that secret: those that "
        "answer are offered, and each caller allocates on the one nearest to it",
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
    low, high = default_relay_range()
    speed = p.add_argument_group("speed")
    speed.add_argument(
        "--workers",
        type=positive_int,
        default=DEFAULT_WORKERS,
        metavar="N",
        help="processes sharing the port, one a core (default: this machine's cores, "
        f"{DEFAULT_WORKERS}; 1 off Linux); each relays for the clients the kernel gives it, "
        "and one holds the names. With more than one, relayed ports come from "
        f"--min-port/--max-port (default {low}-{high}: the ports above the kernel's ephemeral "
        "range), split between them; give a range no other service uses",
    )
    speed.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop: uvloop (libuv, faster wake-ups) or asyncio's own; auto: uvloop when "
        "it is installed (default)",
    )
    speed.add_argument(
        "--forward",
        choices=("auto", "batched", "python"),
        default="auto",
        help="how established channels are relayed in user space: batched (C, recvmmsg and "
        "sendmmsg, no Python per datagram) or python; auto: batched when it was built at "
        "install (default)",
    )
    speed.add_argument(
        "--offload",
        action="store_true",
        help="relay established channels in the kernel (tc/eBPF; needs root): their "
        "ChannelData never reaches this process. Without root or kernel support the server "
        "says why and relays in user space",
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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
