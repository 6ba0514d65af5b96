"""Port mapping on a lab router: Debian's miniupnpd, serving NAT-PMP and PCP to its LAN, or UPnP
IGD (SSDP on 239.255.255.250:1900, its description and SOAP control over HTTP), or both."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from voip.lab.netns import LabError
from voip.lab.netns import popen
from voip.lab.netns import run
from voip.lab.netns import stop

MINIUPNPD = "/usr/sbin/miniupnpd"  # Debian's miniupnpd-nftables
PCP_PORT = 5351  # NAT-PMP (RFC 6886) and PCP (RFC 6887) share it, on the router's LAN address
SSDP_PORT = 1900  # UPnP discovery (UDA 1.1 §1), on every address: multicast and unicast M-SEARCH
UPNP_HTTP_PORT = 5000  # where its description and control URLs are (LOCATION says so to clients)

# What a lab router's miniupnpd may serve; one switch turns NAT-PMP and PCP on and off together.
NATPMP_PCP = ("nat-pmp", "pcp")
UPNP = "upnp"
PROTOCOLS = (*NATPMP_PCP, UPNP)

# miniupnpd 2.3 adds its rules to chains it expects to find (its nft_init.sh made them; Debian
# ships that script without the functions file it sources), so the lab makes them: in a table
# of their own, which the router's lab_nat and lab_filter never touch.
TABLE = "miniupnpd"
FORWARD_CHAIN = "forward_miniupnpd"
PREROUTING_CHAIN = "prerouting_miniupnpd"
POSTROUTING_CHAIN = "postrouting_miniupnpd"

# What miniupnpd logs when its STUN test finds the WAN side filtered: it then refuses every
# mapping (NAT-PMP result 3, PCP result 8) while still answering the address request.
FORWARDING_DISABLED = "Port forwarding is now disabled"
LOG_TAIL = 30  # lines of miniupnpd's log quoted in an error


def miniupnpd_unavailable_reason() -> str | None:
    """Why port mapping cannot run here (beyond the lab's own needs), or None when it can."""
    if not os.access(MINIUPNPD, os.X_OK):
        return f"port mapping needs miniupnpd ({MINIUPNPD}): apt-get install miniupnpd-nftables"
    return None


def miniupnpd_ruleset() -> str:
    """The table miniupnpd fills: base chains jumping to its chains, made afresh.

    Its DNAT runs just before the router's own (dstnat - 1): the first NAT a new flow gets is
    the one it keeps, so a mapping wins over a full-cone router's catch-all. Its filter rules
    accept what they map, but an accept here does not overrule lab_filter's drop of new flows
    from the WAN; lab_filter lets DNATed flows through itself (nat.router_ruleset)."""
    chains = f"""
    chain {FORWARD_CHAIN} {{
    }}
    chain {PREROUTING_CHAIN} {{
    }}
    chain {POSTROUTING_CHAIN} {{
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        jump {FORWARD_CHAIN}
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat - 1; policy accept;
        jump {PREROUTING_CHAIN}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat - 1; policy accept;
        jump {POSTROUTING_CHAIN}
    }}"""
    # add + delete first: a second start replaces the table instead of doubling its jumps.
    return f"add table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{{chains}\n}}\n"


def protocol_switches(protocols: Collection[str]) -> tuple[bool, bool]:
    """(natpmp, upnp) for miniupnpd from the names of the protocols a lab router serves;
    LabError for a name it does not know, for NAT-PMP without PCP (or the other way round:
    miniupnpd has one switch for both), or for none at all."""
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise LabError(f"port mapping protocols: {sorted(unknown)} not among {PROTOCOLS}")
    natpmp = all(name in protocols for name in NATPMP_PCP)
    if not natpmp and any(name in protocols for name in NATPMP_PCP):
        raise LabError("miniupnpd serves NAT-PMP and PCP together, or neither")
    upnp = UPNP in protocols
    if not (natpmp or upnp):
        raise LabError("port mapping with no protocol to serve")
    return natpmp, upnp


def miniupnpd_config(
    *,
    lan_net: str,
    stun: tuple[str, int],
    wan_if: str = "wan",
    lan_if: str = "lan",
    natpmp: bool = True,
    upnp: bool = False,
    igd_v1: bool = False,
) -> str:
    """miniupnpd.conf for a lab router whose LAN is `lan_net` (a /24).

    It refuses a documentation-range address given as ext_ip, so it learns the router's public
    address by STUN from the rendezvous (`stun`), which also tells it (RFC 5780 CHANGE-REQUEST)
    whether what comes in unasked gets through. By default UPnP IGD is off: NAT-PMP and PCP
    only. With `upnp`, it also answers SSDP M-SEARCHes from its LAN interface (`listening_ip`,
    which it joins 239.255.255.250 on) and serves its description and SOAP control on
    UPNP_HTTP_PORT there; Debian builds it as an IGD:2 (WANIPConnection:2), which `igd_v1`
    makes it describe as IGD:1 (WANIPConnection:1) instead. `natpmp` off turns NAT-PMP and
    PCP off."""
    switches = [
        "enable_natpmp=yes" if natpmp else "enable_natpmp=no",  # NAT-PMP and PCP both
        "enable_upnp=yes" if upnp else "enable_upnp=no",
    ]
    if upnp:
        switches.append(f"http_port={UPNP_HTTP_PORT}")
    if igd_v1:
        switches.append("force_igd_desc_v1=yes")
    return "\n".join(
        [
            f"ext_ifname={wan_if}",
            f"listening_ip={lan_if}",
            "ext_perform_stun=yes",
            f"ext_stun_host={stun[0]}",
            f"ext_stun_port={stun[1]}",
            *switches,
            "ipv6_disable=yes",  # the lab's links carry no IPv6
            "secure_mode=yes",  # a host maps ports to itself only
            f"uuid={uuid.uuid4()}",
            f"upnp_table_name={TABLE}",
            f"upnp_nat_table_name={TABLE}",
            f"upnp_forward_chain={FORWARD_CHAIN}",
            f"upnp_nat_chain={PREROUTING_CHAIN}",
            f"upnp_nat_postrouting_chain={POSTROUTING_CHAIN}",
            f"allow 1024-65535 {lan_net} 1024-65535",
            "deny 0-65535 0.0.0.0/0 0-65535",
            "",
        ]
    )


@dataclass
class PortMapper:
    """A router's miniupnpd: LAN hosts send NAT-PMP and PCP requests to `gateway`:`port`, and
    (with `upnp`) SSDP M-SEARCHes to 239.255.255.250:1900 or `gateway`:1900, then HTTP to
    `gateway`:`http_port`."""

    side: str
    gateway: str  # the router's LAN address
    proc: subprocess.Popen[str]
    log: Path  # everything miniupnpd logged (it runs in the foreground, debug level)
    router: str  # the router's network namespace
    port: int = PCP_PORT
    natpmp: bool = True  # serves NAT-PMP and PCP
    upnp: bool = False  # serves UPnP IGD
    http_port: int = UPNP_HTTP_PORT

    @property
    def serves(self) -> str:
        return " and ".join(
            name for name, on in (("NAT-PMP/PCP", self.natpmp), ("UPnP IGD", self.upnp)) if on
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self) -> str:
        # Without its rule-cache chatter, which says nothing about why it failed.
        lines = [line for line in self.log_text().splitlines() if "table_cb(" not in line]
        return "\n".join(lines[-LOG_TAIL:])

    def held(self) -> int:
        """How many ports miniupnpd maps now: the DNAT rules in its prerouting chain."""
        rules = run(["nft", "list", "chain", "inet", TABLE, PREROUTING_CHAIN], ns=self.router)
        return sum(" dnat " in f" {line} " for line in rules.splitlines())

    def serving(self) -> bool:
        """Whether miniupnpd's sockets are bound: UDP gateway:port for NAT-PMP and PCP; for
        UPnP, UDP port 1900 and TCP http_port listening (on any address: it binds both to the
        LAN interface rather than to its address).
        /proc/PID/net/* list the sockets of the process's network namespace: no `ss` run in
        the router per poll."""
        ip = int.from_bytes(socket.inet_aton(self.gateway), sys.byteorder)
        try:
            udp = _local_addresses(Path(f"/proc/{self.proc.pid}/net/udp"))
            tcp = _local_addresses(Path(f"/proc/{self.proc.pid}/net/tcp"), listening=True)
        except OSError:  # exited
            return False
        if self.natpmp and f"{ip:08X}:{self.port:04X}" not in udp:
            return False
        if self.upnp:
            return _port_in(SSDP_PORT, udp) and _port_in(self.http_port, tcp)
        return True

    def wait_ready(self, timeout: float) -> None:
        """Wait until it serves requests; LabError, with its log, if it exits, takes longer
        than `timeout` s, or serves but will map nothing."""
        where = f"miniupnpd on {self.side}'s router"
        deadline = time.monotonic() + timeout
        while not self.serving():
            if (code := self.proc.poll()) is not None:
                raise LabError(
                    f"{where} exited ({code}) before serving {self.serves}; is the rendezvous"
                    f" up for its STUN? Its log:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                at = f"{self.gateway}:{self.port}" if self.natpmp else self.gateway
                raise LabError(
                    f"{where} did not serve {self.serves} on {at} within"
                    f" {timeout:g} s. Its log:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        # It binds the port only after its STUN test, so the verdict is in the log by now.
        if FORWARDING_DISABLED in self.log_text():
            raise LabError(
                f"{where} will map no ports: its STUN test did not get all four answers"
                " through the router (is the rendezvous up, with --alt-address?). Its log:\n"
                f"{self.log_tail()}"
            )

    def stop(self) -> None:
        stop(self.proc)


def _port_in(port: int, locals_: set[str]) -> bool:
    return any(local.endswith(f":{port:04X}") for local in locals_)


def _local_addresses(table: Path, *, listening: bool = False) -> set[str]:
    """The local addresses (hex ADDR:PORT) in a /proc/net/{udp,tcp} table; with `listening`,
    of TCP sockets in LISTEN (state 0A) only."""
    rows = [line.split() for line in table.read_text().splitlines()[1:]]
    return {row[1] for row in rows if len(row) > 3 and (not listening or row[3] == "0A")}


def launch_miniupnpd(
    side: str,
    router_ns: str,
    workdir: Path,
    *,
    gateway: str,
    stun: tuple[str, int],
    wan_if: str = "wan",
    lan_if: str = "lan",
    protocols: Collection[str] = NATPMP_PCP,
    igd_v1: bool = False,
) -> PortMapper:
    """Make miniupnpd's table in `router_ns` and start it there, its config, pid file and log
    in `workdir` (one per router: two labs, or two routers, share no file), serving
    `protocols` (see PROTOCOLS; `igd_v1`: see miniupnpd_config). Not yet ready: see
    PortMapper.wait_ready."""
    natpmp, upnp = protocol_switches(protocols)
    lan_net = gateway.rsplit(".", 1)[0] + ".0/24"
    config = workdir / "miniupnpd.conf"
    config.write_text(
        miniupnpd_config(
            lan_net=lan_net,
            stun=stun,
            wan_if=wan_if,
            lan_if=lan_if,
            natpmp=natpmp,
            upnp=upnp,
            igd_v1=igd_v1,
        )
    )
    run(["nft", "-f", "-"], ns=router_ns, input_text=miniupnpd_ruleset())
    log = workdir / "miniupnpd.log"
    with log.open("w") as out:  # the child keeps its own descriptor
        proc = popen(
            # -d: in the foreground (the lab stops it), logging to stderr
            [MINIUPNPD, "-d", "-f", str(config), "-P", str(workdir / "miniupnpd.pid")],
            ns=router_ns,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return PortMapper(side, gateway, proc, log, router_ns, natpmp=natpmp, upnp=upnp)
