"""The call report's JSON contract (docs/report.md, docs/report.schema.json) held to real reports.

Reports come from whole calls on loopback, as `callpeer --json` writes them (through
`json.dumps`): a direct call, a relayed one, a call whose peer never called back and a call never
started; the lab's "lab" object is built by the lab's own `to_dict()` around a real report.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from rendezvous.local import loopback_server
from rendezvous.server import RendezvousServer
from tests.test_call import silent_call
from tests.test_call import whole_silent_call
from voip import Call
from voip import CallError
from voip import CallOptions
from voip import NullSink
from voip import SilenceSource
from voip.lab.echo import EchoRtt
from voip.lab.scenario import CallerResult
from voip.lab.scenario import LabCallResult
from voip.lab.topology import LabConfig

DOCS = Path(__file__).resolve().parent.parent / "docs"
SCHEMA: dict[str, Any] = json.loads((DOCS / "report.schema.json").read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA)

Report = dict[str, Any]


def as_written(call: Call) -> Report:
    """The report as `callpeer --json` writes it: to_dict() through JSON and back."""
    report: Report = json.loads(json.dumps(call.report().to_dict()))
    return report


def errors(report: Report) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in VALIDATOR.iter_errors(report)
    ]


def _two_callers(server: Callable[[], RendezvousServer], relay: str) -> tuple[Report, Report]:
    """The reports of a whole 1 s call on loopback, through the rendezvous `server` makes."""
    opts = CallOptions(bind_host="127.0.0.1", relay=relay)
    alice, bob = whole_silent_call(server, 1.0, opts, timeout=20)
    return as_written(alice), as_written(bob)


@pytest.fixture(scope="module")
def direct_reports() -> tuple[Report, Report]:
    """A whole 1 s call on loopback through a rendezvous that offers no relay."""
    return _two_callers(RendezvousServer, "auto")


@pytest.fixture(scope="module")
def relayed_reports() -> tuple[Report, Report]:
    """A whole 1 s call with the audio forced through the rendezvous's own relay."""
    return _two_callers(loopback_server, "force")


@pytest.fixture(scope="module")
def failed_report() -> Report:
    """A call whose peer never calls back: it fails before connecting."""

    async def scenario() -> Report:
        async with RendezvousServer() as server:
            await server.start("127.0.0.1", 0)
            opts = CallOptions(bind_host="127.0.0.1", wait_timeout=0.3)
            call = silent_call("alice", "nobody", server, opts)
            with pytest.raises(CallError, match="did not call back"):
                async with call:
                    await call.connected()
            return as_written(call)

    return asyncio.run(scenario())


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_direct_call_reports_match_the_schema(direct_reports: tuple[Report, Report]) -> None:
    for report in direct_reports:
        assert errors(report) == []
        assert report["path"] == "direct"
        assert report["paths"]["direct"]["available"] is True
        relay = report["paths"]["relay"]
        assert relay["available"] is False and isinstance(relay["reason"], str)


def test_relayed_call_reports_match_the_schema(relayed_reports: tuple[Report, Report]) -> None:
    for report in relayed_reports:
        assert errors(report) == []
        assert report["path"] == "relay"
        assert report["paths"]["relay"]["available"] is True
        assert report["paths"]["direct"]["available"] is True  # measured alongside


def test_failed_call_report_matches_the_schema(failed_report: Report) -> None:
    assert errors(failed_report) == []
    assert failed_report["path"] == "none"
    assert failed_report["setup_ms"] is None
    assert "did not call back" in failed_report["ended"]
    for path in failed_report["paths"].values():
        assert path["available"] is False
        assert path["rtt_ms"] is None and path["mos"] is None


def test_report_of_a_call_never_started_matches_the_schema() -> None:
    call = Call("alice", "bob", source=SilenceSource(), sink=NullSink(), server=("127.0.0.1", 9))
    assert errors(as_written(call)) == []


def test_demo_report_matches_the_schema(direct_reports: tuple[Report, Report]) -> None:
    """`callpeer demo --json`: alice's report with a "demo" object (voip/cli.py run_demo)."""
    alice, bob = direct_reports
    report = {
        **alice,
        "demo": {
            "heard_hz": {"alice": 660.0, "bob": 440.0},
            "sent_hz": {"alice": 440.0, "bob": 660.0},
            "bob": bob,
        },
    }
    assert errors(report) == []


def lab_report(alice: Report, bob: Report | None) -> Report:
    """What `callpeer lab --json` writes (voip/lab/cli.py run_lab), around real call reports:
    the lab's own `LabCallResult.to_dict()`, with nodes and baselines as the lab makes them."""
    config = LabConfig(nat_a="cone", nat_b="symmetric", delay_a=5, delay_b=5, delay_relay=40)
    nodes = {
        name: {"namespace": f"lab1-{name}", "address": ip, "public": public, "nat": nat}
        for name, ip, public, nat in (
            ("server", "203.0.113.10", "203.0.113.10", "none"),
            ("relay", "203.0.113.20", "203.0.113.20", "none"),
            ("a", "198.18.1.2", "203.0.113.1", "cone"),
            ("b", "198.18.2.2", "203.0.113.2", "symmetric"),
        )
    }
    result = LabCallResult(config, nodes)
    for name, report in (("alice", alice), ("bob", bob)):
        result.callers[name] = CallerResult(name, 0, "", report, Path(f"{name}.wav"))
    result.inputs = {"alice": "tone:440", "bob": "tone:660"}
    leg = EchoRtt((45.2, 45.9, 46.4), 1)
    result.baseline = {"direct": EchoRtt((10.4, 10.9, 11.3), 0), "relay": leg + leg}
    counts = {"stun": 12, "rtp": 0, "rtcp": 0, "channel": 250, "other": 0}
    result.captures = {"a": {"203.0.113.20:3478": {**counts, "from": ["203.0.113.1:40001"]}}}
    heard = {"alice": "660 Hz (bob sent 660 Hz)", "bob": "4.0 s of alice's speech at -21 dBFS"}
    return {**alice, "lab": {**result.to_dict(), "heard": heard, "bob": bob}}


def test_lab_report_matches_the_schema(relayed_reports: tuple[Report, Report]) -> None:
    alice, bob = relayed_reports
    report: Report = json.loads(json.dumps(lab_report(alice, bob)))
    assert errors(report) == []
    assert set(report["lab"]["baseline_rtt_ms"]) == {"direct", "relay"}
    without_bob: Report = json.loads(json.dumps(lab_report(alice, None)))
    assert errors(without_bob) == []


RTT = {"median": 1.0, "p95": 1.2, "min": 0.9, "samples": 3, "sources": ["rtcp"]}


def _delete(report: Report, *keys: str) -> Report:
    out = copy.deepcopy(report)
    node = out
    for key in keys[:-1]:
        node = node[key]
    del node[keys[-1]]
    return out


def _set(report: Report, value: Any, *keys: str) -> Report:
    out = copy.deepcopy(report)
    node = out
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return out


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda r: _delete(r, "path"), ""),
        (lambda r: _delete(r, "paths", "relay"), "paths"),
        (lambda r: _delete(r, "audio", "frames_sent"), "audio"),
        (lambda r: _delete(r, "paths", "direct", "mos"), "paths/direct"),
        (lambda r: _set(r, "1.2", "setup_ms"), "setup_ms"),
        (lambda r: _set(r, "both", "path"), "path"),
        (lambda r: _set(r, 5.5, "paths", "direct", "mos"), "paths/direct/mos"),
        (lambda r: _set(r, 0.5, "paths", "direct", "mos"), "paths/direct/mos"),
        (lambda r: _set(r, 101.0, "paths", "direct", "loss_pct"), "paths/direct/loss_pct"),
        (lambda r: _set(r, -1.0, "duration_s"), "duration_s"),
        (lambda r: _set(r, 1.5, "audio", "frames_received"), "audio/frames_received"),
        (lambda r: _set(r, {**RTT, "sources": ["ice"]}, "paths", "direct", "rtt_ms"), "paths/"),
        (lambda r: _set(r, {**RTT, "samples": 0}, "paths", "direct", "rtt_ms"), "paths/"),
        (lambda r: _set(r, {}, "paths", "direct", "rtt_ms"), "paths/direct/rtt_ms"),
        (lambda r: _set(r, False, "paths", "direct", "available"), "paths/direct"),
        (lambda r: _set(r, "none", "path"), "setup_ms"),
        (lambda r: _set(r, {"direct": None}, "paths", "tcp"), "paths"),
    ],
)
def test_a_broken_report_fails_validation(
    direct_reports: tuple[Report, Report], change: Callable[[Report], Report], where: str
) -> None:
    good = direct_reports[0]
    assert errors(good) == []
    bad = change(good)
    with pytest.raises(ValidationError):
        VALIDATOR.validate(bad)
    assert any(e.startswith(where or "(top)") for e in errors(bad)), errors(bad)


def test_document_names_every_top_level_key(
    direct_reports: tuple[Report, Report],
    relayed_reports: tuple[Report, Report],
    failed_report: Report,
) -> None:
    doc = (DOCS / "report.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`\"?([a-z_0-9]+)\"?`", doc))
    reports = [*direct_reports, *relayed_reports, failed_report]
    keys = {key for report in reports for key in report}
    keys |= {key for report in reports for key in report["audio"]}
    keys |= {key for r in reports for path in r["paths"].values() for key in path}
    keys |= {key for r in reports for p in r["paths"].values() for key in p["rtt_ms"] or {}}
    keys |= set(lab_report(*relayed_reports)["lab"])
    assert keys - named == set(), "docs/report.md does not mention these report keys"
    assert set(SCHEMA["required"]) <= keys
