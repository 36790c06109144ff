"""Run the benchmark suite: ``python -m bench.run [--quick] [--duration S] [--out bench/results]``.

Starts a direct_response Envoy as the upstream, then for each case an Envoy under test (and the
case's ext_proc server), drives it with wrk (peak, then paced to half the peak), and writes
results.json, results.md and, with matplotlib installed, results.png. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import envoy_configs, loadgen, procstat, report
from bench.cases import CASES, MEMORY_CASE, Case, Kind, server_config, write_config
from bench.envoy_configs import CallRecord, ProxyFilter, proxy_bootstrap, upstream_bootstrap
from bench.loadgen import LoadError, LoadResult
from bench.report import CaseResult, MemoryResult, RateRun, Status
from support.envoy import envoy_binary, running_envoy
from support.plugins import ensure_built
from support.processes import REPO_ROOT, ManagedProcess, default_server_cmd, free_port, wait_for_port, wait_until

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


@dataclass(frozen=True)
class Running:
    url: str
    envoy: ManagedProcess
    server: ManagedProcess | None
    call_log: Path | None  # Envoy's log of ext_proc call latencies, when the case has the filter


class CaseUnavailable(Exception):
    """The case needs something this checkout does not have."""


# --- setup -----------------------------------------------------------------------------


def _has_workers_flag() -> bool:
    proc = subprocess.run(
        [sys.executable, "-m", "extproc", "serve", "--help"], capture_output=True, text=True, cwd=REPO_ROOT, check=False
    )
    return "--workers" in proc.stdout


def _server_argv(case: Case, settings: Settings, port: int) -> list[str] | None:
    if case.kind is Kind.NOOP:
        return case.noop_argv(port)
    if case.kind is not Kind.SERVER:
        return None
    if case.workers is not None and not settings.workers_flag:
        raise CaseUnavailable("`extproc serve --help` lists no --workers")
    config = write_config(settings.work / case.name / "extproc.yaml", server_config(case.plugins, settings.plugin_dir))
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
def upstream(work: Path) -> Iterator[tuple[int, ManagedProcess]]:
    """The direct_response upstream Envoy every case's Envoy forwards to: its port and process."""
    port = free_port()
    bootstrap = upstream_bootstrap(listen_port=port, admin_port=free_port())
    with running_envoy("upstream", bootstrap, work, STARTUP_TIMEOUT_S) as process:
        yield port, process


@contextlib.contextmanager
def stack(case: Case, settings: Settings, upstream_port: int) -> Iterator[Running]:
    """The case's ext_proc server (if it has one) and the Envoy under test in front of it."""
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
        envoy = processes.enter_context(running_envoy("envoy", bootstrap, work, STARTUP_TIMEOUT_S))
        yield Running(f"http://127.0.0.1:{listen_port}", envoy, server, call_log)


# --- measuring -------------------------------------------------------------------------


def pid_of(process: ManagedProcess) -> int:
    if process.pid is None:
        raise RuntimeError(f"{process.name} was never started")
    return process.pid


class _CpuWindow:
    """CPU seconds each process tree used between start() and stop(), and how busy the rest of
    the machine was meanwhile (other people's work on a shared machine skews every number)."""

    def __init__(self, processes: dict[str, ManagedProcess | None]) -> None:
        self._pids = {name: pid_of(p) for name, p in processes.items() if p is not None}
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


def check_load(result: LoadResult, what: str, running: Running) -> None:
    if result.errors:
        server_log = running.server.log_text()[-3000:] if running.server is not None else ""
        raise LoadError(
            f"{what}: {result.errors} of {result.requests} requests failed\n"
            f"--- server log (tail) ---\n{server_log}\n--- Envoy log (tail) ---\n{running.envoy.log_text()[-3000:]}"
        )


def warm_up(case: Case, settings: Settings, running: Running) -> None:
    """Connections to the server and upstream opened, plugin instance pools grown to the load."""
    work = settings.work / case.name
    loadgen.run_wrk(running.url, case.load, duration_s=settings.warmup_s, connections=CONNECTIONS, work_dir=work)


def peak_run(case: Case, settings: Settings, running: Running) -> LoadResult:
    """wrk with every connection busy (closed loop): the case's peak."""
    work = settings.work / case.name
    peak = loadgen.run_wrk(
        running.url, case.load, duration_s=settings.duration_s, connections=CONNECTIONS, work_dir=work
    )
    check_load(peak, "peak run (wrk)", running)
    return peak


def _measure(case: Case, settings: Settings, running: Running, upstream: ManagedProcess) -> CaseResult:
    warm_up(case, settings, running)
    window = _CpuWindow({"envoy": running.envoy, "server": running.server, "upstream": upstream})
    window.start()
    peak = peak_run(case, settings, running)
    window.stop()
    rss = None
    if running.server is not None:
        rss = max(procstat.tree_rss_bytes(pid_of(running.server)).values()) / MB

    half_started = time.time()
    half = paced_run(case, settings, running, peak.rps / 2)
    calls = logged_calls(running, half.result, half_started, time.time())
    at_rates = tuple(
        paced_run(case, settings, running, rate) for rate in settings.rates if rate <= RATE_HEADROOM * peak.rps
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
        half_call_p99_us=call_p99_us(calls),
        body_bytes=case.body_bytes,
        at_rates=at_rates,
        other_load_pct=max(window.other_load_pct, half.other_load_pct, *(run.other_load_pct for run in at_rates)),
    )


def paced_run(case: Case, settings: Settings, running: Running, rate: float) -> RateRun:
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
    check_load(result, f"run paced to {rate:,.0f} req/s (wrk)", running)
    return RateRun(
        rate=rate,
        result=result,
        envoy_cpu_us=window.per_request_us("envoy", result.requests),
        server_cpu_us=window.per_request_us("server", result.requests),
        server_switches=window.server_switches_per_request(result.requests),
        other_load_pct=window.other_load_pct,
    )


def logged_calls(running: Running, result: LoadResult, start: float, end: float) -> list[CallRecord]:
    """Envoy's call log lines of the requests of a run in [start, end) (none without the filter)."""
    log_path = running.call_log
    if log_path is None:
        return []

    def logged() -> list[CallRecord]:
        return envoy_configs.parse_call_log(log_path.read_text() if log_path.exists() else "", start, end)

    # Envoy writes its access log out every 50 ms (envoy_argv); every request wrk counted gets a line.
    wait_until(lambda: len(logged()) >= result.requests, 10.0, "Envoy's ext_proc call log")
    return logged()


def call_p99_us(calls: list[CallRecord]) -> float | None:
    """p99 of the ext_proc call as Envoy timed it."""
    called = sorted(float(call.latency_us) for call in calls if call.latency_us is not None)
    return loadgen.percentile(called, 0.99) if called else None


def run_case(case: Case, settings: Settings, upstream_port: int, upstream: ManagedProcess) -> CaseResult:
    started = time.monotonic()
    try:
        with stack(case, settings, upstream_port) as running:
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
    with stack(case, settings, upstream_port) as running:
        assert running.server is not None
        root = pid_of(running.server)
        work = settings.work / case.name
        warm = loadgen.run_h2load(
            running.url,
            case.load,
            requests=max(1000, settings.memory_requests // 10),
            connections=CONNECTIONS,
            work_dir=work,
        )
        check_load(warm, "memory warm-up (h2load)", running)
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
        check_load(result, "memory run (h2load)", running)
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
) -> list[Path]:
    """Writes the results; the files written."""
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
    written = [settings.out / "results.json", settings.out / "results.md"]
    # The plot is the one output that needs a package beyond the project's; without it the tables still stand.
    if importlib.util.find_spec("matplotlib") is None:
        print("bench: no results.png: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
    else:
        report.plot(results, settings.out / "results.png")
        written.append(settings.out / "results.png")
    return written


def _rates(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(rate) for rate in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if any(rate <= 0 for rate in rates):
        raise argparse.ArgumentTypeError(f"rates must be positive: {text!r}")
    return rates


def new_settings(
    out: Path, duration_s: float | None, *, quick: bool = False, rates: tuple[float, ...] = ()
) -> Settings:
    """Settings of a run writing to ``out``, its process logs and configs under out/work (cleared here)."""
    out = out.resolve()
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    return Settings(
        duration_s=duration_s or (2.0 if quick else 10.0),
        warmup_s=1.0 if quick else 2.0,
        memory_requests=10_000 if quick else 100_000,
        out=out,
        work=work,
        plugin_dir=ensure_built(),
        workers_flag=_has_workers_flag(),
        rates=rates,
    )


def main(argv: Sequence[str] | None = None, cases: Sequence[Case] = CASES, module: str = "bench.run") -> int:
    """The suite over ``cases``; lab tools run it over more cases, as ``python -m <module>``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs, for smoke checking")
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 10, 2 with --quick)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--cases", help=f"comma-separated subset of: {', '.join(c.name for c in cases)}")
    parser.add_argument("--no-memory", action="store_true", help="skip the five-plugin memory run")
    parser.add_argument(
        "--rates",
        type=_rates,
        default=(),
        help="comma-separated request rates: every case also runs paced to each (if under 80%% of its peak)",
    )
    args = parser.parse_args(argv)

    if args.cases:
        wanted = args.cases.split(",")
        unknown = set(wanted) - {c.name for c in cases}
        if unknown:
            parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
        cases = [c for c in cases if c.name in wanted]

    loadgen.ensure_tools()
    settings = new_settings(args.out, args.duration, quick=args.quick, rates=args.rates)
    command = f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:])
    info = machine()
    print(f"bench: {len(cases)} case(s), {settings.duration_s:g}s per run; work files in {settings.work}", flush=True)

    with upstream(settings.work) as (upstream_port, upstream_process):
        results = [run_case(case, settings, upstream_port, upstream_process) for case in cases]
        memory = None
        if not args.no_memory:
            print(f"  memory: {settings.memory_requests:,} requests with 5 plugins ...", flush=True)
            memory = run_memory(settings, upstream_port)
            print(f"  {report.memory_section(memory).strip()}", flush=True)
    written = write_outputs(settings, info, results, memory, command)
    print((settings.out / "results.md").read_text())
    print(f"bench: wrote {', '.join(str(path) for path in written)}")
    failed = [r.name for r in results if r.status is Status.ERROR]
    if failed:
        print(f"bench: cases failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
