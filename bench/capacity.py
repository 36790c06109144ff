"""Capacity under concurrency: ``python -m bench.capacity [--baseline REV] [--duration S]``.

Three questions, each answered against baselines measured in the same run (docs/performance.md):

1. **Slow upstream.** An upstream that answers after 100 ms, header-rewrite configured as its README
   shows (request and response headers), wrk at 64 and at 512 connections: does req/s grow with
   the connections until a CPU is the limit? Envoy alone is the ceiling.
2. **Slow clients.** The same paced load with and without 300 idle ext_proc streams opened straight
   at the server and 150 clients that stall in the middle of a request body: do all requests still
   succeed, and how much does their p99 grow?
3. **CPU against the previous server.** One header plugin (the bench's ``header`` case, and the
   README-style header-rewrite) at the peak and paced to set rates: server CPU per request against the
   server of ``--baseline REV`` (a git revision, checked out in a worktree and run from it), and the
   p99 each adds to Envoy alone at half the peak.

Without ``--baseline`` only this checkout's server runs. ``--checkout LABEL=DIR`` adds the server of
another prepared checkout, e.g. this commit with its request path compiled (``git worktree add DIR`` and
``EXTPROC_MYPYC=1 python setup.py build_ext --inplace`` in it); ``--workers N`` adds this checkout's
server with N worker processes. Writes capacity.json and capacity.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import loadgen, procstat
from bench.cases import PLUGINS, server_config, write_config
from bench.envoy_configs import SLOW_PATH, ProxyFilter, proxy_bootstrap
from bench.loadgen import Load, LoadResult
from bench.run import CONNECTIONS, STARTUP_TIMEOUT_S, upstream
from support.envoy import running_envoy
from support.plugins import ensure_built
from support.processes import REPO_ROOT, ManagedProcess, default_server_cmd, free_port, wait_for_port
from support.slow_clients import idle_streams, stalled_bodies

SLOW_CONNECTIONS = (64, 512)
IDLE_STREAMS = 300
STALLED_BODIES = 150
SET_RATES = (1000.0, 500.0)
# README-style header-rewrite: both sides configured, no execution_points, as a user copies it.
HEADER_REWRITE = {
    "name": "header-rewrite",
    "path": str(REPO_ROOT / "examples" / "header-rewrite" / "header-rewrite.wasm"),
    "config": {"request": {"set": {"x-team": "payments"}}, "response": {"set": {"x-served-by": "extproc"}}},
}
# Requests under this prefix carry a body a plugin waits for, so a stalled one holds an ext_proc stream.
STALLED_PREFIX = "/stalled"


@dataclass(frozen=True)
class Server:
    """Which server runs: this checkout's, or a baseline revision's from its own worktree."""

    label: str
    checkout: Path | None  # None: Envoy alone, no ext_proc filter
    workers: int = 1


@dataclass(frozen=True)
class Run:
    server: str
    what: str
    connections: int
    rate: float | None
    result: LoadResult
    server_cpu_s: float | None
    envoy_cpu_s: float

    @property
    def server_cpu_us(self) -> float | None:
        if self.server_cpu_s is None or not self.result.requests:  # a stalled server may answer none
            return None
        return self.server_cpu_s / self.result.requests * 1e6

    @property
    def server_cpu_pct(self) -> float | None:
        return None if self.server_cpu_s is None else 100 * self.server_cpu_s / self.result.duration_s

    @property
    def envoy_cpu_pct(self) -> float:
        return 100 * self.envoy_cpu_s / self.result.duration_s


@dataclass
class Running:
    url: str
    envoy: ManagedProcess
    server: ManagedProcess | None
    extproc_port: int


@contextlib.contextmanager
def _stack(server: Server, config: dict[str, Any], work: Path, upstream_port: int) -> Iterator[Running]:
    work.mkdir(parents=True, exist_ok=True)
    extproc_port, listen_port = free_port(), free_port()
    with contextlib.ExitStack() as processes:
        process = None
        if server.checkout is not None:
            argv = default_server_cmd(write_config(work / "extproc.yaml", config), extproc_port)
            if server.workers > 1:
                argv += ["--workers", str(server.workers)]
            env = {**os.environ, "PYTHONPATH": str(server.checkout)}
            process = ManagedProcess(server.label, argv, work / "server.log", env=env, cwd=server.checkout)
            processes.enter_context(process)
            wait_for_port("127.0.0.1", extproc_port, STARTUP_TIMEOUT_S, process=process)
        bootstrap = proxy_bootstrap(
            proxy_filter=ProxyFilter.NONE if server.checkout is None else ProxyFilter.EXT_PROC,
            listen_port=listen_port,
            admin_port=free_port(),
            upstream_port=upstream_port,
            extproc_port=extproc_port,
        )
        envoy = processes.enter_context(running_envoy("envoy", bootstrap, work, STARTUP_TIMEOUT_S))
        yield Running(f"http://127.0.0.1:{listen_port}", envoy, process, extproc_port)


def _measure(
    running: Running,
    server: Server,
    what: str,
    load: Load,
    work: Path,
    *,
    duration_s: float,
    connections: int,
    rate: float | None = None,
) -> Run:
    pids = {"envoy": running.envoy.pid} | ({} if running.server is None else {"server": running.server.pid})
    before = {name: procstat.tree_cpu_seconds(pid) for name, pid in pids.items() if pid is not None}
    result = loadgen.run_wrk(
        running.url, load, duration_s=duration_s, connections=connections, work_dir=work, rate=rate
    )
    used = {name: procstat.tree_cpu_seconds(pid) - before[name] for name, pid in pids.items() if pid is not None}
    run = Run(server.label, what, connections, rate, result, used.get("server"), used["envoy"])
    rate_text = f" at {rate:,.0f} req/s" if rate else ""
    server_text = f", server {run.server_cpu_pct:.0f} % CPU" if run.server_cpu_pct is not None else ""
    print(
        f"  {server.label:10} {what:28} c={connections:<4}{rate_text}: {result.rps:8,.0f} req/s, "
        f"p99 {result.p99_us / 1000:7.1f} ms, errors {result.errors}, Envoy {run.envoy_cpu_pct:.0f} % CPU{server_text}",
        flush=True,
    )
    return run


def slow_upstream(servers: list[Server], settings: argparse.Namespace, upstream_port: int) -> list[Run]:
    runs = []
    config = {"server": {"log_level": "warning"}, "plugins": [HEADER_REWRITE]}
    for server in servers:
        work = settings.work / f"slow-{server.label}"
        with _stack(server, config, work, upstream_port) as running:
            for connections in SLOW_CONNECTIONS:
                load = Load(f"{SLOW_PATH}/{connections}")
                loadgen.run_wrk(running.url, load, duration_s=2, connections=connections, work_dir=work)
                runs.append(
                    _measure(
                        running,
                        server,
                        "100 ms upstream",
                        load,
                        work,
                        duration_s=settings.duration,
                        connections=connections,
                    )
                )
    return runs


def slow_clients(servers: list[Server], settings: argparse.Namespace, upstream_port: int) -> list[Run]:
    """Paced load with and without idle streams and stalled bodies held open meanwhile."""
    runs = []
    body_plugin = {
        "name": "body",
        "path": str(settings.plugin_dir / PLUGINS["request_body"].wasm),
        "execution_points": ["request_body"],
        "match": {"path_prefix": STALLED_PREFIX},
    }
    config = {"server": {"log_level": "warning"}, "plugins": [HEADER_REWRITE, body_plugin]}
    for server in servers:
        if server.checkout is None:
            continue
        work = settings.work / f"clients-{server.label}"
        with _stack(server, config, work, upstream_port) as running:
            loadgen.run_wrk(running.url, Load("/"), duration_s=2, connections=CONNECTIONS, work_dir=work)
            measure = {
                "duration_s": settings.duration,
                "connections": CONNECTIONS,
                "rate": settings.clients_rate,
            }
            runs.append(_measure(running, server, "paced, no slow clients", Load("/"), work, **measure))
            listen_port = int(running.url.rsplit(":", 1)[1])
            with (
                idle_streams(running.extproc_port, IDLE_STREAMS),
                stalled_bodies(listen_port, STALLED_BODIES, STALLED_PREFIX),
            ):
                runs.append(_measure(running, server, "paced, 300 idle + 150 stalled", Load("/"), work, **measure))
    return runs


def cpu_against_baseline(servers: list[Server], settings: argparse.Namespace, upstream_port: int) -> list[Run]:
    """One header plugin on each server, at the peak, at half of it, and at the set rates."""
    runs = []
    configs = {
        "header (bench case)": server_config(("header",), settings.plugin_dir) | {"server": {"log_level": "warning"}},
        "header-rewrite (README)": {"server": {"log_level": "warning"}, "plugins": [HEADER_REWRITE]},
    }
    for what, config in configs.items():
        for server in servers:
            work = settings.work / f"cpu-{server.label}-{what.split()[0]}"
            with _stack(server, config, work, upstream_port) as running:
                loadgen.run_wrk(running.url, Load("/"), duration_s=2, connections=CONNECTIONS, work_dir=work)
                measure = {"duration_s": settings.duration, "connections": CONNECTIONS}
                peak = _measure(running, server, what, Load("/"), work, **measure)
                runs.append(peak)
                for rate in (*SET_RATES, *((settings.half_rate,) if settings.half_rate else ())):
                    if rate <= 0.8 * peak.result.rps:
                        runs.append(_measure(running, server, what, Load("/"), work, rate=rate, **measure))
    return runs


@contextlib.contextmanager
def _baseline_checkout(revision: str, work: Path) -> Iterator[Path]:
    path = work / f"baseline-{revision}"
    subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(path), revision], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(path)], check=False)


def _table(runs: list[Run]) -> str:
    lines = [
        "| server | load | connections | rate | req/s | p50 ms | p99 ms | errors "
        "| server CPU/req us | server CPU % | Envoy CPU % |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        result = run.result
        cpu_us = "-" if run.server_cpu_us is None else f"{run.server_cpu_us:,.0f}"
        cpu_pct = "-" if run.server_cpu_pct is None else f"{run.server_cpu_pct:.0f}"
        lines.append(
            f"| {run.server} | {run.what} | {run.connections} | {'peak' if run.rate is None else f'{run.rate:,.0f}'} "
            f"| {result.rps:,.0f} | {result.p50_us / 1000:.1f} | {result.p99_us / 1000:.1f} | {result.errors} "
            f"| {cpu_us} | {cpu_pct} | {run.envoy_cpu_pct:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", help="git revision whose server runs beside this checkout's")
    parser.add_argument(
        "--checkout", action="append", default=[], metavar="LABEL=DIR", help="also run the server of checkout DIR"
    )
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N", help="also run this checkout's server with N worker processes"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (default 10)")
    parser.add_argument("--clients-rate", type=float, default=400.0, help="paced rate of the slow-clients runs")
    parser.add_argument("--half-rate", type=float, default=0.0, help="extra paced rate for the CPU runs (0: none)")
    parser.add_argument("--only", choices=("slow_upstream", "slow_clients", "cpu"), action="append")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    loadgen.ensure_tools()
    args.out = args.out.resolve()
    args.work = args.out / "capacity-work"
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    args.plugin_dir = ensure_built()
    sections = args.only or ["slow_upstream", "slow_clients", "cpu"]
    results: dict[str, list[Run]] = {}
    with contextlib.ExitStack() as stack:
        servers = [Server("envoy", None), Server("asyncio", REPO_ROOT)]
        if args.baseline:
            servers.insert(1, Server("sync", stack.enter_context(_baseline_checkout(args.baseline, args.work))))
        for extra in args.checkout:
            label, _, directory = extra.partition("=")
            if not directory:
                parser.error(f"--checkout wants LABEL=DIR, got {extra!r}")
            servers.append(Server(label, Path(directory).resolve()))
        if args.workers > 1:
            servers.append(Server(f"asyncio x{args.workers}", REPO_ROOT, args.workers))
        upstream_port, _ = stack.enter_context(upstream(args.work))
        started = time.monotonic()
        if "slow_upstream" in sections:
            results["slow_upstream"] = slow_upstream(servers, args, upstream_port)
        if "slow_clients" in sections:
            results["slow_clients"] = slow_clients(servers, args, upstream_port)
        if "cpu" in sections:
            results["cpu"] = cpu_against_baseline(servers, args, upstream_port)
    text = [f"# Capacity ({time.monotonic() - started:.0f} s; baseline {args.baseline or 'none'})\n"]
    for name, runs in results.items():
        text += [f"## {name}\n", _table(runs), ""]
    (args.out / "capacity.md").write_text("\n".join(text) + "\n")
    (args.out / "capacity.json").write_text(
        json.dumps({name: [dataclasses.asdict(run) for run in runs] for name, runs in results.items()}, indent=2)
    )
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
