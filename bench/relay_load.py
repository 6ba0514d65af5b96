"""Relay load bench: `.venv/bin/python bench/relay_load.py --calls 50 100 --duration 10`."""

# For each N: a fresh relay (`rendezvous.cli.build_server` from `callpeer-rendezvous`'s own
# arguments, in a process of its own, with its per-IP and total quotas raised, since every caller
# here comes from 127.0.0.1), and N calls spread over --workers caller processes. Once every call
# has connected (or failed to), the steady part lasts --duration seconds; over it are measured the
# relay's CPU, the packets it forwarded (its own counters, read by SIGUSR1), each call's loss and
# late frames, and the callers' CPU, who share this machine's cores with the relay.
#
# --callers full (the default): callpeer calls (a0->b0, a1->b1, ...) with the relay forced, each
# process running its calls on one asyncio loop (ToneSource, NullSink); loss is frames the peer
# sent that were not decoded in time. On 2 cores these callers (Opus, SRTP, Python) run out of
# CPU past ~20 calls, so they, not the relay, are measured.
#
# --callers light: SYNTHETIC callers, no codec, no SRTP, no jitter buffer, so the figure is the
# relay's. Each call is two callers, each a socket and the project's sans-IO TurnClient with TURN
# REST credentials for its own name (from the relay's --turn-secret, as the rendezvous makes
# them): Allocate, CreatePermission and ChannelBind to the other's relayed address (Refresh from
# the client's own timers; released with a Refresh of LIFETIME 0 at the end). Then each sends a
# 172-byte frame (an SRTP-protected Opus frame's size) every 20 ms as ChannelData, carrying its
# sequence number and send time; the callers' send instants are spread over the 20 ms tick
# (--aligned: all at once). Each process runs its calls on one selector loop. The receiver counts
# frames received, lost (never arrived, 0.5 s after the last was sent), duplicates, and late:
# arrived (kernel timestamp) more than --late-ms (60, a jitter buffer's depth) after it was sent.
# Kernel drops at the relay's and the callers' sockets (/proc/net/udp) say where loss happens.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.synchronize
import os
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.queues import Queue
from typing import Any

import psutil

from voip.lab.netns import stop as stop_process
from voip.lab.turn_sockets import crowd_quotas
from voip.lab.turn_sockets import socket_inodes
from voip.transport import ANCILLARY
from voip.transport import SO_TIMESTAMPNS
from voip.transport import kernel_stamp

HOST = "127.0.0.1"
SECRET = "relay-load"


# -- the relay ---------------------------------------------------------------------------


def serve(argv: list[str]) -> None:
    """Run callpeer-rendezvous as its CLI builds it, quietly, printing its counters (one JSON
    line) on each SIGUSR1: the CLI prints them only once a minute."""
    from rendezvous.cli import build_server  # noqa: PLC0415
    from rendezvous.cli_options import build_parser  # noqa: PLC0415
    from rendezvous.running import raise_open_file_limit  # noqa: PLC0415
    from voip.wire.candidates import parse_address  # noqa: PLC0415

    args = build_parser().parse_args(argv)
    raise_open_file_limit()
    listen = args.listen[0] if args.listen else "127.0.0.1:3478"  # --listen is repeatable
    host, port = parse_address(listen, default_port=3478, allow_any_port=True)
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
            *crowd_quotas(calls),
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
        stop_process(self.proc, grace=5)


def stop(procs: list[Any], go: multiprocessing.synchronize.Event, relay: Relay) -> Counter[str]:
    """Release and stop the caller processes and the relay: the relay's last counters."""
    go.set()
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(5)
    stats_end = relay.stats() if relay.proc.poll() is None else Counter()
    relay.close()
    return stats_end


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def shares(calls: int, workers: int) -> list[tuple[int, int, int]]:
    """(worker, first call, how many) for each caller process with calls to make."""
    share, extra = divmod(calls, workers)
    out, first = [], 0
    for w in range(workers):
        n = share + (1 if w < extra else 0)
        if n:
            out.append((w, first, n))
            first += n
    return out


def answers(out: Queue[Any], procs: list[Any], kind: str, timeout: float) -> list[Any]:
    """What each caller process sent with its `kind` message ("ready" or "done")."""
    got = []
    for _ in procs:
        what, _, value = out.get(timeout=timeout)
        assert what == kind
        got.append(value)
    return got


@dataclass(frozen=True)
class Steady:
    """The relay's counters and everyone's CPU over the steady part of a run."""

    stats0: Counter[str]
    stats1: Counter[str]
    relay_cpu: float  # s
    callers_cpu: float  # s
    window: float  # s
    machine_pct: float  # the whole machine busy, % of all its cores


def steady_part(
    relay: Relay,
    callers: list[psutil.Process],
    seconds: float,
    go: multiprocessing.synchronize.Event | None = None,
) -> Steady:
    """Measure `seconds` of calls; `go`, if given, is set once the first readings are taken."""
    stats0 = relay.stats()
    relay0, callers0, t0 = cpu_seconds([relay.ps]), cpu_seconds(callers), time.perf_counter()
    psutil.cpu_percent()
    if go is not None:
        go.set()
    time.sleep(seconds)
    machine = psutil.cpu_percent()
    stats1 = relay.stats()
    relay1, callers1, t1 = cpu_seconds([relay.ps]), cpu_seconds(callers), time.perf_counter()
    return Steady(stats0, stats1, relay1 - relay0, callers1 - callers0, t1 - t0, machine)


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
    from voip import Call  # noqa: PLC0415
    from voip import CallOptions  # noqa: PLC0415
    from voip import NullSink  # noqa: PLC0415
    from voip import ToneSource  # noqa: PLC0415
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
        for w, first, n in shares(calls, workers):
            job = Job(w, first, n, relay.port, duration, setup_timeout, stagger)
            procs.append(ctx.Process(target=caller_main, args=(job, out, go), daemon=True))
        t_start = time.perf_counter()
        for p in procs:
            p.start()
        callers = [psutil.Process(p.pid) for p in procs if p.pid is not None]
        connected = sum(answers(out, procs, "ready", setup_timeout + stagger * calls + 60))
        setup_wall = time.perf_counter() - t_start
        steady = steady_part(relay, callers, duration, go)
        results: list[dict[str, Any]] = [
            r for got in answers(out, procs, "done", duration + 60) for r in got
        ]
        for p in procs:
            p.join(30)
    finally:
        stats_end = stop(procs, go, relay)
    report(
        calls=calls,
        workers=len(procs),
        duration=duration,
        relay=relay,
        results=results,
        steady=steady,
        stats_end=stats_end,
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
    steady: Steady,
    stats_end: Counter[str],
    setup_wall: float,
    connected: int,
) -> None:
    stats1, relay_cpu, callers_cpu = steady.stats1, steady.relay_cpu, steady.callers_cpu
    window, machine_pct = steady.window, steady.machine_pct
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
    d = stats1 - steady.stats0
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
    counters = {k: v for k, v in sorted(d.items()) if v}
    print(f"relay counters over the steady part: {counters}")
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


# -- the light callers (--callers light) ---------------------------------------------------

FRAME = 0.020  # s between two frames of one caller
PAYLOAD = 172  # bytes: an SRTP-protected Opus frame (12 of RTP header, 160 of payload)
STAMP = struct.Struct("!Id")  # sequence number, wall-clock send time; the rest is padding
PADDING = bytes(PAYLOAD - STAMP.size)
DRAIN = 0.5  # s after the last frame before counting what never arrived
Address = tuple[str, int]


@dataclass
class LightJob:
    worker: int
    first: int  # first call index
    count: int
    calls: int  # N in all: spreads the callers' send phases over the 20 ms tick
    port: int
    duration: float
    setup_timeout: float
    stagger: float
    late_ms: float
    rcvbuf: int  # the callers' SO_RCVBUF, bytes; 0: the system default
    aligned: bool  # every caller sends at the same instant of the tick (worst case)


class LightSide:
    """One synthetic caller: a UDP socket on loopback, the project's sans-IO TurnClient with
    REST credentials for its own name, and what it received from its peer."""

    def __init__(self, call: int, name: str, server: Address, rcvbuf: int) -> None:
        from voip.nat.turn_client import TurnClient  # noqa: PLC0415
        from voip.wire.turn import rest_credentials  # noqa: PLC0415

        self.call = call
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind((HOST, 0))
        # As the rendezvous makes them for a registered caller (rendezvous/logic.py).
        username, password = rest_credentials(SECRET, name, time.time())
        self.turn = TurnClient(server, username, password)
        self.peer: LightSide | None = None
        self.failure: str | None = None
        self.header = b""  # ChannelData header to the peer's relayed address, once bound
        self.phase = 0.0
        self.seen = bytearray()
        self.sent = self.received = self.late = self.read_late = self.dups = self.stray = 0

    def transmit(self, outs: list[tuple[bytes, Address]]) -> None:
        for data, dest in outs:
            with contextlib.suppress(OSError):
                self.sock.sendto(data, dest)

    @property
    def ready(self) -> bool:
        return self.peer is not None and self.peer.turn.relayed in self.turn.channels


def light_setup(
    job: LightJob, pairs: list[tuple[LightSide, LightSide]], sel: selectors.BaseSelector
) -> None:
    """Allocate, permit the peer's relayed address and bind a channel to it, both sides of
    every call, starting a call every --stagger seconds, until all are ready or failed."""
    from voip.lab.turn_sockets import drain_answers  # noqa: PLC0415
    from voip.nat.turn_client import PermissionRefused  # noqa: PLC0415
    from voip.nat.turn_client import TurnFailed  # noqa: PLC0415

    pending = list(pairs)
    started: list[tuple[LightSide, LightSide]] = []
    t_start = time.monotonic()
    next_start, next_poll = t_start, t_start
    deadline: dict[int, float] = {}

    def settle(a: LightSide, b: LightSide, now: float) -> None:
        for side in (a, b):
            for ev in side.turn.pop_events():
                if isinstance(ev, TurnFailed):
                    side.failure = side.failure or f"allocation: {ev.reason}"
                elif isinstance(ev, PermissionRefused):
                    side.failure = side.failure or f"permission refused: {ev.reason}"
        if a.turn.relayed is None or b.turn.relayed is None:
            return
        for side, peer in ((a, b), (b, a)):
            assert peer.turn.relayed is not None
            side.transmit(side.turn.permit([peer.turn.relayed[0]], now))
            side.transmit(side.turn.bind_channel(peer.turn.relayed, now))

    while True:
        now = time.monotonic()
        while pending and now >= next_start:
            a, b = pending.pop(0)
            started.append((a, b))
            deadline[a.call] = now + job.setup_timeout
            a.transmit(a.turn.start(now))
            b.transmit(b.turn.start(now))
            next_start += job.stagger
        if now >= next_poll:
            next_poll = now + 0.05
            for a, b in started:
                for side in (a, b):
                    side.transmit(side.turn.poll(now))
                if not (a.ready and b.ready) and now > deadline[a.call]:
                    for side in (a, b):
                        if side.failure is None and not side.ready:
                            what = "allocation" if side.turn.relayed is None else "channel"
                            side.failure = f"{what}: not done after {job.setup_timeout:g} s"
                settle(a, b, now)
        busy = [
            p
            for p in started
            if not (p[0].ready and p[1].ready) and p[0].failure is None and p[1].failure is None
        ]
        if not pending and not busy:
            return
        for key, _ in sel.select(min(0.01, max(0.0, next_poll - now))):
            side = key.data
            side.transmit(drain_answers(side.sock, side.turn, now))
            assert side.peer is not None
            settle(side, side.peer, now)


def light_worker(
    job: LightJob,
    out: Queue[Any],
    go: multiprocessing.synchronize.Event,
    start_at: Any,  # multiprocessing Value("d"): the steady part's start, time.monotonic()
) -> None:
    server = (HOST, job.port)
    sel = selectors.DefaultSelector()
    pairs: list[tuple[LightSide, LightSide]] = []
    for i in range(job.first, job.first + job.count):
        a, b = (
            LightSide(i, f"la{i}", server, job.rcvbuf),
            LightSide(i, f"lb{i}", server, job.rcvbuf),
        )
        a.peer, b.peer = b, a
        for g, side in ((2 * i, a), (2 * i + 1, b)):
            side.phase = 0.0 if job.aligned else FRAME * g / (2 * job.calls)
            sel.register(side.sock, selectors.EVENT_READ, side)
        pairs.append((a, b))
    t0 = time.monotonic()
    light_setup(job, pairs, sel)
    setup_s = time.monotonic() - t0
    ok = [p for p in pairs if p[0].ready and p[1].ready]
    out.put(("ready", job.worker, len(ok)))
    go.wait()
    frames = round(job.duration / FRAME)
    late = job.late_ms / 1000
    sides = sorted((s for p in ok for s in p), key=lambda s: s.phase)
    for s in sides:
        peer = s.peer
        assert peer is not None and peer.turn.relayed is not None
        channel = s.turn.channels[peer.turn.relayed]
        s.header = struct.pack("!HH", channel, PAYLOAD)
        s.seen = bytearray(frames)
        with contextlib.suppress(OSError):  # anything left from the setup
            while True:
                s.sock.recv(2048)
    lags: list[float] = []  # s a frame was sent after it was due: the callers keeping up?
    delays: list[float] = []  # one-way, by kernel arrival stamps: the relay's doing
    t_begin = float(start_at.value)
    t_end = t_begin + frames * FRAME
    frame, i = 0, 0
    next_due = t_begin + (sides[0].phase if sides else 0.0)
    next_poll = t_begin + 1.0
    pack, unpack = STAMP.pack, STAMP.unpack_from
    while sides:
        now = time.monotonic()
        if frame < frames and next_due <= now:
            while frame < frames and next_due <= now:
                s = sides[i]
                lags.append(now - next_due)
                try:
                    s.sock.sendto(s.header + pack(frame, time.time()) + PADDING, server)
                    s.sent += 1
                except OSError:
                    pass
                i += 1
                if i == len(sides):
                    i, frame = 0, frame + 1
                next_due = t_begin + frame * FRAME + sides[i].phase
        if frame >= frames and now >= t_end + DRAIN:
            break
        if now >= next_poll:  # TurnClient's own timers (Refresh, permission, channel)
            next_poll = now + 1.0
            for s in sides:
                s.transmit(s.turn.poll(now))
        wait = (next_due if frame < frames else t_end + DRAIN) - time.monotonic()
        for key, _ in sel.select(max(0.0, wait)):
            s = key.data
            while True:
                try:
                    data, anc, _, src = s.sock.recvmsg(2048, ANCILLARY)
                except OSError:
                    break
                if 64 <= data[0] <= 79 and len(data) >= 4 + STAMP.size:
                    seq, sent = unpack(data, 4)
                    if seq >= frames:
                        s.stray += 1
                        continue
                    if s.seen[seq]:
                        s.dups += 1
                        continue
                    s.seen[seq] = 1
                    s.received += 1
                    read = time.time()
                    arrived = kernel_stamp(anc, read)
                    delays.append(arrived - sent)
                    s.late += arrived - sent > late
                    s.read_late += read - sent > late
                else:
                    light_answer(s, data, (str(src[0]), int(src[1])))
    results = [
        {
            "call": a.call,
            "failure": a.failure or b.failure,
            "sent": a.sent + b.sent,
            "received": a.received + b.received,
            "late": a.late + b.late,
            "read_late": a.read_late + b.read_late,
            "dups": a.dups + b.dups,
            "stray": a.stray + b.stray,
        }
        for a, b in pairs
    ]
    now = time.monotonic()
    for a, b in pairs:  # release the allocations (Refresh with LIFETIME 0)
        a.transmit(a.turn.close(now))
        b.transmit(b.turn.close(now))
    lags.sort()
    delays.sort()
    out.put(
        (
            "done",
            job.worker,
            {
                "results": results,
                "setup_s": setup_s,
                "lag_p99": lags[int(0.99 * (len(lags) - 1))] if lags else 0.0,
                "lag_max": lags[-1] if lags else 0.0,
                "delay_p50": delays[len(delays) // 2] if delays else 0.0,
                "delay_p99": delays[int(0.99 * (len(delays) - 1))] if delays else 0.0,
                "delay_max": delays[-1] if delays else 0.0,
            },
        )
    )


def light_answer(side: LightSide, data: bytes, src: Address) -> None:
    """A STUN message in the steady part: an answer to a Refresh or a refreshed binding."""
    from voip.wire.stun import StunError  # noqa: PLC0415
    from voip.wire.stun import looks_like_stun  # noqa: PLC0415
    from voip.wire.stun import parse_message_untrusted  # noqa: PLC0415

    if looks_like_stun(data):
        with contextlib.suppress(StunError):
            msg = parse_message_untrusted(data)
            side.transmit(side.turn.handle(msg, src, time.monotonic()) or [])


def udp_drops(inodes: set[int], port: int | None = None) -> int:
    """Datagrams the kernel dropped at these sockets (a full receive buffer), from
    /proc/net/udp; with `port`, only at the one of them bound to that port."""
    total = 0
    with contextlib.suppress(OSError), open("/proc/net/udp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if len(cols) < 13 or int(cols[9]) not in inodes:
                continue
            if port is None or int(cols[1].rsplit(":", 1)[1], 16) == port:
                total += int(cols[12])
    return total


def snmp_udp() -> Counter[str]:
    """The kernel's UDP counters (InDatagrams, RcvbufErrors, SndbufErrors...), all sockets."""
    with contextlib.suppress(OSError), open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
        if len(rows) == 2:
            return Counter(dict(zip(rows[0][1:], map(int, rows[1][1:]), strict=True)))
    return Counter()


def measure_light(calls: int, args: argparse.Namespace) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    relay = Relay(calls)
    out: Queue[Any] = ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs: list[multiprocessing.process.BaseProcess] = []
    done: list[dict[str, Any]] = []
    try:
        for w, first, n in shares(calls, args.workers):
            job = LightJob(
                w,
                first,
                n,
                calls,
                relay.port,
                args.duration,
                args.setup_timeout,
                args.light_stagger,
                args.late_ms,
                args.rcvbuf,
                args.aligned,
            )
            procs.append(
                ctx.Process(target=light_worker, args=(job, out, go, start_at), daemon=True)
            )
        t_start = time.perf_counter()
        for p in procs:
            p.start()
        callers = [psutil.Process(p.pid) for p in procs if p.pid is not None]
        wait = args.setup_timeout + args.light_stagger * calls + 60
        connected = sum(answers(out, procs, "ready", wait))
        setup_wall = time.perf_counter() - t_start
        relay_inodes = socket_inodes([relay.proc.pid])
        caller_inodes = socket_inodes([p.pid for p in callers])
        drops0 = (
            udp_drops(relay_inodes),
            udp_drops(caller_inodes),
            udp_drops(relay_inodes, relay.port),
        )
        snmp0 = snmp_udp()
        start_at.value = time.monotonic() + 0.2
        go.set()
        time.sleep(max(0.0, start_at.value - time.monotonic()))
        steady = steady_part(relay, callers, args.duration)
        time.sleep(DRAIN + 0.1)
        drops1 = (
            udp_drops(relay_inodes),
            udp_drops(caller_inodes),
            udp_drops(relay_inodes, relay.port),
        )
        snmp1 = snmp_udp()
        done = answers(out, procs, "done", args.duration + 60)
        for p in procs:
            p.join(30)
    finally:
        stats_end = stop(procs, go, relay)
    results = [r for d in done for r in d["results"]]
    ok = [r for r in results if r["failure"] is None]
    window, machine = steady.window, steady.machine_pct
    d = steady.stats1 - steady.stats0
    forwarded = d["relayed_to_client"] + d["relayed_to_peer"]
    relay_cpu, callers_cpu = steady.relay_cpu, steady.callers_cpu
    losses = [100.0 * max(0, r["sent"] - r["received"]) / r["sent"] for r in ok if r["sent"]]
    lates = [100.0 * r["late"] / r["sent"] for r in ok if r["sent"]]
    sent = sum(r["sent"] for r in ok)
    got = sum(r["received"] for r in ok)
    snmp = snmp1 - snmp0
    cores = psutil.cpu_count() or 1
    row = {
        "calls": calls,
        "connected": connected,
        "alloc_failures": sum(r["failure"] is not None for r in results),
        "relay_cpu": 100 * relay_cpu / window,
        "forwarded": forwarded / window,
        "us_per_packet": 1e6 * relay_cpu / forwarded if forwarded else float("nan"),
        "loss_mean": statistics.fmean(losses) if losses else float("nan"),
        "loss_all": 100.0 * (sent - got) / sent if sent else float("nan"),
        "loss_worst": max(losses, default=float("nan")),
        "late_mean": statistics.fmean(lates) if lates else float("nan"),
        "late_worst": max(lates, default=float("nan")),
        "callers_cpu": 100 * callers_cpu / window,
        "machine": machine,
        "others": max(0.0, machine * cores - 100 * (relay_cpu + callers_cpu) / window),
        "relay_drops": drops1[0] - drops0[0],
        "caller_drops": drops1[1] - drops0[1],
        "relay_main_drops": drops1[2] - drops0[2],
    }
    print(
        f"\n## {calls} relayed calls, SYNTHETIC callers (no codec), {len(procs)} caller processes"
    )
    print(f"relay: callpeer-rendezvous {' '.join(relay.options)}")
    print(
        f"setup: {connected}/{calls} calls with both sides allocated, permitted and bound in "
        f"{setup_wall:.1f} s; failures: {row['alloc_failures']}"
    )
    for why, n in Counter(str(r["failure"]) for r in results if r["failure"]).most_common(5):
        print(f"  {n} x {why}")
    errors = {k: v for k, v in stats_end.items() if k.startswith("error_")}
    print(f"relay errors sent, whole run: {errors or 'none'}")
    print(
        f"relay CPU: {relay_cpu:.2f} s in {window:.1f} s = {row['relay_cpu']:.0f}% of a core; "
        f"forwarded {row['forwarded']:,.0f} packets/s ({row['us_per_packet']:.1f} us each); "
        f"counters {dict(sorted((k, v) for k, v in d.items() if v))}"
    )
    print(
        f"frames sent {sent:,} ({sent / args.duration:,.0f}/s, {len(ok) * 100}/s expected), "
        f"received {got:,}; loss {row['loss_all']:.2f}% in all, per call mean "
        f"{row['loss_mean']:.2f}% worst {row['loss_worst']:.2f}%; "
        f"duplicates {sum(r['dups'] for r in ok)}"
    )
    lag99 = max((x["lag_p99"] for x in done), default=0.0)
    lagmax = max((x["lag_max"] for x in done), default=0.0)
    print(
        f"late (kernel arrival > {args.late_ms:g} ms after send): mean {row['late_mean']:.2f}%, "
        f"worst call {row['late_worst']:.2f}%; read by the caller > {args.late_ms:g} ms: "
        f"{sum(r['read_late'] for r in ok):,} frames"
    )
    print(
        "one-way delay through the relay (worst worker): p50 "
        f"{1000 * max((x['delay_p50'] for x in done), default=0):.1f} ms, p99 "
        f"{1000 * max((x['delay_p99'] for x in done), default=0):.1f} ms, max "
        f"{1000 * max((x['delay_max'] for x in done), default=0):.0f} ms"
    )
    print(
        f"callers: {row['callers_cpu']:.0f}% of a core (all {len(procs)}); sent behind schedule "
        f"p99 {1000 * lag99:.1f} ms, max {1000 * lagmax:.1f} ms; machine busy {machine:.0f}% "
        f"of {cores} cores, of which other processes ~{row['others']:.0f}% of a core"
    )
    print(
        f"kernel drops (full receive buffers): at the relay's sockets {row['relay_drops']:,} "
        f"(its listening socket {row['relay_main_drops']:,}, its relayed ones "
        f"{row['relay_drops'] - row['relay_main_drops']:,}), at the callers' "
        f"{row['caller_drops']:,}; all UDP: RcvbufErrors "
        f"{snmp['RcvbufErrors']:,}, SndbufErrors {snmp['SndbufErrors']:,}"
    )
    return row


def light_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        "\n## Relay capacity, SYNTHETIC callers: TurnClient + ChannelData, 172-byte frames every "
        "20 ms, no codec, no SRTP, no jitter buffer"
    )
    print(
        f"(late: arrived > {args.late_ms:g} ms after sent; loss: never arrived; "
        f"{args.duration:g} s steady; callers' SO_RCVBUF "
        f"{args.rcvbuf or 'default'}; send phases {'aligned' if args.aligned else 'spread'})"
    )
    print(
        "(each frame forwarded is one ChannelData in from its caller and one out to the peer: "
        "between two allocations of this relay it is handed over inside, not through the kernel)"
    )
    print(
        "| calls | allocation failures | relay CPU | packets forwarded | loss mean / worst call "
        "| late mean / worst call | relay socket drops | callers' CPU | other processes |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['calls']} | {r['alloc_failures']} | {r['relay_cpu']:.0f} % of a core "
            f"| {r['forwarded']:,.0f}/s ({r['us_per_packet']:.0f} us) "
            f"| {r['loss_mean']:.2f} % / {r['loss_worst']:.2f} % "
            f"| {r['late_mean']:.2f} % / {r['late_worst']:.2f} % "
            f"| {r['relay_drops']:,} | {r['callers_cpu']:.0f} % | {r['others']:.0f} % |"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve(sys.argv[3:] if sys.argv[2:3] == ["--"] else sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--calls", type=int, nargs="+", default=[50, 100])
    p.add_argument(
        "--callers",
        choices=("full", "light"),
        default="full",
        help="full: callpeer calls (Opus, SRTP, jitter buffer); light: synthetic TURN callers, "
        "no codec, so the figure is the relay's capacity",
    )
    p.add_argument("--duration", type=float, default=10.0, help="seconds of the steady part")
    p.add_argument("--workers", type=int, default=2, help="caller processes")
    p.add_argument("--setup-timeout", type=float, default=30.0)
    p.add_argument("--stagger", type=float, default=0.01, help="seconds between call starts")
    light = p.add_argument_group("--callers light")
    light.add_argument(
        "--light-stagger", type=float, default=0.002, help="seconds between call set-ups"
    )
    light.add_argument(
        "--late-ms",
        type=float,
        default=60.0,
        help="a frame arriving later than this after it was sent counts as late (a jitter "
        "buffer's depth)",
    )
    light.add_argument(
        "--rcvbuf", type=int, default=0, help="the callers' SO_RCVBUF in bytes (0: default)"
    )
    light.add_argument(
        "--aligned",
        action="store_true",
        help="every caller sends at the same instant of the 20 ms tick (default: spread)",
    )
    args = p.parse_args()
    print(f"{psutil.cpu_count()} cores; relay and callers on the same machine, sharing them")
    if args.callers == "full":
        for n in args.calls:
            measure(n, args.workers, args.duration, args.setup_timeout, args.stagger)
        return
    print("SYNTHETIC callers (no codec, no SRTP): the figures are the relay's capacity")
    rows = [measure_light(n, args) for n in args.calls]
    light_table(rows, args)


if __name__ == "__main__":
    main()
