"""The lab's network namespaces and veth links (iproute2, ethtool), and a crashed lab's leftovers.

Lab namespace names start with PREFIX and the PID of the process that made them, so concurrent
labs never collide and a later lab can tell a crashed one's leftovers and remove them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from voip.lab.netns import list_namespaces
from voip.lab.netns import namespace_pids
from voip.lab.netns import run

PREFIX = "cplab-"


def veth(ns1: str, if1: str, ns2: str, if2: str) -> None:
    """A veth pair joining `ns1`'s `if1` to `ns2`'s `if2`, both ends up."""
    run(
        [
            "ip",
            "link",
            "add",
            "name",
            if1,
            "netns",
            ns1,
            "type",
            "veth",
            "peer",
            "name",
            if2,
            "netns",
            ns2,
        ]
    )
    for ns, dev in ((ns1, if1), (ns2, if2)):
        # veth hands partially checksummed UDP to raw sockets; forwarded as they are, the
        # receiver would drop them. Software checksums on every lab link.
        run(["ethtool", "-K", dev, "tx", "off"], ns=ns)
        run(["ip", "link", "set", dev, "up"], ns=ns)


def add_address(ns: str, dev: str, cidr: str) -> None:
    run(["ip", "addr", "add", cidr, "dev", dev], ns=ns)


def delete_namespace(ns: str) -> None:
    """Kill what still runs in `ns`, then delete it."""
    for pid in namespace_pids(ns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    run(["ip", "netns", "delete", ns], check=False)


def remove_leftovers() -> list[str]:
    """Delete lab namespaces whose creating process is gone (a crashed or killed run), and
    that run's working directories (miniupnpd's, coturn's); return the namespaces' names."""
    removed = []
    for ns in list_namespaces():
        if not ns.startswith(PREFIX) or _owner_alive(ns):
            continue
        delete_namespace(ns)
        removed.append(ns)
    for program in ("miniupnpd", "coturn"):
        for workdir in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-{program}-*"):
            if workdir.is_dir() and not _owner_alive(workdir.name):
                shutil.rmtree(workdir, ignore_errors=True)
    return removed


def _owner_alive(name: str) -> bool:
    """Whether the process whose PID a lab name carries (after PREFIX) still runs."""
    pid_text = name[len(PREFIX) :].split("-", 1)[0]
    return pid_text.isdigit() and _alive(int(pid_text))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
