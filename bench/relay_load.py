"""Relay load bench: `.venv/bin/python bench/relay_load.py --calls 50 100 --duration 10`."""

# For each N: a fresh relay (`rendezvous.cli.build_server` from `callpeer-rendezvous`'s own
# arguments, in a process of its own, with its per-IP and total quotas raised, since every caller
# here comes from 127.0.0.1), and N calls (a0->b0, a1->b1, ...) with the relay forced, spread over
# --workers caller processes that each run their calls on one asyncio loop (ToneSource, NullSink).
# Once every call has connected (or failed to), the steady part lasts --duration seconds; over it
# are measured the relay's CPU, the packets it forwarded (its own counters, read by SIGUSR1), each
# call's loss (frames the peer sent that were not decoded in time), late and concealed frames, and
# the callers' CPU, who share this machine's cores with the relay.

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.synchronize
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.queues import Queue
from typing import Any

import psutil

HOST = "127.0.0.1"
SECRET = "relay-load"


# -- the relay ---------------------------------------------------------------------------


def quota_options(calls: int) -> list[str]:
    """callpeer-rendezvous options that let 2 * `calls` callers from one IP hold names and
    relay allocations (the defaults: 32 allocations and 64 names per IP, 64 claims per IP an
    hour, 3,600 claims an hour in all)."""
    room = str(max(1000, 4 * calls))
    return [
        f"--quota-per-ip={room}",
        f"--names-per-ip={room}",
        f"--claims-per-ip={room}",
        f"--claims-per-hour={room}",
        f"--total-quota={max(10_000, 4 * calls)}",
        f"--max-names={max(100_000, 4 * calls)}",
    ]


def serve(argv: list[str]) -> None:
    """Run callpeer-rendezvous as its CLI builds it, quietly, printing its counters (one JSON
    line) on each SIGUSR1: the CLI prints them only once a minute."""
    from rendezvous.cli import build_parser, build_server, raise_open_file_limit  # noqa: PLC0415
    from voip.wire.candidates import parse_address  # noqa: PLC0415

    args = build_parser().parse_args(argv)
    raise_open_file_limit()
    host, port = parse_address(args.listen, default_port=3478, allow_any_port=True)
    server = build_server(args, host)

    def dump() -> None:
        stats = dict(server.logic.stats)
        if server.turn is not None:
            stats.update(server.turn.stats)
            stats["allocations"] = len(server.turn.allocations)
        stats["online"] = len(server.logic.registry)
        print(json.dumps(stats), flush=True)

    async def run() -> None:
        await server.start(host, port)
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)
        print(f"callpeer-rendezvous listening on udp {host}:{port}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            server.close()

    try:
        asyncio.run(run())
    finally:
        server.logic.owners.store.close()


class Relay:
    def __init__(self, calls: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((HOST, 0))
            self.port: int = s.getsockname()[1]
        self.options = [
            "--store=:memory:",
            "--listen",
            f"{HOST}:{self.port}",
            "--relay-address",
            HOST,
            "--allow-loopback-peers",
            f"--turn-secret={SECRET}",
            *quota_options(calls),
        ]
        args = [sys.executable, os.path.abspath(__file__), "--serve", "--", *self.options]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        if "listening" not in self.proc.stdout.readline():
            self.close()
            raise SystemExit("callpeer-rendezvous did not start")
        self.ps = psutil.Process(self.proc.pid)

    def stats(self) -> Counter[str]:
        assert self.proc.stdout is not None
        self.proc.send_signal(signal.SIGUSR1)
        got: dict[str, int] = json.loads(self.proc.stdout.readline())
        return Counter(got)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


# -- the callers -------------------------------------------------------------------------

AUDIO_KEYS = ("frames_sent", "frames_received", "frames_concealed", "frames_late")


@dataclass
class Job:
    worker: int
    first: int
    count: int
    port: int
    duration: float
    setup_timeout: float
    stagger: float


def counts(call: Any) -> dict[str, int]:
    audio = call.report().audio
    return {k: int(getattr(audio, k)) for k in AUDIO_KEYS}


async def caller_loop(job: Job, out: Queue[Any], go: multiprocessing.synchronize.Event) -> None:
    from voip import Call, CallOptions, NullSink, ToneSource  # noqa: PLC0415
    from voip.call import CallError  # noqa: PLC0415
    from voip.security.identity import Identity  # noqa: PLC0415

    server = (HOST, job.port)

    def make(me: str, peer: str, hz: int) -> Any:
        opts = CallOptions(relay="force", bind_host=HOST, identity=Identity.generate())
        return Call(me, peer, source=ToneSource(hz), sink=NullSink(), server=server, options=opts)

    pairs = [
        (make(f"a{i}", f"b{i}", 440), make(f"b{i}", f"a{i}", 660))
        for i in range(job.first, job.first + job.count)
    ]

    async def setup(a: Any, b: Any) -> float:
        t0 = time.perf_counter()
        await a.start()
        await b.start()
        await asyncio.wait_for(asyncio.gather(a.connected(), b.connected()), job.setup_timeout)
        return (time.perf_counter() - t0) * 1000

    tasks = []
    for a, b in pairs:
        tasks.append(asyncio.ensure_future(setup(a, b)))
        await asyncio.sleep(job.stagger)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    results: list[dict[str, Any]] = []
    for i, ((a, b), outcome) in enumerate(zip(pairs, outcomes, strict=True)):
        ra, rb = a.report(), b.report()
        no_relay = [
            f"{r.me}: {r.relay.reason or 'relay unavailable'}"
            for r in (ra, rb)
            if not r.relay.available
        ]
        failure = None
        if isinstance(outcome, TimeoutError):
            failure = f"not connected after {job.setup_timeout:g} s"
        elif isinstance(outcome, CallError):
            failure = str(outcome) or "CallError"
        elif isinstance(outcome, BaseException):
            failure = f"{type(outcome).__name__}: {outcome}"
        results.append(
            {
                "call": job.first + i,
                "setup_ms": None if failure else outcome,
                "failure": failure,
                "no_relay": no_relay,
                "paths": [ra.path, rb.path],
            }
        )
    out.put(("ready", job.worker, sum(r["failure"] is None for r in results)))
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    before = [(counts(a), counts(b)) for a, b in pairs]
    await asyncio.sleep(job.duration)
    after = [(counts(a), counts(b)) for a, b in pairs]
    for r, (a, b) in zip(results, pairs, strict=True):
        r["paths_end"] = [a.report().path, b.report().path]
    for r, (a0, b0), (a1, b1) in zip(results, before, after, strict=True):
        d = {
            f"{side}_{k}": end[k] - start[k]
            for side, start, end in (("a", a0, a1), ("b", b0, b1))
            for k in AUDIO_KEYS
        }
        r.update(d)
    for a, b in pairs:
        await a.hangup("bench over")
        await b.hangup("bench over")
    out.put(("done", job.worker, results))


def caller_main(job: Job, out: Queue[Any], go: multiprocessing.synchronize.Event) -> None:
    asyncio.run(caller_loop(job, out, go))


# -- one N -------------------------------------------------------------------------------


def pct(xs: list[float], p: float) -> float:
    from voip.report import percentile  # noqa: PLC0415

    return percentile(xs, p)


def measure(
    calls: int, workers: int, duration: float, setup_timeout: float, stagger: float
) -> None:
    ctx = multiprocessing.get_context("spawn")
    relay = Relay(calls)
    out: Queue[Any] = ctx.Queue()
    go = ctx.Event()
    procs: list[multiprocessing.process.BaseProcess] = []
    try:
        share, extra = divmod(calls, workers)
        first = 0
        for w in range(workers):
            n = share + (1 if w < extra else 0)
            if n == 0:
                continue
            job = Job(w, first, n, relay.port, duration, setup_timeout, stagger)
            procs.append(ctx.Process(target=caller_main, args=(job, out, go), daemon=True))
            first += n
        t_start = time.perf_counter()
        for p in procs:
            p.start()
        callers = [psutil.Process(p.pid) for p in procs if p.pid is not None]
        wait = setup_timeout + stagger * calls + 60
        connected = 0
        for _ in procs:
            kind, _, ok = out.get(timeout=wait)
            assert kind == "ready"
            connected += ok
        setup_wall = time.perf_counter() - t_start
        stats0 = relay.stats()
        relay0, callers0, t0 = cpu_seconds([relay.ps]), cpu_seconds(callers), time.perf_counter()
        psutil.cpu_percent()
        go.set()
        time.sleep(duration)
        machine = psutil.cpu_percent()
        stats1 = relay.stats()
        relay1, callers1, t1 = cpu_seconds([relay.ps]), cpu_seconds(callers), time.perf_counter()
        results: list[dict[str, Any]] = []
        for _ in procs:
            kind, _, got = out.get(timeout=duration + 60)
            assert kind == "done"
            results.extend(got)
        for p in procs:
            p.join(30)
    finally:
        go.set()
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
        stats_end = relay.stats() if relay.proc.poll() is None else Counter()
        relay.close()
    report(
        calls=calls,
        workers=len(procs),
        duration=duration,
        relay=relay,
        results=results,
        stats0=stats0,
        stats1=stats1,
        stats_end=stats_end,
        relay_cpu=relay1 - relay0,
        callers_cpu=callers1 - callers0,
        window=t1 - t0,
        machine_pct=machine,
        setup_wall=setup_wall,
        connected=connected,
    )


def report(
    *,
    calls: int,
    workers: int,
    duration: float,
    relay: Relay,
    results: list[dict[str, Any]],
    stats0: Counter[str],
    stats1: Counter[str],
    stats_end: Counter[str],
    relay_cpu: float,
    callers_cpu: float,
    window: float,
    machine_pct: float,
    setup_wall: float,
    connected: int,
) -> None:
    ok = [r for r in results if r["failure"] is None]
    cores = psutil.cpu_count() or 1
    failed = [r for r in results if r["failure"] is not None]
    no_alloc = [r for r in results if r["no_relay"]]
    not_relayed = [r for r in ok if r["paths"] != ["relay", "relay"]]
    losses, late, concealed = [], [], []
    stalled: list[dict[str, Any]] = []
    for r in ok:
        sent = r["a_frames_sent"] + r["b_frames_sent"]
        got = r["a_frames_received"] + r["b_frames_received"]
        if not sent:  # its callers sent nothing in the steady part: starved, not lost
            stalled.append(r)
            continue
        losses.append(100.0 * max(0, sent - got) / sent)
        late.append(r["a_frames_late"] + r["b_frames_late"])
        concealed.append(r["a_frames_concealed"] + r["b_frames_concealed"])
    d = stats1 - stats0
    # Every datagram the relay sends on: to a client (from a peer, or another allocation)
    # or from a relayed address to a peer.
    forwarded = d["relayed_to_client"] + d["relayed_to_peer"]
    print(f"\n## {calls} relayed calls, {workers} caller processes, {duration:g} s steady")
    print(f"relay: callpeer-rendezvous {' '.join(relay.options)}")
    print("  (quotas raised: every caller is on 127.0.0.1, one IP for the per-IP limits)")
    print(
        f"setup: {connected}/{calls} calls connected, {setup_wall:.1f} s from start to all set up"
    )
    if ok:
        setups = [float(r["setup_ms"]) for r in ok]
        print(
            f"  setup time median {statistics.median(setups):.0f} ms, "
            f"p95 {pct(setups, 95):.0f} ms, max {max(setups):.0f} ms"
        )
    print(f"setup failures: {len(failed)}")
    for why, n in Counter(str(r["failure"]) for r in failed).most_common(5):
        print(f"  {n} x {why}")
    print(f"allocation failures (a side without a relay): {len(no_alloc)}")
    for why, n in Counter(w for r in no_alloc for w in r["no_relay"]).most_common(5):
        print(f"  {n} x {why}")
    if not_relayed:
        kinds = Counter("/".join(r["paths"]) for r in not_relayed)
        ends = Counter("/".join(r["paths_end"]) for r in ok)
        print(
            f"connected but not both on the relay (--relay force): {len(not_relayed)} "
            f"(a/b paths when connected: {dict(kinds)}; at the end: {dict(ends)})"
        )
    errors = {k: v for k, v in stats_end.items() if k.startswith("error_")}
    print(
        f"relay errors sent, whole run: {errors or 'none'}; "
        f"allocations at the end of the steady part: {stats1['allocations']}"
    )
    print(
        f"relay CPU over the steady part: {relay_cpu:.2f} s in {window:.1f} s = "
        f"{100 * relay_cpu / window:.0f}% of a core"
    )
    print(
        f"packets forwarded: {forwarded / window:,.0f}/s (to clients "
        f"{d['relayed_to_client'] / window:,.0f}/s, "
        f"to peers {d['relayed_to_peer'] / window:,.0f}/s,"
        f" allocation to allocation {d['relayed_inside'] / window:,.0f}/s), "
        f"{1e6 * relay_cpu / forwarded if forwarded else float('nan'):.1f} us of relay CPU each"
    )
    sent = sum(r["a_frames_sent"] + r["b_frames_sent"] for r in ok)
    print(f"audio frames the callers sent over the steady part: {sent / window:,.0f}/s")
    steady = {k: v for k, v in sorted(d.items()) if v}
    print(f"relay counters over the steady part: {steady}")
    print(
        f"callers' CPU (all {workers} processes): {callers_cpu:.2f} s = "
        f"{100 * callers_cpu / window:.0f}% of a core; whole machine busy "
        f"{machine_pct:.0f}% of {psutil.cpu_count()} cores, of which other processes "
        f"~{max(0.0, machine_pct * cores - 100 * (relay_cpu + callers_cpu) / window):.0f}"
        "% of a core"
    )
    if ok:
        rates = sorted(r[f"{x}_frames_sent"] / window for r in ok for x in "ab")
        print(
            f"callers keeping up: frames sent per second per caller median "
            f"{statistics.median(rates):.1f}, lowest {rates[0]:.1f} (50 when on time)"
        )
        if stalled:
            print(f"  calls whose callers sent no audio at all in the steady part: {len(stalled)}")
        sending = [r for r in ok if all(r is not x for x in stalled)]
        on_relay = [
            x for x, r in zip(losses, sending, strict=True) if r["paths_end"] == ["relay"] * 2
        ]
        others = [
            x for x, r in zip(losses, sending, strict=True) if r["paths_end"] != ["relay"] * 2
        ]
        for what, xs in (("both on the relay at the end", on_relay), ("others", others)):
            if xs:
                print(
                    f"  loss, {len(xs)} calls {what}: median {statistics.median(xs):.2f}%, "
                    f"worst {max(xs):.2f}%"
                )
    if losses:
        print(
            f"loss per call (% of frames sent not decoded in time, both ways): median "
            f"{statistics.median(losses):.2f}%, p95 {pct(losses, 95):.2f}%, "
            f"worst {max(losses):.2f}%; calls over 1%: {sum(x > 1 for x in losses)}"
        )
        print(
            f"late frames per call: median {statistics.median(late):g}, worst {max(late)}; "
            f"concealed per call: median {statistics.median(concealed):g}, "
            f"worst {max(concealed)} (of ~{int(duration * 100)} played)"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[3:] if sys.argv[2:3] == ["--"] else sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--calls", type=int, nargs="+", default=[50, 100])
    p.add_argument("--duration", type=float, default=10.0, help="seconds of the steady part")
    p.add_argument("--workers", type=int, default=2, help="caller processes")
    p.add_argument("--setup-timeout", type=float, default=30.0)
    p.add_argument("--stagger", type=float, default=0.01, help="seconds between call starts")
    args = p.parse_args()
    print(f"{psutil.cpu_count()} cores; relay and callers on the same machine, sharing them")
    for n in args.calls:
        measure(n, args.workers, args.duration, args.setup_timeout, args.stagger)


if __name__ == "__main__":
    main()
