"""TurnClients on plain non-blocking sockets, for the benches that drive hundreds at once: the
relay quotas such a crowd from one IP needs, and which sockets are whose (for kernel drops)."""

from __future__ import annotations

import contextlib
import os
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


def crowd_quotas(allocations: int) -> list[str]:
    """callpeer-rendezvous options that let `allocations` TURN clients (and as many names) from
    one IP and one user, as a bench's are, be served (the defaults: 32 allocations per IP, 10
    per user, 64 names per IP, 64 claims per IP an hour, 3,600 claims an hour in all)."""
    room = str(max(1000, 4 * allocations))
    return [
        f"--quota={room}",
        f"--quota-per-ip={room}",
        f"--names-per-ip={room}",
        f"--claims-per-ip={room}",
        f"--claims-per-hour={room}",
        f"--total-quota={max(10_000, 4 * allocations)}",
        f"--max-names={max(100_000, 4 * allocations)}",
    ]


def socket_inodes(pids: list[int]) -> set[int]:
    """The inodes of these processes' sockets, as /proc/net/udp names them."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(fd.path)
                    if link.startswith("socket:["):
                        inodes.add(int(link[8:-1]))
    return inodes
