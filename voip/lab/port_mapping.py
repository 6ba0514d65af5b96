"""Port mapping on a lab router: Debian's miniupnpd, serving NAT-PMP and PCP to its LAN."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from voip.lab.netns import LabError
from voip.lab.netns import popen
from voip.lab.netns import run
from voip.lab.netns import stop

MINIUPNPD = "/usr/sbin/miniupnpd"  # Debian's miniupnpd-nftables
PCP_PORT = 5351  # NAT-PMP (RFC 6886) and PCP (RFC 6887) share it, on the router's LAN address

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


def miniupnpd_config(
    *, lan_net: str, stun: tuple[str, int], wan_if: str = "wan", lan_if: str = "lan"
) -> str:
    """miniupnpd.conf for a lab router whose LAN is `lan_net` (a /24).

    It refuses a documentation-range address given as ext_ip, so it learns the router's public
    address by STUN from the rendezvous (`stun`), which also tells it (RFC 5780 CHANGE-REQUEST)
    whether what comes in unasked gets through. UPnP IGD is off: NAT-PMP and PCP only."""
    return "\n".join(
        [
            f"ext_ifname={wan_if}",
            f"listening_ip={lan_if}",
            "ext_perform_stun=yes",
            f"ext_stun_host={stun[0]}",
            f"ext_stun_port={stun[1]}",
            "enable_natpmp=yes",  # NAT-PMP and PCP both
            "enable_upnp=no",
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
    """A router's miniupnpd: LAN hosts send NAT-PMP and PCP requests to `gateway`:`port`."""

    side: str
    gateway: str  # the router's LAN address
    proc: subprocess.Popen[str]
    log: Path  # everything miniupnpd logged (it runs in the foreground, debug level)
    port: int = PCP_PORT

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self) -> str:
        # Without its rule-cache chatter, which says nothing about why it failed.
        lines = [line for line in self.log_text().splitlines() if "table_cb(" not in line]
        return "\n".join(lines[-LOG_TAIL:])

    def serving(self) -> bool:
        """Whether miniupnpd's socket is bound to gateway:port. /proc/PID/net/udp lists the
        sockets of the process's network namespace: no `ss` run in the router per poll."""
        ip = int.from_bytes(socket.inet_aton(self.gateway), sys.byteorder)
        local = f"{ip:08X}:{self.port:04X}"
        try:
            table = Path(f"/proc/{self.proc.pid}/net/udp").read_text()
        except OSError:  # exited
            return False
        return any(line.split()[1] == local for line in table.splitlines()[1:])

    def wait_ready(self, timeout: float) -> None:
        """Wait until it serves requests; LabError, with its log, if it exits, takes longer
        than `timeout` s, or serves but will map nothing."""
        where = f"miniupnpd on {self.side}'s router"
        deadline = time.monotonic() + timeout
        while not self.serving():
            if (code := self.proc.poll()) is not None:
                raise LabError(
                    f"{where} exited ({code}) before serving NAT-PMP/PCP; is the rendezvous"
                    f" up for its STUN? Its log:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise LabError(
                    f"{where} did not serve NAT-PMP/PCP on {self.gateway}:{self.port} within"
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


def launch_miniupnpd(
    side: str,
    router_ns: str,
    workdir: Path,
    *,
    gateway: str,
    stun: tuple[str, int],
    wan_if: str = "wan",
    lan_if: str = "lan",
) -> PortMapper:
    """Make miniupnpd's table in `router_ns` and start it there, its config, pid file and log
    in `workdir` (one per router: two labs, or two routers, share no file). Not yet ready:
    see PortMapper.wait_ready."""
    lan_net = gateway.rsplit(".", 1)[0] + ".0/24"
    config = workdir / "miniupnpd.conf"
    config.write_text(miniupnpd_config(lan_net=lan_net, stun=stun, wan_if=wan_if, lan_if=lan_if))
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
    return PortMapper(side, gateway, proc, log)
