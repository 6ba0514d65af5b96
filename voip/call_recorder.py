"""The call report, built from what happened: fed events as the call goes, read at any time.

`CallRecorder` keeps what the events said (the paths found, every RTT sample, the switches, the
end); `build()` adds what the audio session and the checks know at that moment and returns a new
`CallReport`, so reading a report never changes the call's state or a later report.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from voip import events as ev
from voip.media.audio_session import AudioSession
from voip.nat import checks
from voip.nat.checks import DIRECT
from voip.nat.checks import RELAYED
from voip.nat.checks import ConnectivityChecks
from voip.nat.connector import Connector
from voip.nat.connector import ConnectorEvent
from voip.nat.connector import RelayReady
from voip.nat.connector import RelayUnavailable
from voip.nat.found_by import found_by
from voip.nat.pairs import Pair
from voip.nat.port_mapper import PortMapped
from voip.nat.port_mapper import PortMappingFailed
from voip.nat.relay_choice import RelayChosen
from voip.nat.signal_events import Registered
from voip.report import CallReport
from voip.report import PathMetrics
from voip.wire.candidates import format_address
from voip.wire.signal import PeerReady
from voip.wire.stun import Address

# Connector events that only feed the report (and the live view): `CallRecorder.measured`.
MEASURED = (
    Registered,
    RelayReady,
    RelayUnavailable,
    RelayChosen,
    PortMapped,
    PortMappingFailed,
    checks.RttSample,
    checks.ProbeLost,
    checks.StandbyChanged,
)
HOPELESS_PUNCHING = "both NATs map per destination (symmetric), so the relay was used at once"
UDP_BLOCKED = (
    "no UDP leaves this network (servers answered over TCP or TLS only), so the relay was used "
    "at once"
)


class CallRecorder:
    def __init__(
        self,
        me: str,
        peer: str,
        stats_interval: float = 1.0,
        keepalive: float | None = None,
        connector: Connector | None = None,
    ):
        self.base = CallReport(me=me, peer=peer, keepalive_s=keepalive)
        self.active_kind: str | None = None
        self.stats_interval = stats_interval
        self.connector = connector  # to tell how a direct path was found
        self._next_stats = 0.0  # s into the call
        self._reached: dict[Address, str] = {}  # servers reached over TCP or TLS, not UDP
        self._relay_server: Address | None = None

    def reached_over(self, server: Address, transport: str) -> None:
        """`server` is reached over `transport` now (the shell's streams say so)."""
        self._reached[server] = transport
        if server == self._relay_server:
            self.base.relay.transport = transport

    def metrics(self, kind: str) -> PathMetrics:
        return self.base.direct if kind == DIRECT else self.base.relay

    def path_found(self, pair: Pair, remote: str) -> None:
        """A path proved both ways (active or standby): it is available, at `remote`."""
        metrics = self.metrics(pair.kind)
        metrics.available = True
        metrics.remote = remote
        metrics.found_by = found_by(pair, self.connector) if self.connector else None

    def path_active(self, pair: Pair, remote: str, since_met: float) -> None:
        """The audio goes on `pair` now, `since_met` s after the introduction."""
        self.path_found(pair, remote)
        if pair.kind == DIRECT and self.base.direct_ms is None:
            self.base.direct_ms = since_met * 1000
        if self.active_kind is not None:
            self.base.path_switches += 1
        self.active_kind = self.base.path = pair.kind

    def rtt(self, kind: str, t: float, rtt: float, source: str) -> None:
        self.metrics(kind).add_rtt(t, rtt, source)

    def introduced(self, ready: PeerReady, waited: float, own_mapping: str | None) -> ev.Punching:
        """The rendezvous introduced the peer after `waited` seconds: punching starts."""
        self.base.wait_ms = waited * 1000
        self.base.candidates_tried = [str(c) for c in ready.candidates]
        self.base.nat_mapping = {"mine": own_mapping, "peer": ready.peer_mapping}
        return ev.Punching(ready.peer, ready.candidates, ready.controlling)

    def measured(
        self,
        event: ConnectorEvent,
        since_connected: float | None,
        shown: Callable[[checks.Pair], str],
    ) -> ev.CallEvent | None:
        """What a connector event adds to the report, and the call event it makes, if any.
        `since_connected` is None before the call connected: samples from the setup, when both
        ends are busy, are not the path's to be charged with. `shown`: a pair's remote end as
        the report shows it."""
        if isinstance(event, Registered):
            self.base.local_public = format_address(event.mapped)
            return ev.Registered(self.base.me, event.mapped)
        if isinstance(event, RelayChosen):
            # Measured by our own Bindings to each relay offered, as the choice was made.
            self.base.relay.choice = [
                {
                    "server": format_address(server),
                    "rtt_ms": None if rtt is None else round(rtt * 1000, 2),
                    "chosen": server == event.server,
                }
                for server, rtt in event.rtts
            ]
            return ev.RelayChosen(event.server, event.rtts)
        if isinstance(event, RelayReady):
            self._relay_server = event.server
            self.base.relay.transport = self._reached.get(event.server, "udp")
            return ev.RelayAllocated(event.relayed, event.server, self.base.relay.transport)
        if isinstance(event, PortMapped):
            self.base.port_mapping = {
                "protocol": event.protocol,
                "public": format_address(event.public),
            }
            return ev.PortMapped(event.public, event.protocol, event.lifetime)
        if isinstance(event, PortMappingFailed):
            self.base.port_mapping = {"protocol": None, "public": None, "reason": event.reason}
            return ev.PortMapped(None, event.reason)
        if isinstance(event, RelayUnavailable):
            self.base.relay.reason = event.reason
        elif isinstance(event, checks.RttSample) and since_connected is not None:
            self.rtt(event.kind, since_connected, event.rtt, "stun")
            if not event.active:
                self.metrics(event.kind).probes_answered += 1
        elif isinstance(event, checks.ProbeLost):
            self.metrics(event.kind).probes_lost += 1
        elif isinstance(event, checks.StandbyChanged):
            remote = shown(event.pair)
            self.path_found(event.pair, remote)
            return ev.Standby(event.pair.kind, remote)
        return None

    def live_stats(self, elapsed: float, audio: AudioSession) -> ev.LiveStats | None:
        """The figures of the call so far, for the live view, once every `stats_interval`."""
        if elapsed < self._next_stats:
            return None
        self._next_stats = elapsed + self.stats_interval
        return ev.LiveStats(
            path=self.base.path,
            elapsed=elapsed,
            rtt_ms=self.metrics(self.base.path).latest_rtt_ms(),
            jitter_ms=audio.rx.jitter_ms,
            loss_pct=audio.rx.loss_pct,
            frames_sent=audio.counts.frames_sent,
            frames_received=audio.counts.frames_received,
        )

    def build(
        self,
        audio: AudioSession | None,
        checks: ConnectivityChecks | None,
        punch_hopeless: bool | str = False,  # or why, if not that both NATs map per destination
        relay_unavailable: str | None = None,
    ) -> CallReport:
        r = copy.deepcopy(self.base)
        for kind in (DIRECT, RELAYED):
            metrics = self.metrics_of(r, kind)
            if kind == self.active_kind and audio is not None:  # RFC 3550 statistics
                metrics.jitter_ms, metrics.loss_pct = audio.rx.jitter_ms, audio.rx.loss_pct
            elif metrics.available:  # the standby: what its probes showed
                metrics.jitter_ms, metrics.loss_pct = (
                    metrics.probe_jitter_ms(),
                    metrics.probe_loss_pct(),
                )
            elif metrics.reason is None and checks is not None:
                metrics.reason = checks.checklist.unreached(kind)
                if kind == DIRECT and punch_hopeless:
                    why = punch_hopeless if isinstance(punch_hopeless, str) else HOPELESS_PUNCHING
                    metrics.reason = f"{why}; {metrics.reason}"
            elif metrics.reason is None:  # an unavailable path always says why
                metrics.reason = "not tried: the peer was never introduced"
        if not r.relay.available and relay_unavailable:
            r.relay.reason = relay_unavailable
        if audio is not None:
            r.audio = copy.deepcopy(audio.counts)
            r.audio.frames_late = audio.jitter_buffer.late
            buffered = audio.jitter_buffer_ms()
            if buffered is not None:
                r.jitter_buffer_ms = buffered
        return r

    @staticmethod
    def metrics_of(report: CallReport, kind: str) -> PathMetrics:
        return report.direct if kind == DIRECT else report.relay
