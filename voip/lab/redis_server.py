"""A throwaway redis-server for tests and benches (callpeer-rendezvous --redis): no disk, no
other clients, its socket in a directory of ours."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 10.0  # s for redis-server to open its socket


def redis_unavailable_reason() -> str | None:
    """Why no redis-server can be started here, or None."""
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (Debian: apt-get install redis-server)"
    return None


@dataclass
class RedisProcess:
    proc: subprocess.Popen[bytes]
    url: str  # what --redis takes
    socket: Path | None  # its Unix socket, when it listens on one

    def memory_used(self) -> int:
        """used_memory from INFO, in bytes (redis-cli is Debian's redis-tools, a dependency)."""
        where = ["-s", str(self.socket)] if self.socket else ["-u", self.url]
        out = subprocess.run(
            ["redis-cli", *where, "INFO", "memory"], capture_output=True, text=True, check=True
        ).stdout
        for line in out.splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":", 1)[1])
        raise RuntimeError("redis-cli INFO gave no used_memory")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_redis(directory: Path, port: int = 0, host: str = "127.0.0.1") -> RedisProcess:
    """redis-server on a Unix socket in `directory` (port 0), or on host:port over TCP; it
    keeps nothing on disk. RuntimeError if it does not come up."""
    directory.mkdir(parents=True, exist_ok=True)
    sock = directory / "redis.sock" if port == 0 else None
    args = ["redis-server", "--save", "", "--appendonly", "no", "--dir", str(directory)]
    if sock is not None:
        args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
        url = f"unix://{sock}"
    else:
        args += ["--port", str(port), "--bind", host]
        url = f"redis://{host}:{port}/0"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = RedisProcess(proc, url, sock)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"redis-server exited: {err.strip()}")
        try:
            server.memory_used()
            return server
        except (subprocess.CalledProcessError, RuntimeError):
            time.sleep(0.05)
    server.stop()
    raise RuntimeError("redis-server did not open its socket in time")
