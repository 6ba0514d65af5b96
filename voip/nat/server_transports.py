"""Which transport reaches each of our servers, sans-IO: UDP, else TCP, else TLS (RFC 8656 §3.1).

A caller talks to two servers, the rendezvous and the relay, and to both over UDP first. On a
network that blocks UDP (hotels, offices) nothing comes back: after FALLBACK_AFTER of silence
from a server that has been sent requests, that server is reached over TCP to the same port,
and if TCP cannot connect, over TLS (to TLS_PORT, where strict firewalls let it out, then to
5349, IANA's). A server that answers once over UDP stays on UDP. The user may also name the
transport (`--server-transport tls`, `--turn turns:HOST:PORT`), and then only that one is
tried, again and again, never UDP in its place.

Only the servers move to a stream: the peer is still reached over UDP, directly or, where UDP
is blocked, through the relay, whose allocation relays UDP whatever carries it to us. The
asyncio shell (voip/server_streams.py) opens the streams this object asks for and tells it
when one connects or fails.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from dataclasses import field
from enum import StrEnum

from voip.wire.stun import Address

FALLBACK_AFTER = 1.5  # s of a server's silence over UDP (four sends on SERVER_SCHEDULE)
TLS_PORT = 443
TURNS_PORT = 5349  # IANA's, where callpeer-rendezvous listens on TLS by default: tried next
FORCED_RETRY = 2.0  # s before a transport asked for is tried again: it never falls to UDP
RESEND = 2  # the latest requests sent over UDP, sent again on the stream as it opens
REOPEN = 2  # a stream that closed after connecting is opened again this often


class Transport(StrEnum):
    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


@dataclass(frozen=True)
class Route:
    server: Address  # the address the sans-IO core sends to and hears from
    transport: Transport
    connect_to: Address  # where the stream goes: the TLS port may not be the UDP one
    name: str | None = None  # the name a TLS certificate must carry (else the IP address)


@dataclass(frozen=True)
class OpenStream:
    route: Route
    resend: tuple[bytes, ...] = ()  # requests to put on the stream once it connects


@dataclass
class _Server:
    choices: list[Route]  # the streams still to try, in order
    first_sent: float | None = None
    heard: bool = False  # answered over UDP: no stream for it
    route: Route | None = None  # the stream that carries it now (or is being opened)
    connected: bool = False
    reopened: int = 0
    forced: bool = False  # asked for: only that transport, ever (never UDP in the clear)
    retry_at: float | None = None  # a forced one, down: when to try again
    late_udp: bool = False  # UDP answered after all, once a stream was under way
    tried: list[str] = field(default_factory=list)  # what failed, in a user's words
    recent: deque[bytes] = field(default_factory=lambda: deque(maxlen=RESEND))


class ServerTransports:
    def __init__(self, tls_port: int = TLS_PORT, fallback_after: float = FALLBACK_AFTER):
        self.tls_port = tls_port
        self.fallback_after = fallback_after
        self._servers: dict[Address, _Server] = {}
        # A server had no answer over UDP and a stream reached it: UDP is blocked here, and a
        # server watched later (the relay, after the rendezvous) goes to TCP without waiting.
        self.udp_blocked = False
        # Some server may still move to a stream: what goes to it over UDP is watched. False
        # once every one answered or was moved, so media costs no look-up per datagram.
        self.undecided = False

    def watch(
        self, server: Address, forced: Transport | None = None, name: str | None = None
    ) -> list[OpenStream]:
        """Expect answers from `server`; `forced`: reach it over that transport alone (at
        `server` itself). A stream to open at once, if it is forced to one."""
        if server in self._servers:
            return []
        if forced is None:
            ports = dict.fromkeys((self.tls_port, TURNS_PORT))  # 443, then 5349, once each
            choices = [Route(server, Transport.TCP, server, name)] + [
                Route(server, Transport.TLS, (server[0], port), name) for port in ports
            ]
        else:
            choices = [Route(server, forced, server, name)] if forced != Transport.UDP else []
        state = self._servers[server] = _Server(choices, forced=forced is not None)
        if forced == Transport.UDP:
            state.heard = True  # UDP it is, answer or not
            return []
        if forced is None and not self.udp_blocked:
            self.undecided = True
            return []
        if forced is None:
            state.tried.append("UDP gets no answer on this network")
        return [self._next(state)]

    def route(self, server: Address) -> Route | None:
        """The stream that carries `server` now, if any."""
        state = self._servers.get(server)
        return state.route if state is not None else None

    def transport(self, server: Address) -> Transport:
        """How `server` is reached now (UDP until a stream is open and carrying it)."""
        state = self._servers.get(server)
        if state is None or state.route is None or not state.connected:
            return Transport.UDP
        return state.route.transport

    def tried(self, server: Address) -> list[str]:
        state = self._servers.get(server)
        return list(state.tried) if state is not None else []

    def sent(self, data: bytes, dest: Address, now: float) -> None:
        """`data` went to `dest` over UDP."""
        state = self._servers.get(dest)
        if state is None or state.heard or state.route is not None:
            return
        if state.first_sent is None:
            state.first_sent = now
        if len(data) >= 20 and data[0] >> 6 == 0 and not data[0] & 0x01 and not data[1] & 0x10:
            state.recent.append(data)  # a STUN request: the class bits are 00

    def heard(self, src: Address) -> None:
        """A datagram from `src` came over UDP: if it is a server of ours, UDP reaches it."""
        state = self._servers.get(src)
        if state is None or state.heard:
            return
        if state.route is not None:  # slow, not blocked: the stream goes on, UDP is not "off"
            state.late_udp = True
            return
        state.heard = True
        self._decide()

    def next_deadline(self) -> float | None:
        times = [
            s.first_sent + self.fallback_after
            for s in self._servers.values()
            if s.first_sent is not None and not s.heard and s.route is None and s.choices
        ]
        times += [s.retry_at for s in self._servers.values() if s.retry_at is not None]
        return min(times, default=None)

    def poll(self, now: float) -> list[OpenStream]:
        out: list[OpenStream] = []
        for state in self._servers.values():
            if state.retry_at is not None and now >= state.retry_at and state.route is not None:
                state.retry_at = None
                out.append(OpenStream(state.route))
            due = state.first_sent is not None and now >= state.first_sent + self.fallback_after
            if due and not state.heard and state.route is None and state.choices:
                state.tried.append(f"no answer over UDP in {self.fallback_after:g} s")
                out.append(self._next(state))
        return out

    def connected(self, server: Address) -> None:
        state = self._servers.get(server)
        if state is not None and state.route is not None:
            state.connected, state.retry_at = True, None
            if state.first_sent is not None and not state.heard and not state.late_udp:
                self.udp_blocked = True  # it fell back after UDP's silence, and a stream works

    def failed(self, server: Address, why: str, now: float = 0.0) -> list[OpenStream]:
        """The stream to `server` could not connect, or closed: the next one to try, if any
        (the same again, if it had connected and has not been reopened too often). One asked
        for is tried again FORCED_RETRY later, however often: meanwhile nothing goes to that
        server, never UDP in its place (a certificate refused must not mean the clear)."""
        state = self._servers.get(server)
        if state is None or state.route is None:
            return []
        route, was_connected = state.route, state.connected
        state.tried.append(f"{route.transport.upper()} to {_text(route.connect_to)}: {why}")
        state.connected = False
        if state.forced:
            state.retry_at = now + FORCED_RETRY
            return []
        state.route = None
        if was_connected and state.reopened < REOPEN:
            state.reopened += 1
            state.choices.insert(0, route)
        if not state.choices:
            self._decide()
            return []
        return [self._next(state)]

    def _next(self, state: _Server) -> OpenStream:
        state.route = state.choices.pop(0)
        resend, state.recent = tuple(state.recent), deque(maxlen=RESEND)
        self._decide()
        return OpenStream(state.route, resend)

    def _decide(self) -> None:
        self.undecided = any(
            not s.heard and s.route is None and s.choices for s in self._servers.values()
        )


def _text(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
