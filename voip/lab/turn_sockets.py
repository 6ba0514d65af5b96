"""TurnClients on plain non-blocking sockets, for the benches that drive hundreds at once."""

from __future__ import annotations

import socket

from voip.nat.turn_client import Transmit
from voip.nat.turn_client import TurnClient
from voip.wire.stun import StunError
from voip.wire.stun import looks_like_stun
from voip.wire.stun import parse_message_untrusted


def drain_answers(sock: socket.socket, client: TurnClient, now: float) -> list[Transmit]:
    """Every datagram waiting on `sock`, the relay's answers among them fed to `client`: what
    it sends in reply. Anything else is dropped, as a caller's socket would."""
    out: list[Transmit] = []
    while True:
        try:
            data, src = sock.recvfrom(2048)
        except OSError:  # BlockingIOError: drained; any other error: nothing more to read
            return out
        if not looks_like_stun(data):
            continue
        try:
            msg = parse_message_untrusted(data)
        except StunError:
            continue
        out += client.handle(msg, (str(src[0]), int(src[1])), now) or []
