"""How worker processes (callpeer-rendezvous --workers) pass the home worker what is its to
handle: each such datagram, with the client's address and ours, on a Unix datagram socket.

The kernel hashes each client's datagrams to one worker (SO_REUSEPORT). A worker relays for its
own clients (TURN requests and ChannelData, rendezvous/node.py `relaying`) and answers plain
Binding requests itself; names, introductions and RFC 5780's Binding answers live in the home
worker only, so everything else goes there, and the home answers from its own socket on the
same port: the client cannot tell. The frames cross only between our own processes; still, a
frame that does not parse is dropped, never raised.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable

from voip.rate_log import RateLimitedLog
from voip.wire.stun import Address

LINK_BUFFER = 4 * 1024 * 1024  # bytes: a burst of registrations waits here for the home
DRAIN = 1024  # frames read per wake-up at most
_LENGTH = struct.Struct("!H")

Take = Callable[[bytes, Address, Address], None]  # data, src, local

log = logging.getLogger(__name__)


def pack_frame(data: bytes, src: Address, local: Address) -> bytes:
    head = f"{src[0]} {src[1]} {local[0]} {local[1]}".encode()
    return _LENGTH.pack(len(head)) + head + data


def unpack_frame(frame: bytes) -> tuple[bytes, Address, Address] | None:
    """(data, src, local) of a frame, or None when it does not parse."""
    try:
        (length,) = _LENGTH.unpack_from(frame)
        src_host, src_port, local_host, local_port = frame[2 : 2 + length].decode().split(" ")
        return frame[2 + length :], (src_host, int(src_port)), (local_host, int(local_port))
    except (struct.error, UnicodeDecodeError, ValueError):
        return None


def link_pair() -> tuple[socket.socket, socket.socket]:
    """The two ends of one worker's link to the home: (the home's, the worker's)."""
    home, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for end in (home, worker):
        end.setblocking(False)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LINK_BUFFER)
        end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LINK_BUFFER)
    return home, worker


class HomeReader:
    """The home's end of one link: every frame to `take`, guarded as a datagram handler is."""

    def __init__(self, sock: socket.socket, take: Take, clock: Callable[[], float]):
        self.sock, self.take, self.clock = sock, take, clock
        self.failures = 0  # frames that did not parse, and frames `take` raised on
        self._failed_take = RateLimitedLog(log, clock=clock)

    def readable(self) -> None:
        for _ in range(DRAIN):
            try:
                frame = self.sock.recv(65536 + 256)
            except BlockingIOError:
                return
            except OSError:  # the worker has gone: its clients' next datagrams go elsewhere
                return
            parsed = unpack_frame(frame)
            if parsed is None:
                self.failures += 1
                continue
            try:
                self.take(*parsed)
            except Exception:
                self.failures += 1
                # Written here, without the count the helper adds: the line as it always read.
                if self._failed_take.note():
                    log.exception("a datagram from another worker could not be handled")
