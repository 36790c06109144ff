"""Run the benchmark suite: ``python bench/run.py [--quick] [--duration S] [--out bench/results]``.

Starts a direct_response Envoy as the upstream, then for each case an Envoy under test (and the
case's ext_proc server), drives it with wrk (peak) and h2load (half the peak rate), and writes
results.json, results.md and results.png. ``--profile`` also records a py-spy profile of the
one-header-plugin case. See docs/performance.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, so the repo root (for `bench`, `tests` and `extproc`) is not on the path yet.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

from bench import envoy_configs, loadgen, noop_server, procstat, profile, report  # noqa: E402
from bench.cases import CASES, MEMORY_CASE, PROFILE_CASE, Case, Kind, server_config  # noqa: E402
from bench.envoy_configs import CallRecord, ProxyFilter, proxy_bootstrap, upstream_bootstrap  # noqa: E402
from bench.loadgen import LoadError, LoadResult  # noqa: E402
from bench.noop_server import BENCH_PACKAGES  # noqa: E402
from bench.report import CaseResult, MemoryResult, RateRun, Status  # noqa: E402
from tests.e2e.harness import (  # noqa: E402
    ManagedProcess,
    default_server_cmd,
    envoy_argv,
    envoy_binary,
    free_port,
    wait_for_http_ready,
    wait_for_port,
    wait_until,
)

# mypy takes tests/plugins/build/ (the output folder) for a namespace package; Python imports build.py.
from tests.plugins.build import ensure_built  # type: ignore[attr-defined]  # noqa: E402

NOOP_SERVER = Path(__file__).resolve().with_name("noop_server.py")
STARTUP_TIMEOUT_S = 60.0
CONNECTIONS = 16
# A set rate above this share of a case's peak would measure queueing, not cost: not run.
RATE_HEADROOM = 0.8
MB = 1024 * 1024
_PROXY_FILTER = {Kind.ENVOY: ProxyFilter.NONE, Kind.LUA: ProxyFilter.LUA}
_OURS = "bench"


@dataclass(frozen=True)
class Settings:
    duration_s: float
    warmup_s: float
    memory_requests: int
    out: Path
    work: Path
    plugin_dir: Path
    workers_flag: bool  # whether `extproc serve` has --workers
    rates: tuple[float, ...] = ()  # --rates: extra paced runs, the same rates for every case
    noop_timings: bool = False  # --noop-timings: the sync no-op times its streams in the half-peak run


@dataclass(frozen=True)
class Running:
    url: str
    envoy: ManagedProcess
    server: ManagedProcess | None
    call_log: Path | None  # Envoy's log of ext_proc call latencies, when the case has the filter
    timings: Path | None = None  # where the sync no-op writes its stream timings (--noop-timings)


class CaseUnavailable(Exception):
    """The case needs something this checkout does not have."""


# --- setup -----------------------------------------------------------------------------


def _pip_install(package: str, present: bool) -> None:
    # Bench-only tools: installed here, on first use, never as project dependencies.
    if not present:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)


def _has_workers_flag() -> bool:
    proc = subprocess.run(
        [sys.executable, "-m", "extproc", "serve", "--help"], capture_output=True, text=True, cwd=REPO_ROOT, check=False
    )
    return "--workers" in proc.stdout


def _write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextlib.contextmanager
def _envoy(name: str, bootstrap: dict[str, Any], work: Path, listen_port: int) -> Iterator[ManagedProcess]:
    path = _write_yaml(work / f"{name}.yaml", bootstrap)
    with ManagedProcess(name, envoy_argv(path), work / f"{name}.log") as proc:
        admin = bootstrap["admin"]["address"]["socket_address"]["port_value"]
        wait_for_http_ready(f"http://127.0.0.1:{admin}/ready", STARTUP_TIMEOUT_S, process=proc)
        wait_for_port("127.0.0.1", listen_port, STARTUP_TIMEOUT_S, process=proc)
        yield proc


def _timings_path(case: Case, settings: Settings) -> Path | None:
    if settings.noop_timings and case.kind is Kind.NOOP and case.noop_stack == "sync":
        return settings.work / case.name / "stream-timings.txt"
    return None


def _server_argv(case: Case, settings: Settings, port: int) -> list[str] | None:
    if case.kind is Kind.NOOP:
        argv = [sys.executable, str(NOOP_SERVER), "--port", str(port), "--stack", case.noop_stack]
        timings = _timings_path(case, settings)
        return argv if timings is None else [*argv, "--timings", str(timings)]
    if case.kind is not Kind.SERVER:
        return None
    if case.workers is not None and not settings.workers_flag:
        raise CaseUnavailable("`extproc serve --help` lists no --workers")
    config = _write_yaml(settings.work / case.name / "extproc.yaml", server_config(case.plugins, settings.plugin_dir))
    argv = default_server_cmd(config, port)
    if case.workers is not None:
        argv += ["--workers", str(case.workers)]
    return argv


def _consecutive_free_ports(count: int, attempts: int = 50) -> int:
    """The first of ``count`` consecutive free loopback ports (``--workers N`` takes port .. port+N-1)."""
    for _ in range(attempts):
        first = free_port()
        try:
            for port in range(first, first + count):
                socket.create_server(("127.0.0.1", port)).close()
        except OSError:
            continue
        return first
    raise RuntimeError(f"found no {count} consecutive free ports in {attempts} attempts")


@contextlib.contextmanager
def _stack(case: Case, settings: Settings, upstream_port: int) -> Iterator[Running]:
    work = settings.work / case.name
    work.mkdir(parents=True, exist_ok=True)
    workers = case.workers or 1
    extproc_port, listen_port = _consecutive_free_ports(workers), free_port()
    server_argv = _server_argv(case, settings, extproc_port)
    with contextlib.ExitStack() as processes:
        server = None
        if server_argv is not None:
            env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
            server = ManagedProcess(case.name, server_argv, work / "server.log", env=env, cwd=REPO_ROOT)
            processes.enter_context(server)
            for port in range(extproc_port, extproc_port + workers):
                wait_for_port("127.0.0.1", port, STARTUP_TIMEOUT_S, process=server)
        proxy_filter = _PROXY_FILTER.get(case.kind, ProxyFilter.EXT_PROC)
        call_log = work / "extproc-calls.log" if proxy_filter is ProxyFilter.EXT_PROC else None
        bootstrap = proxy_bootstrap(
            proxy_filter=proxy_filter,
            listen_port=listen_port,
            admin_port=free_port(),
            upstream_port=upstream_port,
            extproc_port=extproc_port,
            extproc_workers=workers,
            per_route_disabled_prefixes=case.bypass_prefixes,
            call_log=call_log,
        )
        # Entered last, so stopped first: Envoy never sees the server vanish under live streams.
        envoy = processes.enter_context(_envoy("envoy", bootstrap, work, listen_port))
        yield Running(f"http://127.0.0.1:{listen_port}", envoy, server, call_log, _timings_path(case, settings))


# --- measuring -------------------------------------------------------------------------


def _pid(process: ManagedProcess) -> int:
    if process.pid is None:
        raise RuntimeError(f"{process.name} was never started")
    return process.pid


class _CpuWindow:
    """CPU seconds each process tree used between start() and stop(), and how busy the rest of
    the machine was meanwhile (other people's work on a shared machine skews every number)."""

    def __init__(self, processes: dict[str, ManagedProcess | None]) -> None:
        self._pids = {name: _pid(p) for name, p in processes.items() if p is not None}
        # This process's tree: the bench, the processes under test and the reaped load generators.
        self._pids[_OURS] = os.getpid()
        self._start: dict[str, float] = {}
        self._start_busy = self._start_wall = 0.0
        self._start_switches = 0
        self.used: dict[str, float] = {}
        self.other_load_pct = 0.0
        self.server_switches: int | None = None

    def _now(self) -> tuple[dict[str, float], float, float]:
        used = {name: procstat.tree_cpu_seconds(pid) for name, pid in self._pids.items()}
        return used, procstat.machine_busy_seconds(), time.monotonic()

    def _server_switches(self) -> int:
        server = self._pids.get("server")
        return procstat.tree_context_switches(server) if server is not None else 0

    def start(self) -> None:
        self._start_switches = self._server_switches()
        self._start, self._start_busy, self._start_wall = self._now()

    def stop(self) -> None:
        end, busy, wall = self._now()
        if "server" in self._pids:
            self.server_switches = self._server_switches() - self._start_switches
        self.used = {name: end[name] - self._start[name] for name in self._pids}
        foreign = (busy - self._start_busy) - self.used[_OURS]
        self.other_load_pct = max(0.0, 100 * foreign / ((wall - self._start_wall) * (os.cpu_count() or 1)))

    def per_request_us(self, name: str, requests: int) -> float | None:
        return self.used[name] / requests * 1e6 if name in self.used and requests else None

    def server_switches_per_request(self, requests: int) -> float | None:
        return self.server_switches / requests if self.server_switches is not None and requests else None


def _check(result: LoadResult, what: str, running: Running) -> None:
    if result.errors:
        server_log = running.server.log_text()[-3000:] if running.server is not None else ""
        raise LoadError(
            f"{what}: {result.errors} of {result.requests} requests failed\n"
            f"--- server log (tail) ---\n{server_log}\n--- Envoy log (tail) ---\n{running.envoy.log_text()[-3000:]}"
        )


def _measure(case: Case, settings: Settings, running: Running, upstream: ManagedProcess) -> CaseResult:
    work = settings.work / case.name
    # Warm-up: connections to the server and upstream, plugin instance pools grown to the load.
    loadgen.run_wrk(running.url, case.load, duration_s=settings.warmup_s, connections=CONNECTIONS, work_dir=work)
    window = _CpuWindow({"envoy": running.envoy, "server": running.server, "upstream": upstream})
    window.start()
    peak = loadgen.run_wrk(
        running.url, case.load, duration_s=settings.duration_s, connections=CONNECTIONS, work_dir=work
    )
    window.stop()
    _check(peak, "peak run (wrk)", running)
    rss = None
    if running.server is not None:
        rss = max(procstat.tree_rss_bytes(_pid(running.server)).values()) / MB

    half_started = time.time()
    with _stream_timings(running):
        half = _paced_run(case, settings, running, peak.rps / 2)
    half_ended = time.time()
    calls = _logged_calls(running, half.result, half_started, half_ended)
    spans = _handler_spans(running, calls)
    at_rates = tuple(
        _paced_run(case, settings, running, rate) for rate in settings.rates if rate <= RATE_HEADROOM * peak.rps
    )
    return CaseResult(
        name=case.name,
        title=case.title,
        status=Status.OK,
        peak=peak,
        envoy_cpu_us=window.per_request_us("envoy", peak.requests),
        server_cpu_us=window.per_request_us("server", peak.requests),
        upstream_cpu_us=window.per_request_us("upstream", peak.requests),
        server_rss_mb=rss,
        server_switches=window.server_switches_per_request(peak.requests),
        half=half.result,
        half_envoy_cpu_us=half.envoy_cpu_us,
        half_server_cpu_us=half.server_cpu_us,
        half_call_p99_us=_call_p99_us(calls),
        half_handler_spans=spans,
        body_bytes=case.body_bytes,
        at_rates=at_rates,
        other_load_pct=max(window.other_load_pct, half.other_load_pct, *(run.other_load_pct for run in at_rates)),
    )


def _server(running: Running) -> ManagedProcess:
    if running.server is None:
        raise RuntimeError("this case has no ext_proc server")
    return running.server


@contextlib.contextmanager
def _stream_timings(running: Running) -> Iterator[None]:
    """With --noop-timings, the no-op records its streams' moments while the block runs."""
    timings = running.timings
    if timings is None:
        yield
        return
    pid = _pid(_server(running))
    os.kill(pid, signal.SIGUSR1)
    marker = noop_server.recording_marker(timings)
    wait_until(marker.exists, 10.0, f"the no-op to start timing streams ({marker})")
    yield
    os.kill(pid, signal.SIGUSR2)
    wait_until(timings.exists, 10.0, f"the no-op's stream timings in {timings}")


def _handler_spans(running: Running, calls: list[CallRecord]) -> dict[str, tuple[float, float]] | None:
    """p50 and p99 (us) of each span the no-op timed, if it timed them, with the spans before and
    after it from Envoy's log line of the same request."""
    if running.timings is None:
        return None
    by_request = {call.request_id: (call.started_s, call.latency_us) for call in calls if call.latency_us is not None}
    spans = noop_server.spans(noop_server.read_timings(running.timings.read_text()), by_request)
    return {
        name: (loadgen.percentile(sorted(values), 0.5), loadgen.percentile(sorted(values), 0.99))
        for name, values in spans.items()
        if values
    }


def _paced_run(case: Case, settings: Settings, running: Running, rate: float) -> RateRun:
    """wrk paced to ``rate``, half as long as the peak run: enough samples for a p99, and it keeps a
    full run near 10 minutes."""
    window = _CpuWindow({"envoy": running.envoy, "server": running.server})
    window.start()
    result = loadgen.run_wrk(
        running.url,
        case.load,
        duration_s=settings.duration_s / 2,
        connections=CONNECTIONS,
        work_dir=settings.work / case.name,
        rate=rate,
    )
    window.stop()
    _check(result, f"run paced to {rate:,.0f} req/s (wrk)", running)
    return RateRun(
        rate=rate,
        result=result,
        envoy_cpu_us=window.per_request_us("envoy", result.requests),
        server_cpu_us=window.per_request_us("server", result.requests),
        server_switches=window.server_switches_per_request(result.requests),
        other_load_pct=window.other_load_pct,
    )


def _logged_calls(running: Running, result: LoadResult, start: float, end: float) -> list[CallRecord]:
    """Envoy's call log lines of the requests of a run in [start, end) (none without the filter)."""
    log_path = running.call_log
    if log_path is None:
        return []

    def logged() -> list[CallRecord]:
        return envoy_configs.parse_call_log(log_path.read_text() if log_path.exists() else "", start, end)

    # Envoy writes its access log out every 50 ms (envoy_argv); every request wrk counted gets a line.
    wait_until(lambda: len(logged()) >= result.requests, 10.0, "Envoy's ext_proc call log")
    return logged()


def _call_p99_us(calls: list[CallRecord]) -> float | None:
    """p99 of the ext_proc call as Envoy timed it."""
    called = sorted(float(call.latency_us) for call in calls if call.latency_us is not None)
    return loadgen.percentile(called, 0.99) if called else None


def run_case(case: Case, settings: Settings, upstream_port: int, upstream: ManagedProcess) -> CaseResult:
    started = time.monotonic()
    try:
        with _stack(case, settings, upstream_port) as running:
            result = _measure(case, settings, running, upstream)
    except CaseUnavailable as exc:
        result = CaseResult(case.name, case.title, Status.UNAVAILABLE, str(exc))
    except Exception as exc:
        # One broken case must not cost the numbers of the others; the error lands in the table.
        result = CaseResult(case.name, case.title, Status.ERROR, f"{type(exc).__name__}: {exc}")
    print(f"  {case.name}: {_summary(result)} ({time.monotonic() - started:.0f}s)", flush=True)
    return result


def _summary(result: CaseResult) -> str:
    if result.peak is None:
        return f"{result.status.value}: {result.detail.splitlines()[0] if result.detail else ''}"
    server = f", server {result.server_cpu_us:.0f} us/req" if result.server_cpu_us is not None else ""
    return f"{result.peak.rps:,.0f} req/s, Envoy {result.envoy_cpu_us or 0:.0f} us/req{server}"


def run_memory(settings: Settings, upstream_port: int) -> MemoryResult:
    """Five plugins under load: RSS of each server process after warm-up and after N requests."""
    case = MEMORY_CASE
    with _stack(case, settings, upstream_port) as running:
        assert running.server is not None
        root = _pid(running.server)
        work = settings.work / case.name
        warm = loadgen.run_h2load(
            running.url,
            case.load,
            requests=max(1000, settings.memory_requests // 10),
            connections=CONNECTIONS,
            work_dir=work,
        )
        _check(warm, "memory warm-up (h2load)", running)
        before = {pid: rss / MB for pid, rss in procstat.tree_rss_bytes(root).items()}
        peak_mb = 0.0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak_mb
            while not done.wait(0.25):
                peak_mb = max(peak_mb, *(rss / MB for rss in procstat.tree_rss_bytes(root).values()))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result = loadgen.run_h2load(
                running.url, case.load, requests=settings.memory_requests, connections=CONNECTIONS, work_dir=work
            )
        finally:
            done.set()
            sampler.join()
        _check(result, "memory run (h2load)", running)
        after = {pid: rss / MB for pid, rss in procstat.tree_rss_bytes(root).items()}
    return MemoryResult(settings.memory_requests, before, after, max(peak_mb, *after.values()), result)


# --- machine and output ----------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    except OSError as exc:
        return f"unavailable ({exc})"
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    if not lines:
        return "unknown"
    # `envoy --version` ends with "<binary path>  version: <sha>/<version>/..."; wrk -v and
    # h2load --version start with their version line.
    return lines[-1].split("version:")[-1].strip() if argv[0] == "envoy" else lines[0].strip()


def machine() -> dict[str, str]:
    from importlib.metadata import version

    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": version("grpcio"),
        "extism": version("extism"),
        "protobuf": version("protobuf"),
        "envoy": _first_line([envoy_binary(), "--version"]),
        "wrk": _first_line(["wrk", "-v"]),
        "h2load": _first_line(["h2load", "--version"]),
        "commit": _first_line(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"]),
    }


def _header(info: dict[str, str], settings: Settings, command: str) -> str:
    facts = ", ".join(f"{key} {value}" for key, value in info.items())
    return (
        f"# Bench results\n\n{facts}\n\nCommand: `{command}`; {settings.duration_s:g} s per run, "
        f"{CONNECTIONS} connections, Envoy --concurrency 1.\n"
    )


def write_outputs(
    settings: Settings,
    info: dict[str, str],
    results: list[CaseResult],
    memory: MemoryResult | None,
    command: str,
) -> None:
    found = report.targets({r.name: r for r in results}, memory)
    data = {
        "machine": info,
        "settings": {"duration_s": settings.duration_s, "connections": CONNECTIONS, "command": command},
        "cases": [dataclasses.asdict(r) | {"rps": r.rps, "body_mb_per_s": r.body_mb_per_s} for r in results],
        "memory": None if memory is None else dataclasses.asdict(memory) | {"growth": memory.growth},
        "targets": [dataclasses.asdict(t) | {"verdict": t.verdict.value} for t in found],
    }
    settings.out.mkdir(parents=True, exist_ok=True)
    (settings.out / "results.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    text = report.markdown(results, found, memory, _header(info, settings, command))
    (settings.out / "results.md").write_text(text)
    report.plot(results, settings.out / "results.png")


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(rate) for rate in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if any(rate <= 0 for rate in rates):
        raise argparse.ArgumentTypeError(f"rates must be positive: {text!r}")
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs, for smoke checking")
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 10, 2 with --quick)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--cases", help=f"comma-separated subset of: {', '.join(c.name for c in CASES)}")
    parser.add_argument("--no-memory", action="store_true", help="skip the five-plugin memory run")
    parser.add_argument("--profile", action="store_true", help=f"also py-spy profile the {PROFILE_CASE!r} case")
    parser.add_argument(
        "--rates",
        type=_rates,
        default=(),
        help="comma-separated request rates: every case also runs paced to each (if under 80%% of its peak)",
    )
    parser.add_argument(
        "--noop-timings",
        action="store_true",
        help="the grpcio no-op times each stream inside its handler during the half-peak run",
    )
    args = parser.parse_args(argv)

    cases = list(CASES)
    if args.cases:
        wanted = args.cases.split(",")
        unknown = set(wanted) - {c.name for c in CASES}
        if unknown:
            parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
        cases = [c for c in CASES if c.name in wanted]

    loadgen.ensure_tools()
    _pip_install("matplotlib", importlib.util.find_spec("matplotlib") is not None)
    for package in sorted({package for case in cases for package in BENCH_PACKAGES[case.noop_stack]}):
        _pip_install(package, importlib.util.find_spec(package) is not None)
    if args.profile:
        _pip_install("py-spy", profile.py_spy_path() is not None)
    out: Path = args.out.resolve()
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    settings = Settings(
        duration_s=args.duration or (2.0 if args.quick else 10.0),
        warmup_s=1.0 if args.quick else 2.0,
        memory_requests=10_000 if args.quick else 100_000,
        out=out,
        work=work,
        plugin_dir=ensure_built(),
        workers_flag=_has_workers_flag(),
        rates=args.rates,
        noop_timings=args.noop_timings,
    )
    command = "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    info = machine()
    print(f"bench: {len(cases)} case(s), {settings.duration_s:g}s per run; work files in {work}", flush=True)

    upstream_port = free_port()
    bootstrap = upstream_bootstrap(listen_port=upstream_port, admin_port=free_port())
    with _envoy("upstream", bootstrap, work, upstream_port) as upstream:
        results = [run_case(case, settings, upstream_port, upstream) for case in cases]
        memory = None
        if not args.no_memory:
            print(f"  memory: {settings.memory_requests:,} requests with 5 plugins ...", flush=True)
            memory = run_memory(settings, upstream_port)
            print(f"  {report.memory_section(memory).strip()}", flush=True)
        if args.profile:
            case = next(c for c in CASES if c.name == PROFILE_CASE)
            with _stack(case, settings, upstream_port) as running:
                assert running.server is not None
                profile.record(running.url, case.load, _pid(running.server), settings.duration_s, out, work)
    write_outputs(settings, info, results, memory, command)
    print((out / "results.md").read_text())
    print(f"bench: wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'}")
    failed = [r.name for r in results if r.status is Status.ERROR]
    if failed:
        print(f"bench: cases failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
