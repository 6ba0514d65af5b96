"""The lab: two hosts behind NAT routers, a rendezvous and a relay, on an emulated internet.

    198.18.1.2 [a] --lan-- [ra] 203.0.113.1 --+                      +-- 203.0.113.10 [srv]
                                               +-- [inet: switch] ---+
    198.18.2.2 [b] --lan-- [rb] 203.0.113.2 --+                      +-- 203.0.113.20 [relay]

Every node is a network namespace; veth pairs join them; the internet is the userspace switch
in `inet`. Namespace names carry this process's PID, so concurrent labs never collide and a
later lab can tell a crashed one's leftovers and remove them (namespaces.py). `Lab` is a context
manager that always tears down, after a failure or Ctrl-C too. Each router is set up by
router.py; `Lab.baseline` runs its echoes with baseline.py.

A router may also map ports for its LAN on request (NAT-PMP, PCP): `LabConfig.port_mapping_a`
/ `_b` build it for that, and `Lab.start_port_mapping` starts its miniupnpd (port_mapping.py)
once the rendezvous, its STUN server, is up.

`LabConfig.block_udp` makes a side's router let only TCP out (router.py); `LabConfig.ipv6`
gives every node an IPv6 address too, without NAT, each router a stateful firewall (ipv6.py);
`Lab.start_coturn` runs coturn on the relay node (coturn.py).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from types import TracebackType

from voip.lab.baseline import echo_rtts
from voip.lab.config import LabConfig
from voip.lab.config import Node
from voip.lab.coturn import coturn_args
from voip.lab.coturn import launch_coturn
from voip.lab.echo import EchoRtt
from voip.lab.faults import cut_ruleset
from voip.lab.ipv6 import HOST_IP6
from voip.lab.ipv6 import INTERNET6
from voip.lab.ipv6 import RELAY_IP6
from voip.lab.ipv6 import SERVER_ALT_IP6
from voip.lab.ipv6 import SERVER_IP6
from voip.lab.ipv6 import WAN_IP6S
from voip.lab.ipv6 import add_ipv6
from voip.lab.ipv6 import prepare_namespace
from voip.lab.namespaces import PREFIX
from voip.lab.namespaces import add_address
from voip.lab.namespaces import delete_namespace
from voip.lab.namespaces import remove_leftovers
from voip.lab.namespaces import veth
from voip.lab.netns import LabError
from voip.lab.netns import lab_unavailable_reason
from voip.lab.netns import popen
from voip.lab.netns import run
from voip.lab.port_mapping import NATPMP_PCP
from voip.lab.port_mapping import PortMapper
from voip.lab.port_mapping import launch_miniupnpd
from voip.lab.router import configure_router

# PREFIX and remove_leftovers live in namespaces.py, LabConfig and Node in config.py, the IPv6
# addresses in ipv6.py; importers find them here too.
__all__ = [
    "HOST_IP6",
    "INTERNET",
    "INTERNET6",
    "LANS",
    "PREFIX",
    "RELAY_IP",
    "RELAY_IP6",
    "SERVER_ALT_IP",
    "SERVER_ALT_IP6",
    "SERVER_IP",
    "SERVER_IP6",
    "WAN_IP6S",
    "WAN_IPS",
    "Lab",
    "LabConfig",
    "Node",
    "remove_leftovers",
]

INTERNET = "203.0.113.0/24"
SERVER_IP = "203.0.113.10"
SERVER_ALT_IP = "203.0.113.11"  # the rendezvous's second address, for RFC 5780 tests
RELAY_IP = "203.0.113.20"
WAN_IPS = {"a": "203.0.113.1", "b": "203.0.113.2"}
LANS = {"a": "198.18.1", "b": "198.18.2"}


@dataclass
class Lab:
    config: LabConfig = field(default_factory=LabConfig)

    def __post_init__(self) -> None:
        self.config.validate()
        self.tag = f"{PREFIX}{os.getpid()}-{secrets.token_hex(2)}-"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[str]] = []
        self.nodes: dict[str, Node] = {}
        self.switch: subprocess.Popen[str] | None = None
        self.port_mappers: dict[str, PortMapper] = {}  # side -> its router's miniupnpd
        self.workdirs: list[Path] = []  # removed at teardown, once what uses them has stopped

    # -- lifecycle ------------------------------------------------------------------------
    def __enter__(self) -> Lab:
        reason = lab_unavailable_reason()
        if reason:
            raise LabError(reason)
        remove_leftovers()
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.teardown()

    def teardown(self) -> None:
        for proc in [*self.processes, *([self.switch] if self.switch else [])]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.processes, *([self.switch] if self.switch else [])]:
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ns in reversed(self.namespaces):
            delete_namespace(ns)
        self.namespaces.clear()
        for workdir in self.workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
        self.workdirs.clear()

    # -- building ------------------------------------------------------------------------
    def _ns(self, role: str) -> str:
        name = self.tag + role
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        run(["ip", "link", "set", "lo", "up"], ns=name)
        # The switch's own stack stays off IPv6 (it only carries frames); and without IPv6 in
        # the lab, no autoconfiguration chatter on its links.
        prepare_namespace(name, ipv6=self.config.ipv6 and role != "inet")
        return name

    def _build(self) -> None:
        cfg = self.config
        inet = self._ns("inet")
        ports: list[str] = []

        def attach_to_internet(
            ns: str,
            dev: str,
            ip: str,
            port: str,
            *,
            delay: float,
            jitter: float = 0.0,
            loss: float = 0.0,
        ) -> None:
            veth(inet, port, ns, dev)
            add_address(ns, dev, f"{ip}/24")
            ports.append(f"{port}:{delay}:{jitter}:{loss}")

        srv = self._ns("srv")
        attach_to_internet(srv, "eth0", SERVER_IP, "p-srv", delay=cfg.delay_server)
        add_address(srv, "eth0", f"{SERVER_ALT_IP}/24")
        self.nodes["server"] = Node(srv, SERVER_IP, SERVER_IP, "none")
        relay = self._ns("relay")
        attach_to_internet(relay, "eth0", RELAY_IP, "p-relay", delay=cfg.delay_relay)
        self.nodes["relay"] = Node(relay, RELAY_IP, RELAY_IP, "none")

        sides = [("a", cfg.nat_a, cfg.delay_a)]
        if not cfg.same_nat:
            sides.append(("b", cfg.nat_b, cfg.delay_b))
        for side, kind, delay in sides:
            host = self._ns(side)
            wan_ip = WAN_IPS[side]
            if kind == "none":
                attach_to_internet(
                    host, "eth0", wan_ip, f"p-{side}", delay=delay, jitter=cfg.jitter, loss=cfg.loss
                )
                run(["ip", "route", "add", "default", "dev", "eth0"], ns=host)
                self.nodes[side] = Node(host, wan_ip, wan_ip, "none")
                continue
            router = self._ns(f"r{side}")
            attach_to_internet(
                router, "wan", wan_ip, f"p-r{side}", delay=delay, jitter=cfg.jitter, loss=cfg.loss
            )
            lan = LANS[side]
            lan_hosts = [f"{lan}.2"] + ([f"{lan}.3"] if cfg.same_nat else [])
            if cfg.same_nat:
                run(["ip", "link", "add", "lan", "type", "bridge"], ns=router)
                run(["ip", "link", "set", "lan", "up"], ns=router)
            for i, host_ip in enumerate(lan_hosts):
                host_ns = host if i == 0 else self._ns("b")
                dev = "lan" if not cfg.same_nat else f"lan{i}"
                veth(router, dev, host_ns, "eth0")
                if cfg.same_nat:
                    run(["ip", "link", "set", dev, "master", "lan"], ns=router)
                add_address(host_ns, "eth0", f"{host_ip}/24")
                run(["ip", "route", "add", "default", "via", f"{lan}.1"], ns=host_ns)
                name = side if i == 0 else "b"
                self.nodes[name] = Node(host_ns, host_ip, wan_ip, kind, router)
            add_address(router, "lan", f"{lan}.1/24")
            configure_router(
                router,
                kind,
                lan_hosts,
                wan_ip=wan_ip,
                hairpin=cfg.hairpin,
                port_mapping=cfg.port_mapping_for(side),
                stun_servers=(SERVER_IP, SERVER_ALT_IP),
                udp_timeout=cfg.timeout_for(side),
                block_udp=side in cfg.block_udp,
            )
        if cfg.ipv6:
            add_ipv6(self.nodes)
        seed = ["--seed", str(cfg.seed)] if cfg.seed is not None else []
        args = [sys.executable, "-m", "voip.lab.switch", *seed]
        for p in ports:
            args += ["--port", p]
        self.switch = popen(args, ns=inet, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.switch.stdout is not None
        if self.switch.stdout.readline().strip() != "ready":
            err = self.switch.stderr.read() if self.switch.stderr else ""
            raise LabError(f"the lab's switch did not start: {err.strip()}")

    # -- using ----------------------------------------------------------------------------
    def start(self, node: str, args: list[str], **kwargs: object) -> subprocess.Popen[str]:
        """Start a program on a node; the lab stops it at teardown."""
        proc = popen(args, ns=self.nodes[node].ns, **kwargs)
        self.processes.append(proc)
        return proc

    def run(self, node: str, args: list[str], *, check: bool = True) -> str:
        return run(args, ns=self.nodes[node].ns, check=check)

    def start_port_mapping(
        self,
        side: str,
        *,
        stun_port: int = 3478,
        timeout: float = 20.0,
        protocols: Collection[str] = NATPMP_PCP,
        igd_v1: bool = False,
    ) -> PortMapper:
        """Start miniupnpd on `side`'s router (the config must have asked for it) and wait
        until it serves NAT-PMP and PCP on the router's LAN address, port 5351 (or whichever
        of port_mapping.PROTOCOLS `protocols` names: with "upnp", UPnP IGD, SSDP on port 1900
        and HTTP on UPNP_HTTP_PORT; `igd_v1` makes it an IGD:1); the lab stops it at
        teardown. The rendezvous must already be up on SERVER_IP:`stun_port` with its
        alternate address: miniupnpd learns the router's public address by STUN and maps
        ports only once an RFC 5780 test against it says nothing filters what comes in."""
        if not self.config.port_mapping_for(side):
            raise LabError(f"port mapping on {side} is off in this lab's LabConfig")
        if side in self.port_mappers:
            raise LabError(f"port mapping on {side} has already started")
        router = self.nodes[side].router_ns
        assert router is not None  # validate() saw to it
        workdir = Path(tempfile.mkdtemp(prefix=f"{self.tag}miniupnpd-{side}-"))
        self.workdirs.append(workdir)
        mapper = launch_miniupnpd(
            side,
            router,
            workdir,
            gateway=f"{LANS[side]}.1",
            stun=(SERVER_IP, stun_port),
            protocols=protocols,
            igd_v1=igd_v1,
        )
        self.processes.append(mapper.proc)
        try:
            mapper.wait_ready(timeout)
        except LabError:
            mapper.stop()
            raise
        self.port_mappers[side] = mapper
        return mapper

    def start_coturn(
        self,
        secret: str,
        cert: Path | None = None,
        key: Path | None = None,
        *,
        port: int = 3478,
        tls_port: int = 5349,
    ) -> subprocess.Popen[str]:
        """Start coturn on the relay node, on RELAY_IP (and RELAY_IP6 in an IPv6 lab): TURN
        over UDP and TCP on `port`, over TLS on `tls_port` with `cert` and `key` (PEM files)
        when given, REST credentials from `secret`; the lab stops it at teardown. Not beside
        run_lab_call's relay on the same port: that one holds RELAY_IP:3478 too."""
        relay = self.nodes["relay"]
        workdir = Path(tempfile.mkdtemp(prefix=f"{self.tag}coturn-"))
        self.workdirs.append(workdir)
        addresses = [relay.ip, *([relay.ip6] if relay.ip6 else [])]
        args = coturn_args(
            addresses, secret, workdir, cert=cert, key=key, port=port, tls_port=tls_port
        )
        ports = [f"udp:{port}", *([f"tcp:{tls_port}"] if cert else [])]
        proc = launch_coturn(relay.ns, args, workdir, ports)
        self.processes.append(proc)
        return proc

    def baseline(self, legs: list[tuple[str, str]], *probe_args: str) -> list[EchoRtt]:
        """Plain UDP echoes from host to node, all at once, through the same switch and routers
        a call crosses: what the lab itself adds to a path's configured delay. `probe_args`
        go to `python -m voip.lab.echo probe` (--count, --interval, --timeout)."""
        targets = [self._echo_target(src, dst) for src, dst in legs]
        return echo_rtts([self.nodes[src].ns for src, _ in legs], targets, probe_args)

    def _echo_target(self, src: str, dst: str) -> tuple[str, str]:
        """Where an echo for `dst` answers, as seen from `src`: a host on the same LAN answers
        itself; behind another router, the router does (the LAN hop after it is the kernel's)."""
        node = self.nodes[dst]
        if node.router_ns is None or node.router_ns == self.nodes[src].router_ns:
            return node.ns, node.ip
        return node.router_ns, node.public_ip

    def cut(self, side: str, peer_ip: str) -> None:
        """Block everything between `side`'s router and `peer_ip`: a direct path dies, while
        traffic to the rendezvous and the relay goes on."""
        router = self.nodes[side].router_ns
        if router is None:
            raise LabError(f"{side} has no router to cut the path on")
        run(["nft", "-f", "-"], ns=router, input_text=cut_ruleset(peer_ip))

    def restore(self, side: str) -> None:
        router = self.nodes[side].router_ns
        if router is not None:
            run(["nft", "delete", "table", "inet", "lab_cut"], ns=router, check=False)
