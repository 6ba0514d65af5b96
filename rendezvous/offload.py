"""The kernel fast path for TURN channels (RFC 8656 section 12): `--offload`.

A tc (clsact ingress) eBPF program, rendezvous/bpf/channel_relay.c, relays established
ChannelData itself: a client's ChannelData to the server's listening address leaves as a plain
UDP datagram from the allocation's relayed address to the peer, and the peer's datagrams to the
relayed address leave as ChannelData from the server's address to the client, so the Python
server never sees them. Everything the maps do not hold (STUN, unknown channels, malformed
ChannelData, IPv6) reaches user space untouched. IPv4 only for now.

`ChannelOffload.load` compiles the program (cached in ~/.cache/callpeer/bpf/), loads it with
iproute2's `tc` into a pin directory of its own under /sys/fs/bpf/callpeer/ and attaches it to
each interface; `add`/`remove` then write the maps through bpf(2) (rendezvous/offload_maps.py),
with no subprocess. A destination on this host continues up the stack; another host is reached
through the kernel's FIB (bpf_fib_lookup) and a redirect to the egress interface, which needs
forwarding enabled on the receiving interface (`sysctl net.ipv4.conf.IF.forwarding=1`): without
it, or before a neighbour is resolved, the packet goes to user space as without the offload.

A process that dies without `close` leaves its filter forwarding the channels it held: the
next `load` on the same interface replaces it (one filter place per interface, FILTER_PREF)
and removes pin directories whose process is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import TracebackType

from rendezvous import offload_maps as maps

Address = tuple[str, int]

SOURCE = Path(__file__).resolve().parent / "bpf" / "channel_relay.c"
# Built from SOURCE by `make bpf` and shipped, so --offload needs no compiler; the hash of the
# source it was built from is beside it (a test holds them together).
SHIPPED = SOURCE.with_suffix(".o")
SHIPPED_FROM = SOURCE.with_suffix(".o.sha256")
SECTION = "tc"
# Our filter's place in each interface's ingress chain: a later load replaces a stale one.
FILTER_PREF = 0xCA11
FILTER_HANDLE = 1
BPFFS = Path("/sys/fs/bpf")
PIN_ROOT = BPFFS / "callpeer"
SIOCGIFHWADDR = 0x8927
ARPHRD_ETHER, ARPHRD_LOOPBACK = 1, 772
ETHERNET_TYPES = {ARPHRD_ETHER, ARPHRD_LOOPBACK}  # links whose frames start with an Ethernet header
INSTALL_HINT = "apt-get install clang libbpf-dev"
COUNTER_NAMES = ("to_peer_packets", "to_peer_bytes", "to_client_packets", "to_client_bytes")


class OffloadUnavailable(Exception):
    """Why the kernel path cannot be used here (not root, no clang, no BPF...)."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "callpeer" / "bpf"


def unavailable_reason() -> str | None:
    """Why `load` would fail before trying anything, or None when it may work."""
    if not sys.platform.startswith("linux"):
        return "the kernel fast path needs Linux (tc and eBPF)"
    if os.geteuid() != 0:
        return "the kernel fast path needs root (loading eBPF, attaching tc filters)"
    if not toolchain() and not shipped_is_current():
        return f"the kernel fast path needs clang and the libbpf headers: {INSTALL_HINT}"
    if shutil.which("tc") is None:
        return "the kernel fast path needs iproute2's tc: apt-get install iproute2"
    if not SOURCE.exists():
        return f"the program source {SOURCE} is missing"
    return None


def toolchain() -> bool:
    return shutil.which("clang") is not None and Path("/usr/include/bpf/bpf_helpers.h").exists()


def shipped_is_current() -> bool:
    """Whether the shipped object was built from the source as it is."""
    if not SHIPPED.exists() or not SHIPPED_FROM.exists():
        return False
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()
    return SHIPPED_FROM.read_text().strip() == digest


def compile_program() -> Path:
    """The object file: built from the source (cached, rebuilt when the source is newer) when
    clang is here, else the shipped one."""
    if not toolchain() and shipped_is_current():
        return SHIPPED
    target = cache_dir() / "channel_relay.o"
    if target.exists() and target.stat().st_mtime >= SOURCE.stat().st_mtime:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    includes = []
    multiarch = sysconfig.get_config_var("MULTIARCH")
    if multiarch and Path(f"/usr/include/{multiarch}").is_dir():
        includes = [f"-I/usr/include/{multiarch}"]  # asm/types.h for -target bpf
    scratch = target.with_suffix(f".{os.getpid()}.tmp")
    cmd = ["clang", "-O2", "-g", "-target", "bpf", *includes, "-c", str(SOURCE), "-o", str(scratch)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603 - fixed args
    if proc.returncode != 0:
        scratch.unlink(missing_ok=True)
        raise OffloadUnavailable(f"clang could not build {SOURCE.name}: {proc.stderr.strip()}")
    scratch.replace(target)
    return target


def _tc(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """iproute2's tc, found on PATH like the lab's ip and nft, with arguments built here."""
    cmd = ["tc", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)  # noqa: S603


def _ensure_bpffs() -> None:
    with open("/proc/self/mounts", encoding="ascii", errors="replace") as mounts:
        if any(line.split()[1:3] == [str(BPFFS), "bpf"] for line in mounts if line.strip()):
            return
    cmd = ["mount", "-t", "bpf", "bpf", str(BPFFS)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # noqa: S603
    if proc.returncode != 0:
        raise OffloadUnavailable(f"cannot mount the BPF file system: {proc.stderr.strip()}")


def _remove_stale_pins() -> None:
    """Pin directories of our instances whose process is gone (a crash, a kill -9)."""
    if not PIN_ROOT.is_dir():
        return
    for entry in PIN_ROOT.iterdir():
        pid = entry.name.split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(entry, ignore_errors=True)


def _check_interface(name: str) -> int:
    """The link exists in this thread's network namespace and frames carry Ethernet headers
    (asked by ioctl, not /sys, which shows the namespace that mounted it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("16s16x", name.encode()[:15])
        try:
            reply = fcntl.ioctl(probe.fileno(), SIOCGIFHWADDR, request)
        except OSError as exc:
            raise OffloadUnavailable(f"no interface {name!r} here ({exc.strerror})") from exc
    (kind,) = struct.unpack_from("=H", reply, 16)
    if kind not in ETHERNET_TYPES:
        raise OffloadUnavailable(f"{name} has no Ethernet header (link type {kind})")
    return int(kind)


def forwarding_path(name: str) -> Path:
    # /proc/sys/net shows the network namespace of the thread that opens it.
    return Path("/proc/sys/net/ipv4/conf") / name / "forwarding"


class ChannelOffload:
    """The tc/eBPF program attached to some interfaces, and its channel maps."""

    def __init__(self, interfaces: list[str], pin_dir: Path, server: Address) -> None:
        self.interfaces = interfaces
        self.server = server
        self.pin_dir = pin_dir
        self.attached: list[str] = []
        self.c2p: maps.BpfMap | None = None
        self.p2c: maps.BpfMap | None = None
        self.config: maps.BpfMap | None = None
        self.retired = dict.fromkeys(COUNTER_NAMES, 0)  # counters of removed entries
        self.closed = False
        self.restore_forwarding: list[str] = []  # interfaces whose forwarding we switched on
        self.notes: list[str] = []  # what the server should tell its operator

    @classmethod
    def load(
        cls, interfaces: list[str], server: tuple[str, int], *, enable_forwarding: bool = False
    ) -> ChannelOffload:
        """Compile (cached), load and attach to each interface's clsact ingress.

        Forwarding to another host uses the kernel's FIB lookup, which the kernel allows only
        on interfaces with forwarding on: `enable_forwarding` switches it on for the given
        interfaces until `close` (keep a firewall whose forward chain drops, as a host that is
        not a router has: the offloaded packets are redirected before netfilter's forward
        hook, so they pass). Without it such packets are relayed in user space, and `notes`
        says so."""
        reason = unavailable_reason()
        if reason:
            raise OffloadUnavailable(reason)
        if not interfaces:
            raise OffloadUnavailable("no interface to attach the kernel fast path to")
        try:
            config = maps.config_value(server)
        except ValueError as exc:
            raise OffloadUnavailable(str(exc)) from exc
        kinds = {name: _check_interface(name) for name in interfaces}
        obj = compile_program()
        _ensure_bpffs()
        _remove_stale_pins()
        pin_dir = PIN_ROOT / f"{os.getpid()}-{secrets.token_hex(4)}"
        pin_dir.mkdir(parents=True)
        self = cls(list(interfaces), pin_dir, server)
        try:
            for name in interfaces:
                if kinds[name] != ARPHRD_LOOPBACK:
                    self._check_forwarding(name, enable_forwarding)
            for name in interfaces:
                self._attach(name, obj)
            globals_dir = pin_dir / "tc" / "globals"
            self.c2p = maps.BpfMap(
                str(globals_dir / "cp_c2p"), maps.C2P_KEY.size, maps.C2P_VALUE.size
            )
            self.p2c = maps.BpfMap(
                str(globals_dir / "cp_p2c"), maps.P2C_KEY.size, maps.P2C_VALUE.size
            )
            self.config = maps.BpfMap(
                str(globals_dir / "cp_config"), maps.CONFIG_KEY.size, maps.CONFIG_VALUE.size
            )
            self.config.update(maps.CONFIG_KEY.pack(0), config)
        except maps.BpfError as exc:
            self.close()
            raise OffloadUnavailable(f"the fast path's maps cannot be opened: {exc}") from exc
        except BaseException:
            self.close()
            raise
        return self

    def _check_forwarding(self, name: str, enable: bool) -> None:
        path = forwarding_path(name)
        if path.read_text().strip() != "0":
            return
        if enable:
            path.write_text("1\n")
            self.restore_forwarding.append(name)
            return
        self.notes.append(
            f"forwarding is off on {name}: channels to other hosts are relayed in user space"
            f" (sysctl net.ipv4.conf.{name}.forwarding=1, or --offload's enable_forwarding)"
        )

    def _attach(self, name: str, obj: Path) -> None:
        if "clsact" not in _tc(["qdisc", "show", "dev", name]).stdout:
            proc = _tc(["qdisc", "add", "dev", name, "clsact"])
            if proc.returncode != 0:
                raise OffloadUnavailable(f"cannot add clsact to {name}: {proc.stderr.strip()}")
        # tc pins the maps under $TC_BPF_MNT/tc/globals: ours alone, shared by every interface.
        env = {**os.environ, "TC_BPF_MNT": str(self.pin_dir)}
        args = ["filter", "replace", "dev", name, "ingress", "pref", str(FILTER_PREF)]
        args += ["handle", str(FILTER_HANDLE), "bpf", "direct-action"]
        proc = _tc([*args, "obj", str(obj), "sec", SECTION], env=env)
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-6:])
            raise OffloadUnavailable(f"the kernel refused the fast path on {name}: {tail}")
        self.attached.append(name)

    def _maps(self) -> tuple[maps.BpfMap, maps.BpfMap]:
        if self.closed or self.c2p is None or self.p2c is None:
            raise RuntimeError("the kernel fast path is closed")
        return self.c2p, self.p2c

    def add(self, client: Address, channel: int, relayed: Address, peer: Address) -> None:
        """Relay this channel in the kernel, both ways; counters survive a repeated add."""
        if not 0x4000 <= channel <= 0x4FFF:
            raise ValueError(f"channel {channel:#x} is outside 0x4000-0x4FFF")
        c2p, p2c = self._maps()
        key, value = maps.c2p_key(client, channel), maps.c2p_value(relayed, peer)
        back_key, back_value = maps.p2c_key(relayed, peer), maps.p2c_value(client, channel)
        current = c2p.lookup(key)
        if current is None or current[:12] != value[:12]:
            c2p.update(key, value)
        current = p2c.lookup(back_key)
        if current is None or current[:8] != back_value[:8]:
            p2c.update(back_key, back_value)

    def remove(self, client: Address, channel: int, relayed: Address, peer: Address) -> None:
        """Stop relaying this channel in the kernel (its traffic goes to user space again)."""
        c2p, p2c = self._maps()
        key, back_key = maps.c2p_key(client, channel), maps.p2c_key(relayed, peer)
        mine = maps.p2c_value(client, channel)[:8]  # a newer channel to that peer keeps its own
        for bpf_map, map_key, prefix in ((c2p, key, "to_peer"), (p2c, back_key, "to_client")):
            value = bpf_map.lookup(map_key)
            if bpf_map is p2c and value is not None and value[:8] != mine:
                continue
            if bpf_map.delete(map_key) and value is not None:
                packets, nbytes = maps.value_counters(value)
                self.retired[f"{prefix}_packets"] += packets
                self.retired[f"{prefix}_bytes"] += nbytes

    def channel_counters(
        self, client: Address, channel: int, relayed: Address, peer: Address
    ) -> dict[str, int]:
        """One channel's counters (zero when it is not offloaded)."""
        c2p, p2c = self._maps()
        out = dict.fromkeys(COUNTER_NAMES, 0)
        for bpf_map, map_key, prefix in (
            (c2p, maps.c2p_key(client, channel), "to_peer"),
            (p2c, maps.p2c_key(relayed, peer), "to_client"),
        ):
            value = bpf_map.lookup(map_key)
            if value is not None:
                out[f"{prefix}_packets"], out[f"{prefix}_bytes"] = maps.value_counters(value)
        return out

    def counters(self) -> dict[str, int]:
        """Packets and data bytes relayed in the kernel, over every entry ever added."""
        c2p, p2c = self._maps()
        out = dict(self.retired)
        for bpf_map, prefix in ((c2p, "to_peer"), (p2c, "to_client")):
            for key in bpf_map.walk():
                value = bpf_map.lookup(key)
                if value is not None:
                    packets, nbytes = maps.value_counters(value)
                    out[f"{prefix}_packets"] += packets
                    out[f"{prefix}_bytes"] += nbytes
        out["channels"] = sum(1 for _ in c2p.walk())
        return out

    def close(self) -> None:
        """Detach from every interface and remove our pins; safe to call twice."""
        if self.closed:
            return
        self.closed = True
        for name in self.attached:
            _tc(["filter", "del", "dev", name, "ingress", "pref", str(FILTER_PREF)])
        self.attached = []
        for name in self.restore_forwarding:
            with contextlib.suppress(OSError):
                forwarding_path(name).write_text("0\n")
        self.restore_forwarding = []
        for bpf_map in (self.c2p, self.p2c, self.config):
            if bpf_map is not None:
                bpf_map.close()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.pin_dir)

    def __enter__(self) -> ChannelOffload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
