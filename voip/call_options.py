"""What a caller may choose for a call: timeouts, relay use, codec options, keys, transports."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field

from voip.nat.server_transports import TLS_PORT
from voip.nat.server_transports import Transport
from voip.nat.signal_events import TurnOffer
from voip.security.identity import Identity
from voip.security.known_peers import KnownPeers
from voip.wire.stun import Address


@dataclass
class CallOptions:
    wait_timeout: float = 120.0  # how long to wait for the peer to call back
    punch_timeout: float = 10.0
    rtcp_interval: float = 1.0
    stats_interval: float = 1.0
    bind_host: str = "0.0.0.0"  # noqa: S104 - a caller must receive from its peer on any interface
    bind_port: int = 0
    relay: str = "auto"  # auto: relay only if direct fails; force: audio over it; off: none
    timeline: bool = False  # record when each frame was read from the source and played
    fec: bool = True  # Opus in-band FEC: send it, and rebuild lost frames from it
    dtx: bool = False  # Opus DTX: in silence, a comfort-noise update every 400 ms and nothing else
    turn: TurnOffer | None = None  # a TURN server of our own choosing (e.g. coturn)
    # Ask the relay for an IPv6 relayed address besides the IPv4 one (RFC 8656 dual
    # allocation): the `Call` does when its socket is dual-stack.
    relay_ipv6: bool = False
    # Seconds between packets on a quiet mapping (to the rendezvous and the relay, while
    # waiting): for a NAT that forgets mappings sooner than the defaults allow for. The CLI
    # takes it from `callpeer natcheck --lifetime`.
    keepalive: float | None = None
    # Who we are (None: a key made for this call alone) and the keys we have met (None: none
    # remembered, every peer is met for the first time), as voip/security/ describes.
    identity: Identity | None = None
    known_peers: KnownPeers | None = None
    accept_new_key: bool = False  # go on when a peer's key differs from the pinned one
    # Ask our router to open a public port for the call (PCP, NAT-PMP), and where: the gateway
    # and our address towards it (the `Call` finds them when port_mapping is on and none given).
    port_mapping: bool = True
    gateway: tuple[str, str] | None = None
    # How the rendezvous is reached: None tries UDP, then TCP, then TLS on tls_port (RFC 8656
    # §3.1); "tcp" or "tls" alone when asked. tls_ca: a private CA (or a self-signed server's
    # certificate) to check TLS servers with, else the system's; server_name: the name the
    # rendezvous's certificate must carry, if not its IP address.
    server_transport: Transport | None = None
    server_name: str | None = None
    server_names: dict[Address, str] = field(default_factory=dict)  # several: each its own
    tls_ca: str | None = None
    tls_port: int = TLS_PORT
