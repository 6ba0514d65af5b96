"""Types of the C forwarder built from rendezvous/channel_forward.c."""

from typing import Any

BATCH: int

class Forwarder:
    def __init__(self, seed: int) -> None: ...
    def route(
        self,
        side: int,
        in_fd: int,
        src: tuple[str, int],
        channel: int,
        out_fd: int,
        dest: tuple[str, int],
        out_channel: int,
        expires: float,
    ) -> None: ...
    def unroute(self, side: int, in_fd: int, src: tuple[str, int], channel: int) -> bool: ...
    def drain(
        self, side: int, fd: int, now: float, limit: int, most_rest: int
    ) -> tuple[int, int, int, bool, list[tuple[bytes, tuple[Any, ...]]]]: ...
    def forget(self, fd: int) -> int: ...
    def routes(self, side: int) -> int: ...
