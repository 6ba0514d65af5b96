"""What `callpeer`'s commands print: usage errors, live call progress, the report and JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from voip import events as ev
from voip.call_messages import call_command
from voip.report import render_table
from voip.security.identity import short_fingerprint
from voip.wire.candidates import format_address

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


class Presenter:
    """Progress lines and the live call line on stderr; rich when it is a terminal."""

    def __init__(self, console: Console, label: str = "", pinned_in: str = "known_peers"):
        """`pinned_in`: where a first call's key is remembered, in the words shown."""
        self.console = console
        self.label = label
        self.pinned_in = pinned_in
        self._status: Any = None
        self._name = "<your name>"
        self._last_plain = 0.0
        self._connected = False

    def _line(self, text: str) -> None:
        self.console.print(f"{self.label}{text}", highlight=False)

    def _set_status(self, text: str) -> None:
        if not self.console.is_terminal:
            return
        if self._status is None:
            self._status = self.console.status(text)
            self._status.start()
        else:
            self._status.update(text)

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def __call__(self, event: ev.CallEvent) -> None:
        if isinstance(event, ev.Registered):
            self._name = event.name
            self._line(
                f"registered as {event.name}; the rendezvous sees you at "
                f"{format_address(event.public)}"
            )
        elif isinstance(event, ev.Waiting):
            self._line(
                f"waiting for {event.peer} to call you (they run: "
                f"{call_command(event.peer, self._name)})..."
            )
            self._set_status(f"waiting for {event.peer}")
        elif isinstance(event, ev.Punching):
            cands = ", ".join(str(c) for c in event.candidates)
            role = "controlling" if event.controlling else "controlled"
            self._line(f"found {event.peer}: punching to {cands} ({role})")
            self._set_status("punching through the NATs")
        elif isinstance(event, ev.PortMapped):
            if event.public is None:
                self._line(f"your router opened no port for the call ({event.protocol})")
            else:
                self._line(
                    f"your router opened {format_address(event.public)} for the call "
                    f"({event.protocol}, {event.lifetime} s, renewed while the call lasts)"
                )
        elif isinstance(event, ev.RelayChosen):
            self._line(relay_choice_line(event))
        elif isinstance(event, ev.RelayAllocated):
            over = "" if event.transport == "udp" else f" over {event.transport.upper()}"
            self._line(
                f"relay allocated: {format_address(event.relayed)} on TURN server "
                f"{format_address(event.server)}{over}"
            )
        elif isinstance(event, ev.ServerMoved):
            how = "stopped answering" if event.answered else "does not answer"
            self._line(
                f"rendezvous {format_address(event.old)} {how}; registering with "
                f"{format_address(event.new)}"
            )
        elif isinstance(event, ev.ServerTransport):
            why = f" ({event.why})" if event.why else ""
            self._line(
                f"reaching the {event.role} {format_address(event.server)} over "
                f"{event.transport.upper()}{why}"
            )
        elif isinstance(event, ev.Secured):
            self._line(self._secured(event))
        elif isinstance(event, ev.Connected):
            self._connected = True
            self._line(
                f"connected {event.path} to {event.remote} ({event.pair}) in "
                f"{event.setup_ms:.0f} ms; audio flowing"
            )
        elif isinstance(event, ev.PathSwitched):
            self._line(f"audio moved to the {event.path} path ({event.remote}): {event.why}")
        elif isinstance(event, ev.Standby):
            self._line(f"measuring the {event.path} path alongside, via {event.remote}")
        elif isinstance(event, ev.LiveStats):
            rtt = "-" if event.rtt_ms is None else f"{event.rtt_ms:.1f} ms"
            text = (
                f"{event.path} | {event.elapsed:5.1f} s | RTT {rtt} | jitter "
                f"{event.jitter_ms:.1f} ms | loss {event.loss_pct:.1f} % | frames "
                f"{event.frames_sent} sent, {event.frames_received} played"
            )
            if self.console.is_terminal:
                self._set_status(text)
            elif event.elapsed - self._last_plain >= 5.0:
                self._last_plain = event.elapsed
                self._line(text)
        elif isinstance(event, ev.Ended):
            self.stop()
            # A call that failed before it connected raises CallError with this same reason,
            # which the command prints as its error line: said once, not twice.
            if event.ok or self._connected:
                self._line(f"call ended: {event.reason}")

    def _secured(self, event: ev.Secured) -> str:
        """The key exchange in a line: what protects the audio, and what to do about the peer's
        key (nothing when it was verified; compare the code aloud when it is new to us)."""
        peer, fp = event.peer, event.peer_fingerprint
        head = f"encrypted: {event.cipher}"
        if event.trust == "verified":
            return f"{head}, {peer}'s key verified (fingerprint SHA256:{short_fingerprint(fp)}...)"
        if event.trust == "accepted":
            return (
                f"{head}; {peer}'s NEW key accepted (--accept-new-key): compare the code "
                f"{event.sas!r} aloud ({peer}'s key {fp} replaced the old one in "
                f"{self.pinned_in})"
            )
        # "first", and anything newer this presenter does not know: the cautious wording
        return (
            f"{head}; first call with {peer}: compare the code {event.sas!r} aloud ({peer}'s "
            f"key {fp}, now remembered in {self.pinned_in})"
        )


def relay_choice_line(event: ev.RelayChosen) -> str:
    """The choice among several relays in a line: "nearest relay: A (0.3 ms; B 14.8 ms)",
    the others in the order offered."""

    def rtt(value: float | None) -> str:
        return "no answer" if value is None else f"{value * 1000:.1f} ms"

    chosen = format_address(event.server)
    if all(value is None for _, value in event.rtts):
        waited = ", ".join(format_address(server) for server, _ in event.rtts)
        return f"no relay answered ({waited}): using the first offered, {chosen}"
    others = [f"{format_address(s)} {rtt(v)}" for s, v in event.rtts if s != event.server]
    mine = rtt(dict(event.rtts).get(event.server))
    return f"nearest relay: {chosen} ({'; '.join([mine, *others])})"


def write_json(report: dict[str, Any], target: str) -> None:
    text = json.dumps(report, indent=2)
    if target == "-":
        sys.stdout.write(text + "\n")
    else:
        Path(target).write_text(text + "\n", encoding="utf-8")


def show_report(report: dict[str, Any], json_target: str | None) -> None:
    # With --json -, stdout is for the JSON alone; the table goes to stderr.
    console = Console(stderr=json_target == "-")
    console.print(render_table(report))
    if json_target:
        write_json(report, json_target)
