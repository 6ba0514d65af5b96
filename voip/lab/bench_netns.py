"""Two network namespaces joined by one veth pair, for benchmarks that need the receiving side's
kernel work on the receiver's own core (needs root on Linux).

On loopback the kernel delivers a datagram in the softirq of the core that SENT it, so a server
whose work is kernel work (a tc/eBPF program) shows an idle core and the sender pays. Here the
load generator lives in one namespace ("gen") and the server in another ("relay"); each veth
end's receive queue is steered by RPS (/sys/class/net/DEV/queues/rx-0/rps_cpus) to its own
side's CPUs, so what arrives at the server is processed on the server's core, and what arrives
back at the generator on the generator's. Checksum offload is off on both ends, as on every lab
link (veth hands partially checksummed UDP on otherwise; see voip/lab/namespaces.py).

Addresses come from 198.18.0.0/15 (RFC 2544, benchmarking) only. Namespace names carry the PID
of the process that made them, so a later run removes a crashed one's leftovers.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from voip.lab.namespaces import add_address
from voip.lab.namespaces import delete_namespace
from voip.lab.namespaces import veth
from voip.lab.netns import LabError
from voip.lab.netns import list_namespaces
from voip.lab.netns import run

PREFIX = "cpbench-"
CLONE_NEWNET = 0x40000000
GEN_ADDRESS = "198.18.0.1"
RELAY_ADDRESS = "198.18.0.2"
PREFIX_LEN = 24
BENCH_RANGE = "198.18.0.0/15"  # RFC 2544's benchmarking range: the only addresses used here
GEN_DEV, RELAY_DEV = "gen0", "relay0"


def unavailable_reason() -> str | None:
    """Why the namespaces cannot be made here, or None."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces and veth need root: run it with sudo"
    missing = [t for t in ("ip", "ethtool") if shutil.which(t) is None]
    if missing:
        return f"it needs {', '.join(missing)} (apt-get install iproute2 ethtool)"
    return None


def cpu_mask(cpus: set[int] | frozenset[int]) -> str:
    """The hex CPU mask sysfs takes (rps_cpus): {0} -> "1", {1} -> "2", {0, 2, 3} -> "d";
    32-bit groups separated by commas past CPU 31, as the kernel prints them."""
    if not cpus or min(cpus) < 0:
        raise ValueError(f"no CPU mask for {sorted(cpus)}")
    bits = sum(1 << c for c in cpus)
    groups = []
    while bits:
        groups.append(bits & 0xFFFFFFFF)
        bits >>= 32
    head, *rest = reversed(groups)
    return ",".join([f"{head:x}", *(f"{g:08x}" for g in rest)])


def net_rx_per_cpu(text: str | None = None) -> dict[int, int]:
    """/proc/softirqs' NET_RX count per CPU (how often each CPU ran the receive softirq)."""
    lines = (text if text is not None else Path("/proc/softirqs").read_text()).splitlines()
    cpus = [int(name[3:]) for name in lines[0].split()]
    for line in lines[1:]:
        name, *counts = line.split()
        if name == "NET_RX:":
            return dict(zip(cpus, map(int, counts), strict=False))
    return {}


def setns(target: str | int) -> None:
    """Move the calling thread into the network namespace at `target` (a path or an open file
    descriptor: what os.setns does from Python 3.12 on); the sockets and the children it makes
    afterwards are that namespace's."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(target, os.O_RDONLY) if isinstance(target, str) else target
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({target}): {os.strerror(err)}")
    finally:
        if isinstance(target, str):
            os.close(fd)


@dataclass
class BenchLink:
    """The two namespaces, the veth pair between them and their RPS steering."""

    gen: str
    relay: str
    gen_cpus: set[int]
    relay_cpus: set[int]
    home: int | None = None  # the namespace this thread came from, while in the generator's
    made: bool = False

    @classmethod
    def named(cls, gen_cpus: set[int], relay_cpus: set[int]) -> BenchLink:
        base = f"{PREFIX}{os.getpid()}-"
        return cls(base + "gen", base + "relay", gen_cpus, relay_cpus)

    @property
    def gen_address(self) -> str:
        return GEN_ADDRESS

    @property
    def relay_address(self) -> str:
        return RELAY_ADDRESS

    def build(self) -> None:
        """Namespaces, veth (tx checksum offload off), addresses, and RPS on each side."""
        self.made = True
        for ns in (self.gen, self.relay):
            run(["ip", "netns", "add", ns])
            run(["ip", "link", "set", "lo", "up"], ns=ns)
        veth(self.gen, GEN_DEV, self.relay, RELAY_DEV)
        add_address(self.gen, GEN_DEV, f"{GEN_ADDRESS}/{PREFIX_LEN}")
        add_address(self.relay, RELAY_DEV, f"{RELAY_ADDRESS}/{PREFIX_LEN}")
        self.steer(self.gen, GEN_DEV, self.gen_cpus)
        self.steer(self.relay, RELAY_DEV, self.relay_cpus)

    @staticmethod
    def steer(ns: str, dev: str, cpus: set[int]) -> None:
        """RPS: `dev`'s receive queue processed on `cpus` (in `ns`: `ip netns exec` mounts
        that namespace's /sys), checked by reading it back."""
        path = f"/sys/class/net/{dev}/queues/rx-0/rps_cpus"
        mask = cpu_mask(cpus)
        run(["sh", "-c", f"echo {mask} > {path}"], ns=ns)
        got = run(["cat", path], ns=ns).strip().replace(",", "").lstrip("0") or "0"
        if int(got, 16) != int(mask.replace(",", ""), 16):
            raise LabError(f"RPS on {dev} reads {got}, not {mask}")

    def settings(self) -> dict[str, str]:
        """What the link has, for the report: RPS masks and the offloads ethtool shows."""
        out = {}
        for ns, dev in ((self.gen, GEN_DEV), (self.relay, RELAY_DEV)):
            rps = run(["cat", f"/sys/class/net/{dev}/queues/rx-0/rps_cpus"], ns=ns).strip()
            feats = run(["ethtool", "-k", dev], ns=ns, check=False).splitlines()
            wanted = ("tx-checksumming:", "generic-receive-offload:")
            shown = [f.strip() for f in feats if f.strip().startswith(wanted)]
            out[dev] = f"rps_cpus {rps}; " + ", ".join(shown)
        return out

    def enter_gen(self) -> None:
        """This thread into the generator's namespace (its later sockets and children too)."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            setns(f"/run/netns/{self.gen}")
        except BaseException:
            os.close(home)
            raise
        self.home = home

    def close(self) -> None:
        """Back home, and both namespaces gone (what runs in them killed); safe twice."""
        if self.home is not None:
            try:
                setns(self.home)
            finally:
                os.close(self.home)
                self.home = None
        if self.made:
            for ns in (self.relay, self.gen):
                delete_namespace(ns)
            self.made = False

    def __enter__(self) -> BenchLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_leftovers() -> list[str]:
    """Namespaces of earlier runs whose process is gone (a crash, a kill -9), deleted."""
    removed = []
    for ns in list_namespaces():
        if not ns.startswith(PREFIX):
            continue
        pid = ns[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(LabError):
                delete_namespace(ns)
            removed.append(ns)
    return removed
