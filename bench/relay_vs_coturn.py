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
# callpeer-rendezvous is given --workers=1 unless --ours-arg names --workers (per core: one
# process, as coturn gets one relay thread). It runs from this checkout as it is (uncommitted
# edits included: the output says so), or, with --ours-commit REV, from that commit's
# rendezvous/ and voip/ (git archive), to compare a change with what came before it.

from __future__ import annotations

import argparse
import contextlib
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

from voip.lab.turn_sockets import crowd_quotas
from voip.lab.turn_sockets import drain_answers
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


def socket_inodes(pids: list[int]) -> set[int]:
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(fd.path)
                    if link.startswith("socket:["):
                        inodes.add(int(link[8:-1]))
    return inodes


def udp_drops() -> dict[int, int]:
    """Each UDP socket's kernel drop count by inode (/proc/net/udp)."""
    drops = {}
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        f = line.split()
        drops[int(f[9])] = int(f[-1])
    return drops


def snmp_udp() -> dict[str, int]:
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines()]
    for head, values in itertools.pairwise(lines):
        if head[0] == "Udp:" and values[0] == "Udp:" and not values[1].isalpha():
            return dict(zip(head[1:], map(int, values[1:]), strict=True))
    return {}


def cpu_ticks(cpus: set[int]) -> dict[str, int]:
    """/proc/stat's counters summed over `cpus`: busy (user, nice, system, irq, softirq, steal),
    and of it the softirq, steal, and user + nice + system (where processes' own time goes)."""
    got = {"total": 0, "busy": 0, "softirq": 0, "steal": 0, "tasks": 0}
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
    return got


def binding_request(tid: bytes | None = None) -> bytes:
    msg = (
        Message(Method.BINDING, Class.REQUEST, tid)
        if tid
        else Message(Method.BINDING, Class.REQUEST)
    )
    return encode(msg)


def answers_binding(port: int, timeout: float = 0.3) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((HOST, port))
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
    name: str  # "ours" or "coturn"
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    command: list[str]
    cpus: set[int]
    used_ports: set[int] = field(default_factory=set)  # client ports its allocations had

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pids())

    def inodes(self) -> set[int]:
        return socket_inodes(self.pids())

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not answers_binding(self.port):
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited ({self.proc.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"{self.name} did not answer on {HOST}:{self.port}")
            time.sleep(0.1)

    def log_tail(self) -> str:
        log = self.workdir / "server.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        return " | ".join(lines[-5:])

    def stop(self) -> None:
        """The whole process group, SIGTERM then SIGKILL."""
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


def ours_command(port: int, extra: list[str]) -> list[str]:
    exe = Path(sys.executable).with_name("callpeer-rendezvous")
    return [
        str(exe),
        "--listen",
        f"{HOST}:{port}",
        "--relay-address",
        HOST,
        "--allow-loopback-peers",
        f"--turn-secret={SECRET}",
        "--store=:memory:",
        "-q",
        *crowd_quotas(max(UCLIENT_STREAMS, *PEAK_ALLOCATIONS, STEP_ALLOCATIONS)),
        *extra,
    ]


def coturn_command(port: int, workdir: Path, extra: list[str]) -> list[str]:
    return [
        "turnserver",
        "-n",  # no configuration file
        f"--listening-ip={HOST}",
        f"--listening-port={port}",
        f"--relay-ip={HOST}",
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
    port = opts.port or free_port()
    env = ours_env(opts) if name == "ours" else dict(os.environ)
    if name == "ours":
        command = ours_command(port, [*opts.ours_defaults, *opts.ours_arg])
    else:
        command = coturn_command(port, workdir, opts.coturn_arg)
    log = (workdir / "server.log").open("ab")
    proc = subprocess.Popen(
        ["taskset", "-c", opts.server_cpus, *command],
        stdin=subprocess.DEVNULL,
        stdout=log if name == "ours" else subprocess.DEVNULL,
        stderr=subprocess.STDOUT if name == "ours" else subprocess.DEVNULL,
        cwd=workdir,
        env=env,
        start_new_session=True,  # its own process group, stopped as one
    )
    log.close()
    server = Server(name, proc, port, workdir, command, cpu_list(opts.server_cpus))
    server.wait_ready()
    return server


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


def udp_socket(rcvbuf: int | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if rcvbuf:
        try:  # as root, past net.core.rmem_max
            s.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind((HOST, 0))
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


def fresh_client_socket(used: set[int]) -> socket.socket:
    """A socket on a port no earlier allocation of this server used: an allocation whose
    release was lost would answer a new client on its 5-tuple with 437."""
    held = []
    try:
        while True:
            sock = udp_socket()
            port = sock.getsockname()[1]
            if port not in used:
                used.add(port)
                return sock
            held.append(sock)  # kept open until a fresh port comes, so it is not drawn again
    finally:
        for h in held:
            h.close()


def allocate(port: int, count: int, used: set[int]) -> Allocations:
    """`count` allocations, each with a permission and a channel to its own peer socket, each
    checked to relay one datagram; `used`: the client ports used before with this server."""
    server = (HOST, port)
    allocs: list[Allocation] = []
    try:
        for i in range(count):
            sock = fresh_client_socket(used)
            sock.connect(server)
            sock.setblocking(False)
            user, password = rest_credentials(SECRET, f"bench{i}", time.time())
            allocs.append(Allocation(sock, udp_socket(RCVBUF), TurnClient(server, user, password)))
        for a in allocs:
            a.send(a.client.start(time.monotonic()))
        pump(allocs, lambda a: a.client.relayed is not None, "Allocate")
        for a in allocs:
            a.send(a.client.permit([HOST], time.monotonic()))
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
    attempts: int = 1  # runs made to get one that others did not disturb

    @property
    def cpu_ms_per_10k(self) -> float | None:
        return 1000 * self.cpu_s * 10_000 / self.load.unique if self.load.unique else None

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
            "server_socket_drops": self.server_drops,
            "generator_socket_drops": self.generator_drops,
            "udp_rcvbuf_errors": self.rcvbuf_errors,
            "server_cores_pct": self.cores,
            "attempts": self.attempts,
        }


def measured(server: Server, generator_sockets: list[socket.socket], go: Callable[[], Load]) -> Run:
    mine = {os.fstat(s.fileno()).st_ino for s in generator_sockets}
    theirs0 = server.inodes()
    drops0, snmp0 = udp_drops(), snmp_udp()
    cores0, cpu0, t0 = cpu_ticks(server.cpus), server.cpu(), time.monotonic()
    load = go()
    cores1, cpu1, t1 = cpu_ticks(server.cpus), server.cpu(), time.monotonic()
    drops1, snmp1 = udp_drops(), snmp_udp()
    theirs = theirs0 | server.inodes()

    def dropped(inodes: set[int]) -> int:
        return sum(drops1.get(i, 0) - drops0.get(i, 0) for i in inodes if i in drops1)

    return Run(
        load,
        cpu1 - cpu0,
        t1 - t0,
        dropped(theirs),
        dropped(mine),
        snmp1.get("RcvbufErrors", 0) - snmp0.get("RcvbufErrors", 0),
        core_shares(cores0, cores1, cpu1 - cpu0),
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
        allocs = allocate(server.port, count, server.used_ports)
        try:
            run = channeldata_run(server, binary, allocs, 0, opts.duration)
        finally:
            allocs.close()
        out["peak"][str(count)] = run.summary()
        say(f"    peak, {count:>3} allocations: {line(run)}")
        time.sleep(0.3)
    allocs = allocate(server.port, STEP_ALLOCATIONS, server.used_ports)
    try:
        best, failures = None, 0
        for rate in STEPS:
            if time.monotonic() - allocs.made_at > REFRESH_AFTER:
                allocs.close()
                allocs = allocate(server.port, STEP_ALLOCATIONS, server.used_ports)
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
    out["best_delivered_pps"] = max((s["delivered_pps"] for s in out["steps"]), default=None)
    return out


def binding(server: Server, binary: Path, opts: argparse.Namespace) -> dict[str, Any]:
    socks = []
    try:
        senders = []
        for i in range(BINDING_SOCKETS):
            s = udp_socket(RCVBUF)
            s.connect((HOST, server.port))
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
        HOST,
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
    cpu = s["server_cpu_ms_per_10k"]
    return (
        f"sent {s['sent_pps']:>7,}/s, delivered {s['delivered_pps']:>7,}/s, "
        f"loss {s['loss_pct']:6.2f}%, server CPU {s['server_cpu_pct']}% "
        f"({cpu if cpu is not None else '-'} ms/10k), drops server {s['server_socket_drops']:,}"
        f" generator {s['generator_socket_drops']:,}; {cores(s['server_cores_pct'])}"
    )


def cores(shares: dict[str, float]) -> str:
    return (
        f"server core busy {shares['busy']:.0f}% (server {shares['server']:.0f}, softirq "
        f"{shares['softirq']:.0f}, steal {shares['steal']:.0f}, others {shares['others']:.0f})"
    )


def one_server(name: str, opts: argparse.Namespace, binary: Path, only: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix=f"relay-vs-coturn-{name}-") as tmp:
        server = start_server(name, opts, Path(tmp))
        say(f"  {name}: {server.command[0]} on {HOST}:{server.port}, pid {server.proc.pid}")
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
    return out


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


def table(rounds: dict[str, list[dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
    ours, coturn = rounds.get("ours", []), rounds.get("coturn", [])
    out = ["| per core | callpeer-rendezvous | coturn | ratio |", "|---|---|---|---|"]
    figures: dict[str, Any] = {}
    for row in ROWS:
        a, b = median([row.get(r) for r in ours]), median([row.get(r) for r in coturn])
        if a is None and b is None:
            continue
        ratio = f"{a / b:.2f}" if row.ratio and a is not None and b else ""
        cells = [row.fmt.format(v) if v is not None else "-" for v in (a, b)]
        out.append(f"| {row.label} | {cells[0]} | {cells[1]} | {ratio} |")
        figures[row.label] = {
            "ours": a,
            "coturn": b,
            "ratio": a / b if a is not None and b else None,
        }
    return "\n".join(out), figures


def notes(rounds: dict[str, list[dict[str, Any]]]) -> str:
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
                parts.append(
                    f"{rate // 1000}k: sent {sent_pps or 0:,.0f}/s, loss {loss:.2f}%, "
                    f"server drops {drops or 0:,.0f} ({len(got)} run{'s' if len(got) > 1 else ''})"
                )
            text.append(f"{name}: steps (median): " + "; ".join(parts))
        summaries = [s for r in runs for s in load_runs(r)]
        gen_drops = sum(s["generator_socket_drops"] for s in summaries)
        text.append(f"{name}: drops at the generator's own sockets over all runs: {gen_drops:,}")
        idle = [
            s for s in summaries if s["delivered_pps"] > 10_000 and (s["server_cpu_pct"] or 0) < 5
        ]
        if idle:
            text.append(
                f"{name}: WARNING: in {len(idle)} run(s) packets were relayed while the server "
                "process stayed nearly idle: the relaying ran elsewhere (--offload's tc/eBPF "
                "program runs where loopback delivers, on the SENDER's core, the generator's), "
                "so those figures are the generator's ceiling, not the server's per core"
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
    p.add_argument("--servers", default="ours,coturn", help="which to run (default ours,coturn)")
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
    p.add_argument("--json", metavar="PATH", help="write the results as JSON here ('-': stdout)")
    opts = p.parse_args(argv)
    only = {w.strip() for o in opts.only for w in o.split(",") if w.strip()}
    unknown = only - {"channeldata", "binding", "uclient"}
    if unknown:
        p.error(f"--only: unknown {', '.join(sorted(unknown))}")
    opts.only_set = only or {"channeldata", "binding", "uclient"}
    opts.server_names = [s.strip() for s in opts.servers.split(",") if s.strip()]
    if not set(opts.server_names) <= {"ours", "coturn"} or not opts.server_names:
        p.error("--servers: ours, coturn or both")
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
        return bench(opts)


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
    print(notes(rounds))
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
