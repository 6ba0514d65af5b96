"""Relay and STUN server against coturn, per core: ".venv/bin/python bench/relay_vs_coturn.py --rounds 3"."""  # noqa: E501

# How it measures. Each round starts callpeer-rendezvous and then coturn (one relay thread), in
# alternating order from round to round, each fresh and alone, pinned to CPU 0 (--server-cpus);
# this script and its load generator run pinned to CPU 1 (--load-cpus). Every load comes from
# bench/udp_load.c (compiled with gcc -O2 on first use into ~/.cache/callpeer/udp_load): one
# thread, sendmmsg/recvmmsg, sending pre-built datagrams on sockets this script set up, at a
# given rate spread evenly over time or flat out, and counting what ARRIVES (never what was
# sent), by sequence number, so loss is exact. Only 127.0.0.1 is ever sent to.
#
# ChannelData: N client sockets, each with its own TURN allocation (REST credentials from the
# shared secret, the 401 challenge answered; the project's sans-IO TurnClient), a
# CreatePermission and a ChannelBind to its own peer socket on 127.0.0.1, each checked to relay
# one datagram. Then 172-byte ChannelData (4-byte header + 168 payload, an Opus frame's size,
# carrying "CPLB" and a sequence number) goes from the clients to the server, round robin, and is
# counted at the peers. Peak: flat out for --duration s with 1, 10 and 100 allocations; the
# delivered rate is the arrivals after a 0.5 s warm-up divided by the time they took. Loss-free
# rate: offered rates in steps (10k ... 160k packets/s, spread evenly) through 100 allocations;
# the highest step with under 1% lost (after a 0.5 s drain), the steps stopping after two
# failures in a row. Server CPU: utime + stime of its processes (/proc/PID/stat, children and
# threads included) over each run, per 10k packets delivered.
#
# Binding: plain 20-byte Binding requests from 64 sockets (a transaction ID each), flat out;
# the answers counted on the same sockets.
#
# uclient: coturn's turnutils_uclient, 400 clients in pairs (-y, client to client: each stream
# enters the relay, crosses to the other allocation's relayed port and leaves as ChannelData),
# 172-byte messages every 20 ms (-z 20), REST credentials (-W), an IPv4 relayed address asked
# for (-X, see uclient_once); its own loss figure, and the server's CPU over its sending phase
# (from its "Total connect time" line to its end). It exits at the first error answer while
# connecting: then it is run once more, and the failure reported. It connects its clients a
# pair at a time with a sleep between (about 40 s for 400) and starts each stream 1-6 s after
# that at random, so all 400 run at once only for part of the time.
#
# Beside each figure: the rate the generator achieved (so a reader can see it kept up), kernel
# drops (/proc/net/udp) at the server's sockets and at the generator's, /proc/net/snmp's UDP
# receive-buffer errors, and how the server's core spent the run (/proc/stat: the server's own
# time, softirq, steal, and other processes; /proc/stat is sampled at each tick, so these shares
# are rough when the core is partly idle). A run in which other processes took more than 5%
# of the server's core is made again, up to twice, and the least disturbed one kept. Loopback
# puts the kernel's delivery of a datagram on the SENDER's core: the server's core pays for
# delivering what it relays, the generator's core for what it sends, the same for both servers.
# The figures in the table are medians over the rounds.
#
# --netns (root): the kernel path's figure per core. On loopback, --offload's tc/eBPF program
# runs where loopback delivers, in the softirq of the SENDING core (the generator's): the
# server's core shows nothing and the figure is the generator's ceiling. With --netns the
# servers run in a network namespace of their own (`ip netns exec`, pinned as above) and this
# script's thread, its sockets and the generator in another, joined by one veth pair with
# addresses from 198.18.0.0/15 (RFC 2544's benchmarking range; voip/lab/bench_netns.py), tx
# checksum offload off on both ends, and RPS on each end's receive queue steering its
# softirq to its own side's CPUs (--server-cpus for the relay's end, --load-cpus for the
# generator's). So the kernel's receive work for what the server gets, the tc/eBPF program's
# included, runs on the server's core, and the figures add, beside the server process's CPU,
# the server core's busy time per 10k packets (its own: busy less other processes' time),
# its busy share at the peak, the packets it relayed per second of that time, and per CPU of
# each run the busy share, the softirq time and the NET_RX softirqs run (so the output shows
# where the receive work ran). Busy is wall time less /proc/stat's idle, which this kernel
# measures (NOHZ idle); its user, system and softirq columns are only sampled at the tick
# (no IRQ_TIME_ACCOUNTING), and a core that wakes for an RPS interrupt, relays a burst in
# softirq and sleeps again before a tick shows none of it there: the kernel path's work, on a
# core it leaves mostly idle, is the time missing from idle. The servers are ours in user space
# ("ours"), ours with --offload ("offload": its program on the relay end's ingress, forwarding the
# channels back out of the same veth through the kernel's FIB) and coturn; ours is told
# --allow-peer 198.18.0.0/15 (the peers' range, refused by default) and coturn --allowed-peer-ip
# over the same range. The steps go on past 160k (to 320k). Here the server's core pays for
# receiving everything offered, the datagrams its socket then drops included, which loopback
# charged to the sender: flat out, a user-space server (either) delivers far less than on
# loopback, and less than at its loss-free rate.
#
# callpeer-rendezvous is given --workers=1 unless --ours-arg names --workers (per core: one
# process, as coturn gets one relay thread). It runs from this checkout as it is (uncommitted
# edits included: the output says so), or, with --ours-commit REV, from that commit's
# rendezvous/ and voip/ (git archive), to compare a change with what came before it.

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import itertools
import json
import os
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

from rendezvous.offload import unavailable_reason as offload_unavailable_reason
from voip.lab.bench_netns import BENCH_RANGE
from voip.lab.bench_netns import RELAY_DEV
from voip.lab.bench_netns import BenchLink
from voip.lab.bench_netns import net_rx_per_cpu
from voip.lab.bench_netns import remove_leftovers
from voip.lab.bench_netns import unavailable_reason as netns_unavailable_reason
from voip.lab.turn_sockets import crowd_quotas
from voip.lab.turn_sockets import drain_answers
from voip.lab.turn_sockets import socket_inodes
from voip.nat.turn_client import PermissionRefused
from voip.nat.turn_client import TurnClient
from voip.nat.turn_client import TurnFailed
from voip.wire.stun import Class
from voip.wire.stun import Message
from voip.wire.stun import Method
from voip.wire.stun import StunError
from voip.wire.stun import encode
from voip.wire.stun import parse_message_untrusted
from voip.wire.turn import pack_channel_data
from voip.wire.turn import rest_credentials

HOST = "127.0.0.1"
SECRET = "relay-vs-coturn"
REALM = "callpeer"
ROOT = Path(__file__).resolve().parent.parent
C_SOURCE = Path(__file__).resolve().with_name("udp_load.c")
MAGIC = b"CPLB"
PAYLOAD = 168  # bytes of an SRTP-protected Opus voice frame; ChannelData adds a 4-byte header
PEAK_ALLOCATIONS = (1, 10, 100)
STEPS = (10_000, 20_000, 40_000, 60_000, 80_000, 100_000, 120_000, 140_000, 160_000)
# --netns: on to where the kernel path may go (its target is 2x coturn's ~130k)
NETNS_STEPS = (*STEPS, 200_000, 240_000, 280_000, 320_000)
SERVERS = ("ours", "offload", "coturn")  # offload: callpeer-rendezvous with --offload
NETNS_PORT = 3478  # the relay's namespace is ours alone: the standard port is free
STEP_ALLOCATIONS = 100
LOSS_LIMIT = 1.0  # % lost, the loss-free rate's bound
KEPT_UP = 0.98  # a step counts only if the generator sent at least this share of its rate
BINDING_SOCKETS = 64
UCLIENT_STREAMS = 400
UCLIENT_ATTEMPTS = 2
UCLIENT_CONNECT_LIMIT = 300  # s for turnutils_uclient to connect its clients (it takes ~45)
CPU_RATE_STEP = 20_000  # the step whose CPU per 10k packets the table shows (a steady load)
WARMUP = 0.5  # s of each load run not in the delivered rate
DRAIN = 0.5  # s after the last send that arrivals are still counted
SETUP_TIMEOUT = 30.0  # s for a batch of allocations
REFRESH_AFTER = 200.0  # s: allocations older than this are made again (permissions last 300)
RCVBUF = 16 << 20  # the generator's receiving sockets: their drops would be ours, not a server's
TICK = os.sysconf("SC_CLK_TCK")
DISTURBED = 5.0  # % of the server's core taken by other processes: the run is made again
RETRIES_IF_DISTURBED = 2
SOFTIRQ_SEEN = 10.0  # --netns: % of the server's core busy at the peak that shows RPS works
NET_RX_SEEN = 1000  # --netns: receive softirqs on the server's core in a peak run, the same


class BenchError(RuntimeError):
    pass


# -- the load generator -------------------------------------------------------------------


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "callpeer" / "udp_load"


def load_binary() -> Path:
    """bench/udp_load.c compiled (gcc -O2), rebuilt whenever the source is newer."""
    out = cache_dir() / "udp_load"
    if out.exists() and out.stat().st_mtime >= C_SOURCE.stat().st_mtime:
        return out
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise BenchError("no C compiler (gcc) to build bench/udp_load.c")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"udp_load.{os.getpid()}.tmp")
    subprocess.run([gcc, "-O2", "-Wall", "-o", str(tmp), str(C_SOURCE)], check=True)
    tmp.replace(out)
    return out


@dataclass
class Load:
    """One run of the generator: what it sent and what arrived."""

    sent: int
    send_seconds: float
    send_errors: int
    received: int
    unique: int
    duplicates: int
    other: int
    window_received: int
    window_seconds: float
    offered_rate: float

    @property
    def send_rate(self) -> float:
        return self.sent / self.send_seconds if self.send_seconds else 0.0

    @property
    def delivered_rate(self) -> float:
        return self.window_received / self.window_seconds if self.window_seconds else 0.0

    @property
    def loss_pct(self) -> float:
        return 100.0 * max(0, self.sent - self.unique) / self.sent if self.sent else 100.0


def run_load(
    binary: Path,
    senders: list[tuple[socket.socket, bytes]],
    receivers: list[socket.socket],
    *,
    rate: float,
    duration: float,
    sequenced: int | None,
    received_sequenced: int | None,
) -> Load:
    """Run udp_load on these sockets: `rate` packets/s (0: flat out) for `duration` s.
    `sequenced`: where the magic is in each sent datagram (a sequence number follows it);
    `received_sequenced`: where it is in arriving ones."""
    args = [
        str(binary),
        "--duration",
        f"{duration}",
        "--rate",
        f"{rate}",
        "--warmup",
        f"{WARMUP}",
        "--drain",
        f"{DRAIN}",
    ]
    if sequenced is not None:
        args += ["--seq-offset", str(sequenced)]
    if received_sequenced is not None:
        args += ["--recv-seq-offset", str(received_sequenced)]
    for sock, data in senders:
        args += ["--send", f"{sock.fileno()}:{data.hex()}"]
    for sock in receivers:
        args += ["--recv", str(sock.fileno())]
    fds = sorted({s.fileno() for s, _ in senders} | {s.fileno() for s in receivers})
    done = subprocess.run(
        args, pass_fds=fds, capture_output=True, text=True, timeout=duration + 60, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"udp_load failed ({done.returncode}): {done.stderr.strip()}")
    got = json.loads(done.stdout)
    keys = Load.__dataclass_fields__
    return Load(**{k: v for k, v in got.items() if k in keys})


def payload_template() -> bytes:
    return MAGIC + bytes(PAYLOAD - len(MAGIC))


# -- the servers ----------------------------------------------------------------------------


def free_port() -> int:
    """A port free for UDP and TCP both (the servers listen on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((HOST, 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((HOST, port))
                except OSError:
                    continue
            return port
    raise BenchError("no free port")


def process_tree(root: int) -> list[int]:
    """`root` and its descendants (from /proc/*/stat's parent field)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += parents.get(pid, [])
    return tree


CGROUP_CPU = Path("/sys/fs/cgroup/cpu")  # cgroup v1's cpu controller, as on this machine
QUOTA_PERIOD_US = 10_000  # short periods: a throttled server's socket buffer rides them out


def cap_cpu(pids: list[int], percent: float) -> list[Path]:
    """Each process in a cgroup of its own with a CFS quota of `percent` of one CPU."""
    if not CGROUP_CPU.is_dir():
        raise BenchError(f"--cpu-quota needs cgroup v1's cpu controller at {CGROUP_CPU}")
    made = []
    for pid in pids:
        group = CGROUP_CPU / f"callpeer-bench-{pid}"
        group.mkdir(exist_ok=True)
        (group / "cpu.cfs_period_us").write_text(str(QUOTA_PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(int(QUOTA_PERIOD_US * percent / 100)))
        (group / "cgroup.procs").write_text(str(pid))
        made.append(group)
    return made


def remove_cgroups(groups: list[Path]) -> None:
    for group in groups:  # empty once its process has exited
        with contextlib.suppress(OSError):
            group.rmdir()


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes, all their threads included."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    return total / TICK


def udp_drops(net: str = "/proc/thread-self/net") -> dict[int, int]:
    """Each UDP socket's kernel drop count by inode (/proc/net/udp of a network namespace:
    this thread's, or /proc/PID/net for a process's)."""
    drops = {}
    for line in Path(net, "udp").read_text().splitlines()[1:]:
        f = line.split()
        drops[int(f[9])] = int(f[-1])
    return drops


def snmp_udp(net: str = "/proc/thread-self/net") -> dict[str, int]:
    lines = [ln.split() for ln in Path(net, "snmp").read_text().splitlines()]
    for head, values in itertools.pairwise(lines):
        if head[0] == "Udp:" and values[0] == "Udp:" and not values[1].isalpha():
            return dict(zip(head[1:], map(int, values[1:]), strict=True))
    return {}


def softirq_ticks() -> dict[int, tuple[int, int]]:
    """/proc/stat's softirq ticks (sampled) and idle + iowait ticks (measured) per CPU."""
    got = {}
    for text in Path("/proc/stat").read_text().splitlines():
        name, *values = text.split()
        if name.startswith("cpu") and name[3:].isdigit():
            got[int(name[3:])] = (int(values[6]), int(values[3]) + int(values[4]))
    return got


def backlog_drops() -> dict[int, int]:
    """Per CPU, datagrams dropped because its input backlog (where RPS and veth queue what
    arrives, net.core.netdev_max_backlog long) was full: /proc/net/softnet_stat's second
    column; the CPU is the 13th where the kernel gives it, else the line's place."""
    got = {}
    for i, text in enumerate(Path("/proc/net/softnet_stat").read_text().splitlines()):
        f = text.split()
        got[int(f[12], 16) if len(f) > 12 else i] = int(f[1], 16)
    return got


def cpu_ticks(cpus: set[int]) -> dict[str, int]:
    """/proc/stat's counters summed over `cpus`: busy (user, nice, system, irq, softirq, steal),
    and of it the softirq, steal, and user + nice + system (where processes' own time goes)."""
    got = {"total": 0, "busy": 0, "softirq": 0, "steal": 0, "tasks": 0, "idle": 0}
    for text in Path("/proc/stat").read_text().splitlines():
        name, *values = text.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, values[:8])
        got["total"] += user + nice + system + idle + iowait + irq + softirq + steal
        got["busy"] += user + nice + system + irq + softirq + steal
        got["softirq"] += softirq
        got["steal"] += steal
        got["tasks"] += user + nice + system
        got["idle"] += idle + iowait  # exact with NOHZ idle (interrupts and softirq left out)
    return got


def binding_request(tid: bytes | None = None) -> bytes:
    msg = (
        Message(Method.BINDING, Class.REQUEST, tid)
        if tid
        else Message(Method.BINDING, Class.REQUEST)
    )
    return encode(msg)


def answers_binding(host: str, port: int, timeout: float = 0.3) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        try:
            s.send(binding_request())
            data = s.recv(2048)
        except OSError:
            return False
    try:
        msg = parse_message_untrusted(data)
    except StunError:
        return False
    return msg.method == Method.BINDING and msg.cls == Class.SUCCESS


@dataclass
class Server:
    name: str  # "ours", "offload" (ours with --offload) or "coturn"
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    command: list[str]
    cpus: set[int]
    used_ports: set[int] = field(default_factory=set)  # client ports its allocations had
    host: str = HOST  # where it listens and relays from
    client_host: str = HOST  # where the generator's clients and peers are
    netns: BenchLink | None = None  # --netns: the server runs in its relay namespace
    cgroups: list[Path] = field(default_factory=list)  # --cpu-quota: one per process

    @property
    def net(self) -> str:
        """/proc's view of the server's network namespace (its UDP sockets, counters)."""
        return f"/proc/{self.proc.pid}/net"

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def inodes(self) -> set[int]:
        return socket_inodes(self.pids())

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not answers_binding(self.host, self.port):
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited ({self.proc.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"{self.name} did not answer on {self.host}:{self.port}")
            time.sleep(0.1)

    def log_lines(self) -> list[str]:
        log = self.workdir / "server.log"
        return log.read_text(errors="replace").splitlines() if log.exists() else []

    def log_tail(self) -> str:
        return " | ".join(self.log_lines()[-5:])

    def stop(self) -> None:
        """The whole process group, SIGTERM then SIGKILL; its cgroups (--cpu-quota) after."""
        try:
            self._stop()
        finally:
            remove_cgroups(self.cgroups)

    def _stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        else:  # the leader is gone; its group may not be
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)


def ours_command(port: int, extra: list[str], host: str = HOST) -> list[str]:
    exe = Path(sys.executable).with_name("callpeer-rendezvous")
    # Loopback peers on loopback; in --netns the peers are in the benchmarking range, which
    # the relay refuses unless allowed. It is not quiet: it says how it forwards live channels
    # and where its kernel path went, and its counters when stopped (a few lines a minute).
    netns = host != HOST
    peers = [f"--allow-peer={BENCH_RANGE}"] if netns else ["--allow-loopback-peers"]
    return [
        str(exe),
        "--listen",
        f"{host}:{port}",
        "--relay-address",
        host,
        *peers,
        f"--turn-secret={SECRET}",
        "--store=:memory:",
        *crowd_quotas(max(UCLIENT_STREAMS, *PEAK_ALLOCATIONS, STEP_ALLOCATIONS)),
        *extra,
    ]


def coturn_command(port: int, workdir: Path, extra: list[str], host: str = HOST) -> list[str]:
    # coturn 4.6 refuses loopback peers by default (and multicast with --no-multicast-peers),
    # other ranges only when a --denied-peer-ip names them (hardened configurations list
    # 198.18.0.0/15; -n reads none): the benchmarking range is allowed explicitly all the same.
    first, last = bench_range_bounds()
    peers = [] if host == HOST else [f"--allowed-peer-ip={first}-{last}"]
    return [
        "turnserver",
        "-n",  # no configuration file
        f"--listening-ip={host}",
        f"--listening-port={port}",
        f"--relay-ip={host}",
        *peers,
        "--use-auth-secret",
        f"--static-auth-secret={SECRET}",
        f"--realm={REALM}",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--relay-threads=1",
        "--allow-loopback-peers",
        "--no-multicast-peers",
        f"--pidfile={workdir / 'turnserver.pid'}",
        f"--userdb={workdir / 'turndb'}",
        f"--log-file={workdir / 'server.log'}",
        "--simple-log",
        "--no-stdout-log",
        *extra,
    ]


def bench_range_bounds() -> tuple[str, str]:
    """BENCH_RANGE's first and last address (coturn takes a range as FIRST-LAST)."""
    net = ipaddress.ip_network(BENCH_RANGE)
    return str(net[0]), str(net[-1])


def ours_env(opts: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    if opts.ours_source:  # its packages first: the editable install after
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(opts.ours_source), env.get("PYTHONPATH", "")) if p
        )
    return env


def ours_defaults(opts: argparse.Namespace) -> list[str]:
    """--workers=1 when the server has --workers (its default is one a core) and the user gave
    none: per core means one process, as coturn gets one relay thread."""
    if any(a.startswith("--workers") for a in opts.ours_arg):
        return []
    exe = Path(sys.executable).with_name("callpeer-rendezvous")
    done = subprocess.run(
        [str(exe), "--help"], capture_output=True, text=True, env=ours_env(opts), check=False
    )
    return ["--workers=1"] if "--workers" in done.stdout else []


def start_server(name: str, opts: argparse.Namespace, workdir: Path) -> Server:
    link: BenchLink | None = opts.link
    host = link.relay_address if link else HOST
    port = opts.port or (NETNS_PORT if link else free_port())
    ours = name in ("ours", "offload")
    env = ours_env(opts) if ours else dict(os.environ)
    if ours:
        offload = ["--offload"] if name == "offload" else []
        command = ours_command(port, [*opts.ours_defaults, *offload, *opts.ours_arg], host)
    else:
        command = coturn_command(port, workdir, opts.coturn_arg, host)
    # `ip netns exec` execs in place: the process started is the server (pid, group).
    inside = ["ip", "netns", "exec", link.relay] if link else []
    log = (workdir / "server.log").open("ab")
    proc = subprocess.Popen(
        [*inside, "taskset", "-c", opts.server_cpus, *command],
        stdin=subprocess.DEVNULL,
        stdout=log if ours else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if ours else subprocess.DEVNULL,
        cwd=workdir,
        env=env,
        start_new_session=True,  # its own process group, stopped as one
    )
    log.close()
    server = Server(name, proc, port, workdir, command, cpu_list(opts.server_cpus))
    server.host, server.netns = host, link
    server.client_host = link.gen_address if link else HOST
    server.wait_ready()
    if opts.cpu_quota:
        time.sleep(0.5)  # every worker forked
        server.cgroups = cap_cpu(process_tree(proc.pid), opts.cpu_quota)
        each = f"each at most {opts.cpu_quota:g}% of a CPU"
        say(f"  {name}: {len(server.cgroups)} process(es), {each}")
    if ours:  # how it forwards live channels in user space: in C batches, or in Python
        time.sleep(0.2)
        said = [x for x in server.log_lines() if "live channels forwarded" in x]
        say(f"  {name}: {said[0] if said else 'did not say how it forwards live channels'}")
    if name == "offload":
        time.sleep(0.5)  # its line saying why not, if it cannot, comes after it answers
        refused = [x for x in server.log_lines() if "--offload:" in x]
        if refused:
            server.stop()
            raise BenchError(f"the kernel fast path did not load: {refused[0]}")
        said = [x for x in server.log_lines() if "kernel fast path" in x or "forwarding" in x]
        if said:
            say(f"  offload: {' | '.join(said)}")
    return server


def stale_filter(link: BenchLink) -> str:
    """After a server stopped: what was still on the relay link's ingress (a filter left by an
    --offload server that did not detach), removed so the next server does not inherit it."""
    shown = subprocess.run(
        ["ip", "netns", "exec", link.relay, "tc", "filter", "show", "dev", RELAY_DEV, "ingress"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if shown:
        subprocess.run(
            ["ip", "netns", "exec", link.relay, "tc", "qdisc", "del", "dev", RELAY_DEV, "clsact"],
            capture_output=True,
            check=False,
        )
    return shown


# -- TURN set-up ----------------------------------------------------------------------------


@dataclass
class Allocation:
    sock: socket.socket  # the client's, connected to the server
    peer: socket.socket  # where its channel leads
    client: TurnClient

    @property
    def peer_addr(self) -> tuple[str, int]:
        host, port = self.peer.getsockname()[:2]
        return str(host), int(port)

    def send(self, transmits: list[tuple[bytes, tuple[str, int]]]) -> None:
        for data, _ in transmits:
            self.sock.send(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send(self.client.close(time.monotonic()))
        self.sock.close()
        self.peer.close()


def udp_socket(rcvbuf: int | None = None, host: str = HOST) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if rcvbuf:
        try:  # as root, past net.core.rmem_max
            s.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((host, 0))
    return s


@dataclass
class Allocations:
    items: list[Allocation]
    made_at: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        for a in self.items:
            a.close()
        time.sleep(0.2)  # the releases handled before anything else is asked of the server


def pump(allocs: list[Allocation], done: Callable[[Allocation], bool], what: str) -> None:
    """Feed the TurnClients their answers (and their retransmissions) until each is `done`."""
    sel = selectors.DefaultSelector()
    for a in allocs:
        sel.register(a.sock, selectors.EVENT_READ, a)
    deadline = time.monotonic() + SETUP_TIMEOUT
    try:
        while not all(done(a) for a in allocs):
            if time.monotonic() > deadline:
                left = sum(not done(a) for a in allocs)
                raise BenchError(f"{what}: {left} of {len(allocs)} not done in {SETUP_TIMEOUT} s")
            for key, _ in sel.select(0.05):
                a = key.data
                a.send(drain_answers(a.sock, a.client, time.monotonic()))
            for a in allocs:
                a.send(a.client.poll(time.monotonic()))
                for event in a.client.pop_events():
                    if isinstance(event, TurnFailed | PermissionRefused):
                        raise BenchError(f"{what}: {event}")
    finally:
        sel.close()


def fresh_client_socket(used: set[int], host: str = HOST) -> socket.socket:
    """A socket on a port no earlier allocation of this server used: an allocation whose
    release was lost would answer a new client on its 5-tuple with 437."""
    held = []
    try:
        while True:
            sock = udp_socket(host=host)
            port = sock.getsockname()[1]
            if port not in used:
                used.add(port)
                return sock
            held.append(sock)  # kept open until a fresh port comes, so it is not drawn again
    finally:
        for h in held:
            h.close()


def allocate(server: Server, count: int) -> Allocations:
    """`count` allocations, each with a permission and a channel to its own peer socket, each
    checked to relay one datagram; client ports never used before with this server."""
    where = (server.host, server.port)
    near = server.client_host
    allocs: list[Allocation] = []
    try:
        for i in range(count):
            sock = fresh_client_socket(server.used_ports, near)
            sock.connect(where)
            sock.setblocking(False)
            user, password = rest_credentials(SECRET, f"bench{i}", time.time())
            client = TurnClient(where, user, password)
            allocs.append(Allocation(sock, udp_socket(RCVBUF, near), client))
        for a in allocs:
            a.send(a.client.start(time.monotonic()))
        pump(allocs, lambda a: a.client.relayed is not None, "Allocate")
        for a in allocs:
            a.send(a.client.permit([near], time.monotonic()))
            a.send(a.client.bind_channel(a.peer_addr, time.monotonic()))
        pump(allocs, lambda a: a.peer_addr in a.client.channels, "ChannelBind")
        for a in allocs:
            a.peer.settimeout(2.0)
            probe = b"probe " + os.urandom(8)
            a.sock.send(pack_channel_data(a.client.channels[a.peer_addr], probe))
            try:
                data = a.peer.recv(2048)
            except TimeoutError:
                raise BenchError("a bound channel relayed nothing") from None
            if data != probe:
                raise BenchError(f"the relay delivered {data!r}, not the probe")
            a.peer.settimeout(None)
        for a in allocs:  # anything left (a late answer) is not the load's
            with contextlib.suppress(BlockingIOError):
                while True:
                    a.sock.recv(2048)
    except BaseException:
        for a in allocs:
            a.close()
        raise
    return Allocations(allocs)


# -- measurements ----------------------------------------------------------------------------


@dataclass
class Run:
    """One load run against one server: the generator's counts, the server's CPU, the drops."""

    load: Load
    cpu_s: float
    wall_s: float
    server_drops: int
    generator_drops: int
    rcvbuf_errors: int
    cores: dict[str, float]  # the server's cores over the run, % of their time
    core_busy_s: float = 0.0  # the server's cores' time not idle, whoever used it
    ncpus: int = 1  # how many cores the server has
    core_own_s: float = 0.0  # of it, the server's: all but other processes' time
    net_rx: dict[int, int] = field(default_factory=dict)  # NET_RX softirqs run, per CPU
    softirq_pct: dict[int, float] = field(default_factory=dict)  # softirq time, per CPU
    busy_pct: dict[int, float] = field(default_factory=dict)  # time not idle, per CPU
    backlog_drops: dict[int, int] = field(default_factory=dict)  # input backlog full, per CPU
    attempts: int = 1  # runs made to get one that others did not disturb

    @property
    def cpu_ms_per_10k(self) -> float | None:
        return 1000 * self.cpu_s * 10_000 / self.load.unique if self.load.unique else None

    @property
    def core_ms_per_10k(self) -> float | None:
        """The server's core's busy time (all but idle: the kernel path's work included) per
        10k packets that arrived."""
        return 1000 * self.core_busy_s * 10_000 / self.load.unique if self.load.unique else None

    @property
    def core_own_ms_per_10k(self) -> float | None:
        """The same without other processes' time: the server's own work on its core (its
        process, and the kernel's packet work there)."""
        return 1000 * self.core_own_s * 10_000 / self.load.unique if self.load.unique else None

    @property
    def per_core_second(self) -> float | None:
        """Packets that arrived per second of the server's own work on its core: what one core
        would carry if the load could fill it (the load may not: the generator's ceiling)."""
        return self.load.unique / self.core_own_s if self.core_own_s > 0 else None

    def summary(self) -> dict[str, Any]:
        load = self.load
        return {
            "offered_pps": load.offered_rate or None,
            "sent_pps": round(load.send_rate),
            "delivered_pps": round(load.delivered_rate),
            "sent": load.sent,
            "arrived": load.unique,
            "duplicates": load.duplicates,
            "loss_pct": round(load.loss_pct, 3),
            "send_errors": load.send_errors,
            "server_cpu_s": round(self.cpu_s, 3),
            "server_cpu_pct": round(100 * self.cpu_s / self.wall_s, 1) if self.wall_s else None,
            "server_cpu_ms_per_10k": (
                round(self.cpu_ms_per_10k, 2) if self.cpu_ms_per_10k is not None else None
            ),
            "server_core_busy_pct": (
                round(100 * self.core_busy_s / self.wall_s / self.ncpus, 1) if self.wall_s else None
            ),
            "server_core_ms_per_10k": (
                round(self.core_ms_per_10k, 2) if self.core_ms_per_10k is not None else None
            ),
            "server_core_own_ms_per_10k": (
                round(self.core_own_ms_per_10k, 2) if self.core_own_ms_per_10k is not None else None
            ),
            "per_server_core_second": (
                round(self.per_core_second) if self.per_core_second is not None else None
            ),
            "net_rx_per_cpu": {str(c): n for c, n in sorted(self.net_rx.items())},
            "softirq_pct_per_cpu": {str(c): p for c, p in sorted(self.softirq_pct.items())},
            "busy_pct_per_cpu": {str(c): p for c, p in sorted(self.busy_pct.items())},
            "backlog_drops_per_cpu": {str(c): n for c, n in sorted(self.backlog_drops.items())},
            "server_socket_drops": self.server_drops,
            "generator_socket_drops": self.generator_drops,
            "udp_rcvbuf_errors": self.rcvbuf_errors,
            "server_cores_pct": self.cores,
            "attempts": self.attempts,
        }


def measured(server: Server, generator_sockets: list[socket.socket], go: Callable[[], Load]) -> Run:
    mine = {os.fstat(s.fileno()).st_ino for s in generator_sockets}
    theirs0 = server.inodes()
    # Each side's UDP counters are its network namespace's (the same one on loopback).
    nets = ["/proc/thread-self/net", *([server.net] if server.netns else [])]
    drops0, snmp0 = [udp_drops(n) for n in nets], [snmp_udp(n) for n in nets]
    rx0, irq0, backlog0 = net_rx_per_cpu(), softirq_ticks(), backlog_drops()
    cores0, cpu0, t0 = cpu_ticks(server.cpus), server.cpu(), time.monotonic()
    load = go()
    cores1, cpu1, t1 = cpu_ticks(server.cpus), server.cpu(), time.monotonic()
    rx1, irq1, backlog1 = net_rx_per_cpu(), softirq_ticks(), backlog_drops()
    drops1, snmp1 = [udp_drops(n) for n in nets], [snmp_udp(n) for n in nets]
    theirs = theirs0 | server.inodes()

    def dropped(inodes: set[int], side: int) -> int:
        d0, d1 = drops0[side], drops1[side]
        return sum(d1.get(i, 0) - d0.get(i, 0) for i in inodes if i in d1)

    rcvbuf_errors = sum(
        b.get("RcvbufErrors", 0) - a.get("RcvbufErrors", 0)
        for a, b in zip(snmp0, snmp1, strict=True)
    )
    wall = t1 - t0
    return Run(
        load,
        cpu1 - cpu0,
        wall,
        dropped(theirs, len(nets) - 1),
        dropped(mine, 0),
        rcvbuf_errors,
        core_shares(cores0, cores1, cpu1 - cpu0),
        ncpus=len(server.cpus),
        core_busy_s=busy_seconds(cores0, cores1, wall, len(server.cpus)),
        core_own_s=own_core_seconds(cores0, cores1, wall, len(server.cpus), cpu1 - cpu0),
        net_rx={c: rx1[c] - rx0.get(c, 0) for c in rx1},
        backlog_drops={c: n - backlog0.get(c, 0) for c, n in backlog1.items()},
        softirq_pct={
            c: round(100 * (irq1[c][0] - irq0[c][0]) / TICK / wall, 1) if wall else 0.0
            for c in irq1
            if c in irq0
        },
        busy_pct={
            c: round(max(0.0, 100 - 100 * (irq1[c][1] - irq0[c][1]) / TICK / wall), 1)
            if wall
            else 0.0
            for c in irq1
            if c in irq0
        },
    )


def measured_calm(
    server: Server, generator_sockets: list[socket.socket], go: Callable[[], Load]
) -> Run:
    """A run, made again (up to twice) while other processes took more than DISTURBED % of
    the server's core; the least disturbed one."""
    best: Run | None = None
    for attempt in range(1, 2 + RETRIES_IF_DISTURBED):
        run = measured(server, generator_sockets, go)
        run.attempts = attempt
        if best is None or run.cores["others"] < best.cores["others"]:
            best = run
        if run.cores["others"] <= DISTURBED:
            break
        say(f"      disturbed (others {run.cores['others']:.0f}% of the server's core): again")
        time.sleep(1.0)
    assert best is not None
    best.attempts = attempt
    return best


def core_shares(
    before: dict[str, int], after: dict[str, int], server_cpu: float
) -> dict[str, float]:
    """How the server's cores spent a run: busy, softirq (the kernel's packet work, much of it
    delivering what the server sent: loopback delivers on the sender's core), steal (the
    hypervisor), the server's own processes, and OTHERS (anything else running on them: a
    disturbed run)."""
    d = {k: after[k] - before[k] for k in before}
    total = d["total"] or 1
    server_ticks = server_cpu * TICK
    return {
        "busy": round(100 * d["busy"] / total, 1),
        "softirq": round(100 * d["softirq"] / total, 1),
        "steal": round(100 * d["steal"] / total, 1),
        "server": round(100 * server_ticks / total, 1),
        "others": round(100 * max(0.0, d["tasks"] - server_ticks) / total, 1),
    }


def busy_seconds(before: dict[str, int], after: dict[str, int], wall: float, cpus: int) -> float:
    """The time `cpus` cores were not idle over `wall` s. /proc/stat's idle (and iowait) time
    is measured (NOHZ idle: from the moment a core stops its tick to the next interrupt, which
    is left out), while user, system and softirq are sampled at the tick: a core that wakes
    for a burst of softirq (an RPS interrupt) and sleeps again before a tick shows none of it
    there, only as time missing from idle. So busy is wall time less idle."""
    return max(0.0, wall * cpus - (after["idle"] - before["idle"]) / TICK)


def own_core_seconds(
    before: dict[str, int], after: dict[str, int], wall: float, cpus: int, server_cpu: float
) -> float:
    """The cores' busy time less other processes' (sampled at the tick). Not less steal: a
    mostly idle vCPU here accrues steal while the host wakes it for an interrupt, time the
    guest counts as idle already (a quarter of the core at --netns --offload's peaks, more
    than it was busy at 20k packets/s)."""
    d = {k: after[k] - before[k] for k in before}
    others = max(0.0, d["tasks"] / TICK - server_cpu)
    return max(0.0, busy_seconds(before, after, wall, cpus) - others)


def channeldata_senders(allocs: Allocations) -> list[tuple[socket.socket, bytes]]:
    return [
        (a.sock, pack_channel_data(a.client.channels[a.peer_addr], payload_template()))
        for a in allocs.items
    ]


def channeldata_run(
    server: Server, binary: Path, allocs: Allocations, rate: float, duration: float
) -> Run:
    senders = channeldata_senders(allocs)
    peers = [a.peer for a in allocs.items]

    def go() -> Load:
        return run_load(
            binary,
            senders,
            peers,
            rate=rate,
            duration=duration,
            sequenced=4,  # after the ChannelData header
            received_sequenced=0,  # the peer gets the bare payload
        )

    return measured_calm(server, [s for s, _ in senders] + peers, go)


def channeldata(server: Server, binary: Path, opts: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"peak": {}, "steps": []}
    for count in PEAK_ALLOCATIONS:
        allocs = allocate(server, count)
        try:
            run = channeldata_run(server, binary, allocs, 0, opts.duration)
        finally:
            allocs.close()
        out["peak"][str(count)] = run.summary()
        say(f"    peak, {count:>3} allocations: {line(run)}")
        time.sleep(0.3)
    allocs = allocate(server, STEP_ALLOCATIONS)
    try:
        best, failures = None, 0
        for rate in NETNS_STEPS if server.netns else STEPS:
            if time.monotonic() - allocs.made_at > REFRESH_AFTER:
                allocs.close()
                allocs = allocate(server, STEP_ALLOCATIONS)
            run = channeldata_run(server, binary, allocs, rate, opts.duration)
            kept_up = run.load.send_rate >= KEPT_UP * rate
            ok = kept_up and run.load.loss_pct < LOSS_LIMIT
            step = run.summary() | {"generator_kept_up": kept_up, "under_loss_limit": ok}
            out["steps"].append(step)
            short = "" if kept_up else " (GENERATOR SHORT)"
            say(f"    step {rate:>7,} pps offered: {line(run)}{short}")
            if ok:
                best, failures = rate, 0
            else:
                failures += 1
                if failures == 2:
                    break
            time.sleep(0.3)
    finally:
        allocs.close()
    out["loss_free_pps"] = best
    last = out["steps"][-2:]
    if len(last) == 2 and all(
        not s["generator_kept_up"] and s["loss_pct"] < LOSS_LIMIT for s in last
    ):
        out["loss_free_capped_by_generator"] = True
    out["best_delivered_pps"] = max((s["delivered_pps"] for s in out["steps"]), default=None)
    return out


def binding(server: Server, binary: Path, opts: argparse.Namespace) -> dict[str, Any]:
    socks = []
    try:
        senders = []
        for i in range(BINDING_SOCKETS):
            s = udp_socket(RCVBUF, server.client_host)
            s.connect((server.host, server.port))
            socks.append(s)
            senders.append((s, binding_request(i.to_bytes(4, "big") + os.urandom(8))))
        probe = socks[0]
        probe.settimeout(2.0)
        probe.send(senders[0][1])
        answer = parse_message_untrusted(probe.recv(2048))
        if answer.cls != Class.SUCCESS:
            raise BenchError(f"{server.name} answered a Binding with {answer.cls}")
        probe.settimeout(None)

        def go() -> Load:
            return run_load(
                binary,
                senders,
                socks,
                rate=0,
                duration=opts.duration,
                sequenced=None,
                received_sequenced=None,
            )

        run = measured_calm(server, socks, go)
    finally:
        for s in socks:
            s.close()
    # Answers are not sequenced: every arrival is one (the probe's answer was read above).
    run.load.unique = run.load.received
    say(f"    Binding, {BINDING_SOCKETS} sockets: {line(run)}")
    return run.summary()


UCLIENT_LOSS = re.compile(r"Total lost packets (\d+) \(([\d.]+)%\)")
UCLIENT_SENT = re.compile(r"tot_send_msgs=(\d+), tot_recv_msgs=(\d+)\s*$")


def uclient(server: Server, opts: argparse.Namespace) -> dict[str, Any]:
    """turnutils_uclient's 400 streams, tried again if it gives up before they start (it
    exits at the first error answer it gets while connecting); the failures are kept."""
    failures = []
    for _ in range(UCLIENT_ATTEMPTS):
        result = uclient_once(server, opts)
        if "connect_seconds" in result:
            break
        failures.append(result.get("error"))
    result["failed_attempts"] = failures
    return result


def uclient_once(server: Server, opts: argparse.Namespace) -> dict[str, Any]:
    """turnutils_uclient's 400 streams: its loss, and the server's CPU while they ran."""
    messages = round(opts.uclient_seconds * 50)
    command = [
        "stdbuf",
        "-oL",  # its lines as they come: the sending phase is timed from them
        "turnutils_uclient",
        "-y",  # client to client: pairs of allocations, each the other's peer
        "-c",  # no RTCP sockets: one stream per client
        "-X",  # IPv4 relayed address asked for: without it the first Allocate is smaller than
        # the 401 answering it, which callpeer-rendezvous withholds (no amplification), and
        # uclient waits for it forever in a blocking recv
        "-m",
        str(UCLIENT_STREAMS),
        "-l",
        str(PAYLOAD + 4),
        "-n",
        str(messages),
        "-z",
        "20",
        "-u",
        "bench",
        "-W",
        SECRET,
        "-p",
        str(server.port),
        server.host,
    ]
    samples: list[tuple[float, float]] = []  # (time, server CPU s)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.1):
            samples.append((time.monotonic(), server.cpu()))

    lines: list[tuple[float, str]] = []
    cpu0, t0 = server.cpu(), time.monotonic()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    # It connects its clients a pair at a time and blocks on a lost answer: a time limit.
    limit = UCLIENT_CONNECT_LIMIT + opts.uclient_seconds + 60
    watchdog = threading.Timer(limit, proc.kill)
    watchdog.start()
    connected_at: tuple[float, float, dict[str, int]] | None = None
    try:
        assert proc.stdout is not None
        for text in proc.stdout:
            now = time.monotonic()
            lines.append((now, text.rstrip()))
            if "Total connect time" in text:
                connected_at = (now, server.cpu(), cpu_ticks(server.cpus))
        proc.wait(10)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stop.set()
        sampler.join()
    cpu1, t1, ticks1 = server.cpu(), time.monotonic(), cpu_ticks(server.cpus)
    timed_out = time.monotonic() - t0 >= limit
    text = "\n".join(t for _, t in lines)
    loss = UCLIENT_LOSS.search(text)
    totals = [m for _, t in lines if (m := UCLIENT_SENT.search(t))]
    result: dict[str, Any] = {
        "streams": UCLIENT_STREAMS,
        "messages_per_stream": messages,
        "exit_code": proc.returncode,
        "loss_pct": float(loss.group(2)) if loss else None,
        "lost": int(loss.group(1)) if loss else None,
        "sent": int(totals[-1].group(1)) if totals else None,
        "received": int(totals[-1].group(2)) if totals else None,
        "total_seconds": round(t1 - t0, 1),
        "server_cpu_s_total": round(cpu1 - cpu0, 2),
    }
    if connected_at is not None:
        tc, cpu_c, ticks_c = connected_at
        result["server_cores_pct"] = core_shares(ticks_c, ticks1, cpu1 - cpu_c)
        result["connect_seconds"] = round(tc - t0, 1)
        result["sending_seconds"] = round(t1 - tc, 1)
        result["server_cpu_pct"] = round(100 * (cpu1 - cpu_c) / (t1 - tc), 1)
        if result["sent"]:
            result["sent_pps_avg"] = round(result["sent"] / (t1 - tc))
        # The busiest second of the sending phase, from the samples.
        busy = [
            (c2 - c1) / (s2 - s1)
            for (s1, c1), (s2, c2) in zip(samples, samples[10:], strict=False)
            if s1 >= tc
        ]
        result["server_cpu_pct_busiest_1s"] = round(100 * max(busy), 1) if busy else None
    if loss is None:
        why = f"killed after {limit:.0f} s" if timed_out else f"exit code {proc.returncode}"
        said = [t for _, t in lines if "start_mclient" not in t]
        result["error"] = f"{why}, no loss figure; it said: " + " | ".join(said[:3] + said[-3:])
    say(
        f"    uclient, {UCLIENT_STREAMS} streams: loss {result['loss_pct']}% "
        f"({result['lost']} of {result['sent']}), server CPU {result.get('server_cpu_pct')}% "
        f"while sending (busiest 1 s {result.get('server_cpu_pct_busiest_1s')}%), "
        f"connect {result.get('connect_seconds')} s"
        + (f"; {cores(result['server_cores_pct'])}" if "server_cores_pct" in result else "")
        + (f"; {result['error']}" if "error" in result else "")
    )
    return result


# -- the bench ------------------------------------------------------------------------------


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def line(run: Run) -> str:
    s = run.summary()
    cpu, core = s["server_cpu_ms_per_10k"], s["server_core_ms_per_10k"]
    own = s["server_core_own_ms_per_10k"]
    softirq = ", ".join(
        f"CPU{c} busy {run.busy_pct.get(c, 0):.0f}% softirq {pct:.0f}% "
        f"({run.net_rx.get(c, 0):,} NET_RX, backlog drops {run.backlog_drops.get(c, 0):,})"
        for c, pct in sorted(run.softirq_pct.items())
    )
    return (
        f"sent {s['sent_pps']:>7,}/s, delivered {s['delivered_pps']:>7,}/s, "
        f"loss {s['loss_pct']:6.2f}%, server CPU {s['server_cpu_pct']}% "
        f"({cpu if cpu is not None else '-'} ms/10k), its core "
        f"{core if core is not None else '-'} ms/10k ({own if own is not None else '-'} its own)"
        f", drops server {s['server_socket_drops']:,}"
        f" generator {s['generator_socket_drops']:,}; server core not idle "
        f"{s['server_core_busy_pct']}%, at the tick: {cores(s['server_cores_pct'])}; "
        f"per CPU: {softirq}"
    )


def cores(shares: dict[str, float]) -> str:
    return (
        f"server core busy {shares['busy']:.0f}% (server {shares['server']:.0f}, softirq "
        f"{shares['softirq']:.0f}, steal {shares['steal']:.0f}, others {shares['others']:.0f})"
    )


def one_server(name: str, opts: argparse.Namespace, binary: Path, only: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix=f"relay-vs-coturn-{name}-") as tmp:
        try:
            server = start_server(name, opts, Path(tmp))
        except BenchError as e:  # recorded, shown under the table; the other servers go on
            say(f"  {name} FAILED to start: {e}")
            return {"errors": [f"start: {e}"]}
        say(f"  {name}: {server.command[0]} on {server.host}:{server.port}, pid {server.proc.pid}")
        try:
            tests: dict[str, Callable[[], dict[str, Any]]] = {
                "channeldata": lambda: channeldata(server, binary, opts),
                "binding": lambda: binding(server, binary, opts),
                "uclient": lambda: uclient(server, opts),
            }
            for test, run in tests.items():
                if test not in only:
                    continue
                try:
                    out[test] = run()
                except BenchError as e:  # recorded, shown under the table; the rest goes on
                    say(f"    {test} FAILED: {e}")
                    out.setdefault("errors", []).append(f"{test}: {e}")
            if server.proc.poll() is not None:
                raise BenchError(f"{name} exited during the bench: {server.log_tail()}")
        finally:
            server.stop()
            if server.netns:
                left = stale_filter(server.netns)
                if left:
                    say(f"    a filter was left on {RELAY_DEV}'s ingress (removed): {left}")
                    out.setdefault("errors", []).append(f"filter left after {name}: {left}")
        counters = stopped_counters(server.log_lines())
        if counters:
            out["server_counters"] = counters
            kernel = {k: v for k, v in counters.items() if k.startswith(("kernel_", "offload_"))}
            if kernel:
                say(f"    kernel path's counters: {kernel}")
    return out


def stopped_counters(lines: list[str]) -> dict[str, int]:
    """callpeer-rendezvous's counters as it printed them when stopped ("stopped; k=v ...")."""
    for text in reversed(lines):
        if text.startswith("stopped; "):
            return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text)}
    return {}


@dataclass(frozen=True)
class Row:
    label: str
    get: Callable[[dict[str, Any]], float | None]
    fmt: str = "{:,.0f}"
    ratio: bool = True


def dig(*path: str) -> Callable[[dict[str, Any]], float | None]:
    def get(d: dict[str, Any]) -> float | None:
        value: Any = d
        for p in path:
            if not isinstance(value, dict) or p not in value:
                return None
            value = value[p]
        return float(value) if isinstance(value, int | float) else None

    return get


def step_at(rate: int, key: str) -> Callable[[dict[str, Any]], float | None]:
    def get(d: dict[str, Any]) -> float | None:
        for s in d.get("channeldata", {}).get("steps", []):
            if s["offered_pps"] == rate and s.get(key) is not None:
                return float(s[key])
        return None

    return get


ROWS = [
    *(
        Row(
            f"ChannelData relayed, peak packets/s, {n} allocation{'s' if n > 1 else ''}",
            dig("channeldata", "peak", str(n), "delivered_pps"),
        )
        for n in PEAK_ALLOCATIONS
    ),
    Row(
        f"ChannelData, highest offered rate with under {LOSS_LIMIT:g}% loss "
        f"({STEP_ALLOCATIONS} allocations)",
        dig("channeldata", "loss_free_pps"),
    ),
    Row(
        f"ChannelData, most delivered in any step, packets/s ({STEP_ALLOCATIONS} allocations)",
        dig("channeldata", "best_delivered_pps"),
    ),
    Row(
        f"ChannelData, server CPU ms per 10k packets at {CPU_RATE_STEP:,} pps (lower is better)",
        step_at(CPU_RATE_STEP, "server_cpu_ms_per_10k"),
        "{:.1f}",
    ),
    Row(
        f"ChannelData, server CPU ms per 10k packets at peak, {max(PEAK_ALLOCATIONS)} allocations",
        dig("channeldata", "peak", str(max(PEAK_ALLOCATIONS)), "server_cpu_ms_per_10k"),
        "{:.1f}",
    ),
    Row(
        f"ChannelData, server core busy % at peak, {max(PEAK_ALLOCATIONS)} allocations "
        "(anything on it: process, softirq, others)",
        dig("channeldata", "peak", str(max(PEAK_ALLOCATIONS)), "server_core_busy_pct"),
        "{:.0f}",
    ),
    Row(
        f"ChannelData, server core's own busy ms per 10k packets at peak, "
        f"{max(PEAK_ALLOCATIONS)} allocations (process + softirq + irq on it)",
        dig("channeldata", "peak", str(max(PEAK_ALLOCATIONS)), "server_core_own_ms_per_10k"),
        "{:.1f}",
    ),
    Row(
        f"ChannelData, server core's own busy ms per 10k packets at {CPU_RATE_STEP:,} pps",
        step_at(CPU_RATE_STEP, "server_core_own_ms_per_10k"),
        "{:.1f}",
    ),
    Row(
        f"ChannelData at peak, {max(PEAK_ALLOCATIONS)} allocations: packets per second of the "
        "server core's own busy time (what a full core would carry)",
        dig("channeldata", "peak", str(max(PEAK_ALLOCATIONS)), "per_server_core_second"),
    ),
    Row("STUN Binding answered, requests/s", dig("binding", "delivered_pps")),
    Row(
        "STUN Binding, server CPU ms per 10k answers",
        dig("binding", "server_cpu_ms_per_10k"),
        "{:.1f}",
    ),
    Row(
        f"turnutils_uclient, {UCLIENT_STREAMS} streams of {PAYLOAD + 4} B every 20 ms: loss %",
        dig("uclient", "loss_pct"),
        "{:.2f}",
        ratio=False,
    ),
    Row(
        "turnutils_uclient: server CPU % while sending",
        dig("uclient", "server_cpu_pct"),
        "{:.1f}",
        ratio=False,
    ),
]

# What the generator managed, for the notes under the table.
SEND_RATES = [
    *(
        (f"peak, {n} alloc.", dig("channeldata", "peak", str(n), "sent_pps"))
        for n in PEAK_ALLOCATIONS
    ),
    ("Binding", dig("binding", "sent_pps")),
]


def median(values: list[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


COLUMNS = {"ours": "callpeer-rendezvous", "offload": "callpeer-rendezvous --offload"}


def ratio_of(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def table(rounds: dict[str, list[dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    """Medians over the rounds, a column per server (ours, offload, coturn: those that ran),
    and each of ours to coturn as a ratio ("ratio" for ours, "offload_ratio")."""
    mine = [name for name in COLUMNS if name in rounds]
    names = [*mine, "coturn"]
    ratios = {name: "ratio" if name == "ours" else f"{name}_ratio" for name in mine}
    heads = [COLUMNS[n] for n in mine] + ["coturn"]
    if len(mine) == 1:
        heads.append("ratio")
    else:
        heads += [
            f"ratio{' (' + COLUMNS[n].split(' ', 1)[1] + ')' if ' ' in COLUMNS[n] else ''}"
            for n in mine
        ]
    out = [f"| per core | {' | '.join(heads)} |", "|---" * (len(heads) + 1) + "|"]
    figures: dict[str, Any] = {}
    for row in ROWS:
        got = {n: median([row.get(r) for r in rounds.get(n, [])]) for n in names}
        if all(v is None for v in got.values()):
            continue
        base = got["coturn"]
        quotient = {n: ratio_of(got[n], base) if row.ratio else None for n in mine}
        cells = [row.fmt.format(got[n]) if got[n] is not None else "-" for n in names]
        cells += [f"{quotient[n]:.2f}" if quotient[n] is not None else "" for n in mine]
        out.append(f"| {row.label} | {' | '.join(cells)} |")
        figures[row.label] = got | {ratios[n]: quotient[n] for n in mine}
    return "\n".join(out), figures


def softirq_notes(name: str, runs: list[dict[str, Any]]) -> list[str]:
    """Where the kernel's receive work ran, per CPU: at the peaks, and at the lightest and
    heaviest step, so a reader sees each CPU's share grow with the traffic its side receives."""
    text = []
    picks: list[tuple[str, list[dict[str, Any]]]] = [
        (f"peak {n}", [r["channeldata"]["peak"][str(n)] for r in runs if has_peak(r, n)])
        for n in PEAK_ALLOCATIONS
    ]
    steps = [s for r in runs for s in r.get("channeldata", {}).get("steps", [])]
    rates = sorted({int(s["offered_pps"]) for s in steps})
    for rate in rates[:1] + rates[-1:] if len(rates) > 1 else rates:
        picks.append((f"{rate // 1000}k step", [s for s in steps if s["offered_pps"] == rate]))
    picks.append(("Binding", [r["binding"] for r in runs if "binding" in r]))
    parts = []
    for label, chosen in picks:
        got = [s for s in chosen if s.get("softirq_pct_per_cpu")]
        if not got:
            continue
        cpus = sorted({c for s in got for c in s["softirq_pct_per_cpu"]}, key=int)
        per_cpu = []
        for c in cpus:
            busy = median([s.get("busy_pct_per_cpu", {}).get(c) for s in got])
            pct = median([s["softirq_pct_per_cpu"].get(c) for s in got])
            rx = median([s["net_rx_per_cpu"].get(c) for s in got])
            per_cpu.append(
                f"CPU{c} busy {busy or 0:.0f}% softirq {pct or 0:.0f}% / {rx or 0:,.0f} NET_RX"
            )
        delivered = median([s["delivered_pps"] for s in got]) or 0
        parts.append(f"{label} ({delivered:,.0f}/s delivered): {', '.join(per_cpu)}")
    if parts:
        text.append(
            f"{name}: per CPU (median): not idle, softirq at the tick, NET_RX runs: "
            + "; ".join(parts)
        )
    return text


def softirq_moves(name: str, runs: list[dict[str, Any]], server_cpus: set[int]) -> str | None:
    """--netns's check that RPS works: the server's CPUs' softirq time and NET_RX runs grow
    from the lightest ChannelData step to the peak (100 allocations), i.e. the receive work
    for the relay's traffic happens on the server's core."""
    steps = [s for r in runs for s in r.get("channeldata", {}).get("steps", [])]
    peaks = [r["channeldata"]["peak"][str(n)] for r in runs for n in [max(PEAK_ALLOCATIONS)]]
    peaks = [p for p in peaks if p.get("softirq_pct_per_cpu")] if steps else []
    if not steps or not peaks:
        return None
    light = [s for s in steps if s["offered_pps"] == min(s["offered_pps"] for s in steps)]
    light = [s for s in light if s.get("softirq_pct_per_cpu")]
    if not light:
        return None

    def on_server(got: list[dict[str, Any]], key: str) -> float:
        return median([sum(s[key].get(str(c), 0) for c in server_cpus) for s in got]) or 0.0

    low, high = on_server(light, "busy_pct_per_cpu"), on_server(peaks, "busy_pct_per_cpu")
    rx_low, rx_high = on_server(light, "net_rx_per_cpu"), on_server(peaks, "net_rx_per_cpu")
    rate_low = median([s["delivered_pps"] for s in light]) or 0
    rate_high = median([s["delivered_pps"] for s in peaks]) or 0
    cpus = ",".join(map(str, sorted(server_cpus)))
    # Busy is wall time less measured idle. NET_RX runs are counted exactly, but a run
    # carries more datagrams the busier the core (NAPI batches), so their count need not grow
    # with the rate: that they happen at all (an idle core runs none) is what it shows.
    grew = high >= low + 5 and high >= SOFTIRQ_SEEN and rx_high >= NET_RX_SEEN
    return (
        f"{name}: the server's CPU {cpus}: busy {low:.0f}% ({rx_low:,.0f} NET_RX softirqs) at "
        f"{rate_low:,.0f}/s, {high:.0f}% ({rx_high:,.0f} NET_RX) at the peak's {rate_high:,.0f}/s"
        + (
            ": the receive work for its traffic runs on its core (RPS)"
            if grew
            else ": WARNING: its core did not get busier with the traffic: the receive work ran "
            "elsewhere"
        )
    )


def kernel_share(summary: dict[str, Any]) -> float:
    """% of the server's core busy beyond its process's own time (the kernel's work there)."""
    busy = summary.get("server_core_busy_pct") or 0.0
    return max(0.0, float(busy) - float(summary.get("server_cpu_pct") or 0.0))


def has_peak(result: dict[str, Any], n: int) -> bool:
    return str(n) in result.get("channeldata", {}).get("peak", {})


def notes(
    rounds: dict[str, list[dict[str, Any]]],
    netns: bool = False,
    server_cpus: set[int] | None = None,
) -> str:
    """The generator's achieved rates, the steps, drops: what says the figures can be trusted."""
    text = []
    for name, runs in rounds.items():
        sent = ", ".join(
            f"{label} {median([get(r) for r in runs]):,.0f}/s"
            for label, get in SEND_RATES
            if median([get(r) for r in runs]) is not None
        )
        if sent:
            text.append(f"{name}: generator's achieved send rate (median): {sent}")
        steps: dict[int, list[dict[str, Any]]] = {}
        for r in runs:
            for s in r.get("channeldata", {}).get("steps", []):
                steps.setdefault(int(s["offered_pps"]), []).append(s)
        if steps:
            parts = []
            for rate, got in sorted(steps.items()):
                loss = median([s["loss_pct"] for s in got])
                sent_pps = median([s["sent_pps"] for s in got])
                drops = median([s["server_socket_drops"] for s in got])
                cpus = sorted({c for s in got for c in s.get("backlog_drops_per_cpu", {})}, key=int)
                backlog = "".join(
                    f", CPU{c} backlog drops "
                    f"{median([s['backlog_drops_per_cpu'].get(c) for s in got]) or 0:,.0f}"
                    for c in cpus
                )
                parts.append(
                    f"{rate // 1000}k: sent {sent_pps or 0:,.0f}/s, loss {loss:.2f}%, "
                    f"server drops {drops or 0:,.0f}{backlog} "
                    f"({len(got)} run{'s' if len(got) > 1 else ''})"
                )
            text.append(f"{name}: steps (median): " + "; ".join(parts))
        capped = sum(
            bool(r.get("channeldata", {}).get("loss_free_capped_by_generator")) for r in runs
        )
        if capped:
            text.append(
                f"{name}: in {capped} round(s) the steps ended because the generator could not "
                f"send the offered rate (while under {LOSS_LIMIT:g}% was lost): the loss-free "
                "rate shown is the generator's ceiling, not the server's"
            )
        summaries = [s for r in runs for s in load_runs(r)]
        gen_drops = sum(s["generator_socket_drops"] for s in summaries)
        text.append(f"{name}: drops at the generator's own sockets over all runs: {gen_drops:,}")
        idle = [
            s for s in summaries if s["delivered_pps"] > 10_000 and (s["server_cpu_pct"] or 0) < 5
        ]
        # --netns: the kernel path's work is softirq on the server's own core, as it should be.
        on_core = [s for s in idle if kernel_share(s) >= 5]
        if netns and on_core:
            core = median([kernel_share(s) for s in on_core])
            text.append(
                f"{name}: in {len(on_core)} run(s) the server process stayed nearly idle while "
                f"its core was busy relaying (median {core:.0f}% of the core not idle beyond the "
                "process: softirq, seen as time missing from idle): the kernel path, measured "
                "on the server's core"
            )
            idle = [s for s in idle if s not in on_core]
        if idle:
            text.append(
                f"{name}: WARNING: in {len(idle)} run(s) packets were relayed while the server "
                "process stayed nearly idle: the relaying ran elsewhere (--offload's tc/eBPF "
                "program runs where loopback delivers, on the SENDER's core, the generator's), "
                "so those figures are the generator's ceiling, not the server's per core"
            )
        text += softirq_notes(name, runs)
        moved = softirq_moves(name, runs, server_cpus or {0}) if netns else None
        text += [moved] if moved else []
        kernel = [r["server_counters"] for r in runs if "server_counters" in r]
        relayed = [
            (c.get("kernel_to_peer_packets", 0), c.get("relayed_to_peer", 0)) for c in kernel
        ]
        if any(k for k, _ in relayed):
            text.append(
                f"{name}: ChannelData to peers relayed by the kernel path / by the process, per "
                f"round: {', '.join(f'{k:,} / {p:,}' for k, p in relayed)}"
            )
        for r in runs:
            for error in r.get("errors", []):
                text.append(f"{name}: FAILED: {error}")
        others = [s["server_cores_pct"]["others"] for s in summaries]
        steal = [s["server_cores_pct"]["steal"] for s in summaries]
        if others:
            disturbed = sum(o > DISTURBED for o in others)
            text.append(
                f"{name}: other processes on the server's core: median {median(others)}%, most "
                f"{max(others)}%, over {DISTURBED:g}% in {disturbed} of {len(others)} runs; "
                f"steal most {max(steal)}%"
            )
        uc = [r["uclient"] for r in runs if "uclient" in r]
        if uc:
            uc_sent = median([u.get("sent") for u in uc]) or 0
            uc_rate = median([u.get("sent_pps_avg") for u in uc]) or 0
            connect = median([u.get("connect_seconds") for u in uc])
            text.append(
                f"{name}: uclient sent {uc_sent:,.0f} messages per run, {uc_rate:,.0f}/s on"
                f" average over its sending phase; connect phase {connect} s"
            )
            failed = [f for u in uc for f in u.get("failed_attempts", [])]
            failed += [u["error"] for u in uc if "error" in u]
            if failed:
                text.append(f"{name}: uclient FAILED {len(failed)} time(s): {failed[0]}")
    return "\n".join(text)


def load_runs(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Every generator run's summary in one server's round."""
    cd = result.get("channeldata", {})
    return [
        *cd.get("peak", {}).values(),
        *cd.get("steps", []),
        *([result["binding"]] if "binding" in result else []),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3, help="rounds, each both servers (default 3)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per load run (default 3)")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        help="channeldata, binding or uclient (repeatable or comma-separated; default all)",
    )
    p.add_argument(
        "--servers",
        default=None,
        help="which to run, of ours, offload (ours with --offload: needs root) and coturn "
        "(default ours,coturn; with --netns ours,offload,coturn)",
    )
    p.add_argument(
        "--netns",
        action="store_true",
        help="servers in a network namespace of their own, joined to the generator's by a "
        "veth pair (198.18.0.0/15) with RPS steering each side's receive work to its own "
        "CPUs: the kernel's work for what the server receives is then on the server's core, "
        "so --offload can be measured per core (needs root)",
    )
    p.add_argument(
        "--ours-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra callpeer-rendezvous argument (repeatable: --ours-arg=--workers=1)",
    )
    p.add_argument(
        "--coturn-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra turnserver argument (repeatable)",
    )
    p.add_argument(
        "--ours-commit",
        metavar="REV",
        help="run callpeer-rendezvous as it was at this commit (its rendezvous/ and voip/, "
        "exported with git archive), to compare a change with what it changes",
    )
    p.add_argument("--port", type=int, default=0, help="the servers' port (default: a free one)")
    p.add_argument("--server-cpus", default="0", help="CPUs the servers are pinned to (default 0)")
    p.add_argument("--load-cpus", default="1", help="CPUs of this script and its load generator")
    p.add_argument(
        "--uclient-seconds",
        type=float,
        default=10.0,
        help="how long each uclient stream sends (default 10)",
    )
    p.add_argument(
        "--cpu-quota",
        type=float,
        metavar="PCT",
        help="each server process may use at most PCT %% of one CPU (its own cgroup v1 CFS "
        "quota, 10 ms periods; root): with --ours-arg=--workers=N, whether N quotas carry N "
        "times one, which a machine with no cores to spare cannot show with whole cores",
    )
    p.add_argument("--json", metavar="PATH", help="write the results as JSON here ('-': stdout)")
    opts = p.parse_args(argv)
    only = {w.strip() for o in opts.only for w in o.split(",") if w.strip()}
    unknown = only - {"channeldata", "binding", "uclient"}
    if unknown:
        p.error(f"--only: unknown {', '.join(sorted(unknown))}")
    opts.only_set = only or {"channeldata", "binding", "uclient"}
    default = "ours,offload,coturn" if opts.netns else "ours,coturn"
    opts.server_names = [s.strip() for s in (opts.servers or default).split(",") if s.strip()]
    if not set(opts.server_names) <= set(SERVERS) or not opts.server_names:
        p.error(f"--servers: some of {', '.join(SERVERS)}")
    if len(set(opts.server_names)) != len(opts.server_names):
        p.error("--servers: each once")
    if opts.netns and cpu_list(opts.server_cpus) & cpu_list(opts.load_cpus):
        p.error(
            "--netns: the servers' and the load's CPUs must differ (each side's softirq "
            "is steered to its own)"
        )
    opts.link = None  # --netns: the BenchLink, once made
    return opts


def cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


@contextlib.contextmanager
def timer() -> Iterator[Callable[[], float]]:
    t0 = time.monotonic()
    yield lambda: time.monotonic() - t0


def ours_version(rev: str | None) -> str:
    """Which code callpeer-rendezvous runs: a commit, or this tree and whether it is edited."""
    git = ["git", "-C", str(ROOT)]
    try:
        if rev:
            return subprocess.run(
                [*git, "rev-parse", "--short", rev], capture_output=True, text=True, check=True
            ).stdout.strip()
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "rendezvous", "voip"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head}" + (
        f" with {len(dirty)} uncommitted file(s) in rendezvous/, voip/" if dirty else ""
    )


def coturn_version() -> str:
    try:
        done = subprocess.run(
            ["turnserver", "--version"], capture_output=True, text=True, check=False
        )
    except OSError:
        return "not installed"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[-1] if lines else "?"


def export_commit(rev: str, into: Path) -> None:
    """rendezvous/ and voip/ as they were at `rev`, into `into`."""
    archive = subprocess.Popen(
        ["git", "-C", str(ROOT), "archive", rev, "rendezvous", "voip"], stdout=subprocess.PIPE
    )
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    if archive.wait() != 0:
        raise BenchError(f"git archive {rev} failed")


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    # SIGTERM as Ctrl-C, so the servers are stopped on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.ExitStack() as stack:
        opts.ours_source = None
        if opts.ours_commit:
            opts.ours_source = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            export_commit(opts.ours_commit, opts.ours_source)
        if opts.netns:
            opts.link = stack.enter_context(netns_link(opts))
        return bench(opts)


@contextlib.contextmanager
def netns_link(opts: argparse.Namespace) -> Iterator[BenchLink]:
    """--netns: the generator's and the relay's namespaces and the veth between them, this
    thread in the generator's; all gone on the way out (a crashed run's at the start)."""
    reason = netns_unavailable_reason()
    if reason:
        raise SystemExit(f"--netns: {reason}")
    if "offload" in opts.server_names:
        why = offload_unavailable_reason()
        if why:
            raise SystemExit(f"--netns with offload: {why} (or leave offload out of --servers)")
    removed = remove_leftovers()
    if removed:
        say(f"removed a crashed run's namespaces: {', '.join(removed)}")
    link = BenchLink.named(cpu_list(opts.load_cpus), cpu_list(opts.server_cpus))
    with link:
        link.build()
        link.enter_gen()
        say(
            f"--netns: servers in {link.relay} ({link.relay_address}), generator in {link.gen} "
            f"({link.gen_address}); "
            + "; ".join(f"{dev}: {what}" for dev, what in link.settings().items())
        )
        before = net_rx_per_cpu()
        time.sleep(1.0)
        idle = {c: n - before.get(c, 0) for c, n in net_rx_per_cpu().items()}
        say(
            "NET_RX softirqs per CPU over 1 s without traffic: "
            + ", ".join(f"CPU{c} {n:,}" for c, n in sorted(idle.items()))
        )
        yield link


def bench(opts: argparse.Namespace) -> int:
    if "coturn" in opts.server_names and shutil.which("turnserver") is None:
        raise SystemExit("coturn is not installed (turnserver): apt-get install coturn")
    if "uclient" in opts.only_set and shutil.which("turnutils_uclient") is None:
        say("turnutils_uclient is not installed: the uclient test is left out")
        opts.only_set.discard("uclient")
    os.sched_setaffinity(0, cpu_list(opts.load_cpus))
    binary = load_binary()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    version = ours_version(opts.ours_commit)
    opts.ours_defaults = ours_defaults(opts)
    say(f"callpeer-rendezvous: {version}; coturn: {coturn_version()}")
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in opts.server_names}
    with timer() as elapsed:
        for r in range(opts.rounds):
            order = opts.server_names if r % 2 == 0 else opts.server_names[::-1]
            say(f"round {r + 1} of {opts.rounds}")
            for name in order:
                rounds[name].append(one_server(name, opts, binary, opts.only_set))
        seconds = elapsed()
    load_after = Path("/proc/loadavg").read_text().split()[:3]
    text, figures = table(rounds)
    print(text)
    print()
    print(notes(rounds, opts.netns, cpu_list(opts.server_cpus)))
    print(
        f"\n{opts.rounds} round(s) in {seconds:.0f} s; servers on CPU {opts.server_cpus}, load on "
        f"CPU {opts.load_cpus}; load average before {' '.join(load_before)}, after "
        f"{' '.join(load_after)}; callpeer-rendezvous {version} with "
        f"{' '.join([*opts.ours_defaults, *opts.ours_arg]) or 'no extra arguments'}; coturn "
        f"{coturn_version()} with "
        f"{' '.join(opts.coturn_arg) or 'no extra arguments'}"
    )
    if opts.json:
        doc = {
            "figures": figures,
            "rounds": rounds,
            "options": {k: v for k, v in vars(opts).items() if k not in ("only_set", "only")}
            | {"only": sorted(opts.only_set)},
            "seconds": round(seconds, 1),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "ours_version": version,
            "coturn_version": coturn_version(),
        }
        if opts.json == "-":
            print(json.dumps(doc, indent=2, default=str))
        else:
            Path(opts.json).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
