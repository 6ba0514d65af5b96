"""`callpeer whoami` and `callpeer trust`: your key to give, and the keys of the people you call."""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console

from voip.cli_call import caller_name
from voip.cli_call import user_config
from voip.cli_identity import add_identity_argument
from voip.cli_identity import identity_path
from voip.cli_identity import open_identity
from voip.cli_output import EXIT_OK
from voip.cli_output import UsageError
from voip.cli_output import write_json
from voip.security.known_peers import KnownPeers
from voip.security.known_peers import check_fingerprint
from voip.security.known_peers import default_known_peers_path
from voip.wire.signal import check_name

WHOAMI_DESCRIPTION = (
    "Your name and your key's fingerprint, for the people you call to pin before a first "
    "call (`callpeer trust NAME FINGERPRINT`), and where the key lives. Makes the key on "
    "first use."
)
TRUST_DESCRIPTION = (
    "Remember NAME's key ahead of a call, from the fingerprint their `callpeer whoami` "
    "prints (read out to you, or sent by a channel you trust): calls with NAME then go on "
    "only with that key. Replaces any key known_peers held for NAME."
)


def subcommand(sub: Any, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    """`callpeer NAME`'s parser, on `sub` (argparse's subparsers); `summary` is its line in
    `callpeer --help`."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, prog=f"callpeer {name}", help=summary, description=description
    )
    return parser


def add_key_commands(sub: Any) -> None:
    """The whoami and trust subcommands, on `sub` (argparse's subparsers)."""
    whoami = subcommand(
        sub,
        "whoami",
        "your name and key fingerprint, to give the people you call",
        WHOAMI_DESCRIPTION,
    )
    whoami.add_argument(
        "--as",
        dest="name",
        metavar="NAME",
        help="the name to show (default: config 'name' or your login, as calls use)",
    )
    add_identity_argument(whoami)
    whoami.add_argument("--json", metavar="PATH|-", help="write it as JSON (- for stdout)")
    trust = subcommand(
        sub,
        "trust",
        "pin NAME's key before calling them, from their `callpeer whoami`",
        TRUST_DESCRIPTION,
    )
    trust.add_argument("peer", metavar="NAME", help="their callpeer name")
    trust.add_argument(
        "fingerprint", metavar="FINGERPRINT", help="SHA256: and 43 base64 characters"
    )


def run_whoami(args: argparse.Namespace) -> int:
    """Who you are to the people you call: the name, the key's fingerprint, where it lives."""
    name = caller_name(args.name, user_config())
    path = identity_path(args.identity)
    identity = open_identity(path, Console(stderr=True, soft_wrap=True))
    known = default_known_peers_path()
    console = Console(stderr=args.json == "-", soft_wrap=True)  # stdout for the JSON alone
    for label, value in (
        ("name", name),
        ("fingerprint", identity.fingerprint),
        ("identity", str(path)),
        ("known_peers", str(known)),
    ):
        console.print(f"{label:>12}: {value}", highlight=False)
    console.print(
        f"the people you call pin your key with: callpeer trust {name} {identity.fingerprint}",
        highlight=False,
    )
    if args.json:
        result = {
            "name": name,
            "fingerprint": identity.fingerprint,
            "identity": str(path),
            "known_peers": str(known),
        }
        write_json(result, args.json)
    return EXIT_OK


def run_trust(args: argparse.Namespace) -> int:
    """Pin a key in known_peers, saying what it replaced: a replaced key is a changed identity,
    which the user should know they just accepted."""
    try:
        check_name(args.peer)
        fp = check_fingerprint(args.fingerprint)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    known = KnownPeers(default_known_peers_path())
    before = known.pinned(args.peer)
    if before == fp:
        print(f"{args.peer}'s key {fp} was pinned already, in {known.path}; nothing changed")
        return EXIT_OK
    known.pin(args.peer, fp)
    if before is None:
        print(f"pinned {args.peer}'s key {fp} in {known.path}: calls with {args.peer} check it")
    else:
        print(
            f"pinned {args.peer}'s key {fp} in {known.path}, replacing {before}: calls with "
            f"{args.peer} now refuse the old key"
        )
    return EXIT_OK
