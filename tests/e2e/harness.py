"""The end-to-end tests' stack and HTTP client.

The echo upstream and an ext_proc server behind Envoy, started on loopback ports (with the process
helpers of support.processes) and stopped again, also when a test fails; on failure the captured
process logs are printed so pytest shows them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import sys
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from support.bootstrap import render_bootstrap
from support.envoy import envoy_argv, envoy_stats
from support.processes import (
    POLL_INTERVAL_S,
    REPO_ROOT,
    ManagedProcess,
    ServerCommand,
    default_server_cmd,
    free_port,
    server_env,
    wait_for_http_ready,
    wait_for_port,
    wait_until,
)

UPSTREAM_SCRIPT = Path(__file__).resolve().with_name("upstream.py")


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
        return envoy_stats(self.admin_url, prefix)

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
            time.sleep(POLL_INTERVAL_S)

    def wait_for_server_log(self, text: str, timeout: float = 10.0) -> str:
        """Poll the server's log until it contains ``text``; return the log."""
        wait_until(lambda: text in self.server_log(), timeout, f"{text!r} in the server log")
        return self.server_log()

    def dump_logs(self) -> str:
        return (
            f"--- ext_proc server log ({self.server.log_path}) ---\n{self.server_log()}\n"
            f"--- Envoy log ({self.envoy.log_path}) ---\n{self.envoy_log()}\n"
        )


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
        env=server_env(),
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
