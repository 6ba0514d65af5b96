"""Why a call could not be made, in a user's words, from the events that end it before it starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from voip.nat import checks
from voip.nat.connector import ConnectorEvent
from voip.nat.connector import PeerTimeout
from voip.nat.signal_events import Refused
from voip.nat.signal_events import Unreachable
from voip.wire.candidates import format_address
from voip.wire.signal import ERR_CAPACITY
from voip.wire.signal import ERR_NAME_TAKEN
from voip.wire.signal import ERR_QUOTA

if TYPE_CHECKING:
    from voip.call_core import CallCore

# `callpeer` subcommands: a first word among them runs it, and is no PEER in the shorthand
COMMANDS = ("call", "demo", "lab", "natcheck", "devices", "whoami", "trust")


def call_command(name: str, peer: str) -> str:
    """What `name` types to call `peer`: `call` spelled out when PEER is named like a command."""
    return f"callpeer {'call ' if peer in COMMANDS else ''}--as {name} {peer}"


# What a refusal means for the user; the server's reason phrases are fixed and short.
REFUSAL_HINTS = {
    ERR_NAME_TAKEN: " (the name {name!r} belongs to another identity key on this rendezvous: "
    "names are kept by the first key that claims them. Pick another name with --as, or use "
    "the identity that claimed it with --identity; 'callpeer whoami' shows yours)",
    ERR_QUOTA: " (too many names are registered from your public address)",
    ERR_CAPACITY: " (the rendezvous is full; try again later or use another)",
}


def failure_message(call: CallCore, event: ConnectorEvent) -> str | None:
    """The message that ends `call` for `event`, or None when the event does not end it."""
    signal = call.connector.signal
    server = format_address(signal.server)
    if isinstance(event, Refused):
        hint = REFUSAL_HINTS.get(event.code, "").format(name=call.name)
        return f"the rendezvous at {server} refused us: {event.code} {event.reason}{hint}"
    if isinstance(event, Unreachable) and signal.mapped is None:
        servers = ", ".join(format_address(s) for s in signal.servers)
        where = "rendezvous at" if len(signal.servers) == 1 else "rendezvous servers"
        return (
            f"no answer from the {where} {servers} after {event.waited:.0f} s (is "
            "callpeer-rendezvous running there, and is UDP let through?)"
        )
    if isinstance(event, PeerTimeout):
        return (
            f"{call.peer} did not call back within {round(event.waited, 1):g} s "
            f"(they must run: {call_command(call.peer, call.name)})"
        )
    if isinstance(event, checks.ChecksFailed) and not call.connected:
        relay = call.connector.relay.unavailable
        state = f"none here: {relay}" if relay else "and the relayed pairs did not answer either"
        return (
            f"could not reach {call.peer}: {event.reason} (tried {', '.join(event.tried)}). "
            "Punching cannot work when one NAT maps per destination (symmetric) and the "
            "other filters by port, or both map per destination; that needs a relay "
            f"({state})"
        )
    return None
