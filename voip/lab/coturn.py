"""coturn, the TURN server most of the world runs, started on a lab node (the relay's)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from voip.lab.netns import LabError
from voip.lab.netns import popen
from voip.lab.netns import run
from voip.lab.netns import stop

COTURN_REALM = "lab.callpeer.test"
# Relayed transport addresses come from here: below the kernel's ephemeral range's top, apart
# from the fixed ports the lab uses.
COTURN_MIN_PORT, COTURN_MAX_PORT = 49400, 49999


def coturn_args(
    addresses: Sequence[str],
    secret: str,
    workdir: Path,
    *,
    cert: Path | None,
    key: Path | None,
    port: int,
    tls_port: int,
) -> list[str]:
    """turnserver's command line: REST credentials from `secret` (use-auth-secret, as our
    rendezvous hands out), listening and relaying on `addresses`, TLS with `cert` and `key`."""
    if (cert is None) != (key is None):
        raise LabError("coturn's TLS listener needs both a certificate and its key")
    args = [
        "turnserver",
        "-n",  # no configuration file: the system's /etc/turnserver.conf is not the lab's
        *(f"--listening-ip={ip}" for ip in addresses),
        *(f"--relay-ip={ip}" for ip in addresses),
        f"--listening-port={port}",
        f"--tls-listening-port={tls_port}",
        f"--min-port={COTURN_MIN_PORT}",
        f"--max-port={COTURN_MAX_PORT}",
        "--use-auth-secret",
        f"--static-auth-secret={secret}",
        f"--realm={COTURN_REALM}",
        "--no-cli",
        "--no-dtls",
        # Its files in the lab's working directory, never the system's: concurrent labs'
        # coturns would share /var/run/turnserver.pid and /var/lib/turn/turndb otherwise.
        f"--pidfile={workdir / 'turnserver.pid'}",
        f"--userdb={workdir / 'turndb'}",
        f"--log-file={workdir / 'coturn.log'}",
        "--simple-log",
        "--no-stdout-log",
    ]
    if cert is not None and key is not None:
        args += [f"--cert={cert}", f"--pkey={key}"]
    else:
        args.append("--no-tls")
    return args


def launch_coturn(
    ns: str, args: list[str], workdir: Path, ports: Sequence[str], timeout: float = 10.0
) -> subprocess.Popen[str]:
    """Start turnserver in `ns` and wait until it listens on each of `ports` ("udp:3478",
    "tcp:5349"); LabError, with the end of its log, if it does not."""
    if shutil.which("turnserver") is None:
        raise LabError("coturn is not installed (apt-get install coturn)")
    proc = popen(args, ns=ns, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not all(_listening(ns, spec) for spec in ports):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            log = workdir / "coturn.log"
            tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
            raise LabError(f"coturn did not start listening on {', '.join(ports)}: {tail}")
        time.sleep(0.05)
    return proc


def _listening(ns: str, spec: str) -> bool:
    proto, port = spec.split(":")
    flag = "-lun" if proto == "udp" else "-ltn"
    return bool(run(["ss", "-H", flag, f"sport = :{port}"], ns=ns, check=False).strip())
