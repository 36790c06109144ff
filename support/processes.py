"""Child processes on loopback ports: start them with their output in a log file, wait until they serve,
and stop them again, also when the caller fails."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[1]

# Interval between readiness probes; it bounds how late we notice readiness, the
# deadline bounds how long we wait in total.
POLL_INTERVAL_S = 0.05
_STOP_TIMEOUT_S = 10.0

# (config path, port) -> argv of the ext_proc server.
ServerCommand = Callable[[Path, int], Sequence[str]]


def default_server_cmd(config_path: Path, port: int) -> list[str]:
    """The real server: ``python -m extproc serve``."""
    return [
        sys.executable,
        "-m",
        "extproc",
        "serve",
        "--config",
        str(config_path),
        "--listen",
        f"127.0.0.1:{port}",
    ]


def server_env() -> dict[str, str]:
    """The environment of a server started from this checkout."""
    # The project is used from its checkout (not necessarily pip-installed), so make
    # `python -m extproc` importable regardless of the working directory.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def free_port() -> int:
    """A currently unused loopback port (the OS may hand it out again, so bind soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ProcessExited(RuntimeError):
    """A managed process died while we were waiting for it to become ready."""


class ManagedProcess:
    """A child process whose stdout+stderr go to a log file.

    As a context manager it starts the process on entry and on exit sends SIGTERM,
    then SIGKILL if it has not exited within the stop timeout.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._env = dict(env) if env is not None else None
        self._cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        try:
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self._env,
                cwd=self._cwd,
                # Own process group, so a Ctrl-C aimed at pytest does not race our shutdown.
                start_new_session=True,
            )
        except BaseException:
            self._log.close()
            self._log = None
            raise

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ManagedProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit on its own; its exit code."""
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._proc.wait(timeout=timeout)

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def check_running(self) -> None:
        """Raise :class:`ProcessExited` (with the log) if the process has exited."""
        if not self.is_running():
            raise ProcessExited(
                f"{self.name} exited with code {self.returncode}\n"
                f"argv: {self.argv}\n--- {self.name} log ---\n{self.log_text()}"
            )


def _check_alive(process: ManagedProcess | None) -> None:
    if process is not None:
        process.check_running()


def wait_for_port(host: str, port: int, timeout: float, *, process: ManagedProcess | None = None) -> None:
    """Block until a TCP connect to host:port succeeds; fail fast if ``process`` died."""
    deadline = time.monotonic() + timeout
    while True:
        _check_alive(process)
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{host}:{port} not accepting connections after {timeout}s: {err}") from err
        time.sleep(POLL_INTERVAL_S)


def http_get(url: str, timeout: float = 30.0) -> tuple[int, str]:
    """Status and body text of GET ``url``, whatever the status; OSError when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status: int = resp.status
            return status, resp.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", errors="replace")


def wait_for_http_ready(url: str, timeout: float, *, process: ManagedProcess | None = None) -> None:
    """Block until GET ``url`` answers 200; fail fast if ``process`` died."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while True:
        _check_alive(process)
        try:
            status, _ = http_get(url, timeout=1.0)
            if status == 200:
                return
            # Envoy's /ready answers 503 while still initializing.
            last = f"status {status}"
        except OSError as err:
            last = str(err)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} not ready after {timeout}s: {last}")
        time.sleep(POLL_INTERVAL_S)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; for states that have no port or event to wait on."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout}s")
        time.sleep(POLL_INTERVAL_S)
