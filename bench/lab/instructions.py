"""Instructions per request of an ext_proc server, by shared object and by function: callgrind counts.

Run as ``python -m bench.lab.instructions [--cases header,header3,generate,nomatch] [--noop-stacks aio,grpclib]
[--requests N]``.
CPU time per request varies by about ±15 % between runs on a shared VM; the number of instructions
executed (callgrind's ``Ir``) hardly does, so it can tell apart cases that CPU time cannot.
The variants are ``noop`` (bench/noop_server.py, the floor) and one ``extproc serve`` per chosen
bench case (bench/cases.py: its plugins and its request path; cases without a body, workers or
bypass). ``--noop-stacks`` adds the no-op on other Python gRPC stacks (bench/lab/noop_servers.py;
``noop-aio``: grpc.aio, ``noop-grpclib``: grpclib on uvloop), to show what the stack alone costs against
grpcio's sync server; they are compared in the totals only. Each server runs under ``valgrind --tool=callgrind``
behind the bench's Envoy and direct_response upstream (as in bench/run.py). h2load sends a warm-up,
the counters are zeroed, h2load sends N requests (2 connections: valgrind runs the server about 30x
slower), and the counters are dumped. Start-up, warm-up and shutdown are not counted.

The report gives each variant's Ir per request against the no-op's, the issue's targets as
instruction ratios (header/noop <= 1.0, header3/noop <= 1.25, generate/header <= 1.0; those whose
cases ran), and each case's difference from the no-op by shared object and by function.

Counted: user-space instructions of every thread of the server. Not counted: the kernel (syscalls,
context switches, epoll), which CPU time includes. Each variant runs with ``PYTHONHASHSEED=0``;
what is left to vary is thread interleaving (lock spinning, batching), about 1-2 % between runs.

Writes bench/results/instructions.md and .json (``--out``); callgrind files and logs are under
bench/results/work/instructions/. valgrind (Debian package) and the packages a no-op stack needs
(pip) are installed on first use.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import loadgen, procstat
from bench.cases import CASES, Case, Kind, server_config, write_config
from bench.envoy_configs import ProxyFilter, proxy_bootstrap
from bench.lab import pip_install
from bench.lab.noop_servers import COMPARED_STACKS, STACK_PACKAGES, stack_case
from bench.loadgen import Load, LoadError, LoadResult
from bench.run import machine, upstream
from extproc.config import Config, load_config
from extproc.phases import Phase
from support.bootstrap import EXT_PROC_STATS
from support.envoy import envoy_stats, running_envoy
from support.metrics import scrape_metrics
from support.plugins import ensure_built
from support.processes import REPO_ROOT, ManagedProcess, default_server_cmd, free_port, wait_for_port, wait_until

NOOP = next(case for case in CASES if case.kind is Kind.NOOP)
DEFAULT_CASES = "header"
# The no-op variants by name, with their gRPC stack: grpcio's sync server (bench/noop_server.py) is the
# baseline, the others (--noop-stacks) are named noop-<stack>.
NOOP_STACKS = {NOOP.name: "sync"} | {f"{NOOP.name}-{stack}": stack for stack in COMPARED_STACKS}
_OTHER_NOOPS = {stack: name for name, stack in NOOP_STACKS.items() if name != NOOP.name}
# Valgrind gives the server 128 GiB of address space and each Extism instance reserves three 4 GiB
# memory regions, so about 10 instances fit. A plugin's pool grows to the number of concurrent calls,
# at most one per connection. 2 connections keep header3's three pools at 6 instances: 4 did not fit,
# and 3 (9 instances) failed now and then when Extism replaced an instance.
CONNECTIONS = 2
TOP_N = 15
# Objects below this in both variants share one row of the Markdown table (the JSON lists them all).
MIN_ROW_IR = 100
# Under valgrind the extproc server takes tens of seconds to start, more on a busy machine.
STARTUP_TIMEOUT_S = 300.0
# The slowest warm-up request took ~1 s here; Envoy's default 5 s leaves little margin on a busy machine.
MESSAGE_TIMEOUT_MS = 60_000
# Idle: the server used less than this share of one core over a poll window.
IDLE_CPU_SHARE = 0.05
IDLE_WINDOW_S = 0.5
UNKNOWN_OBJECT = "???"

# What each shared object is, first match on its path wins.
OBJECT_ROLES: tuple[tuple[str, str], ...] = (
    ("libpython", "Python interpreter"),
    ("/lib-dynload/", "Python stdlib C modules"),
    ("cygrpc", "grpcio: gRPC C core + Cython glue"),
    ("_upb/", "protobuf (upb)"),
    ("libextism", "Extism + wasmtime runtime (Rust)"),
    ("_cffi_backend", "cffi (the extism package's C calls)"),
    ("orjson", "orjson (plugin input/output JSON)"),
    ("libc.so", "libc (malloc, locks, memcpy)"),
    ("ld-linux", "dynamic loader (thread-local storage lookups)"),
    ("libstdc++", "C++ runtime"),
    ("libm.so", "libm"),
)
OTHER_ROLE = "other"
UNKNOWN_ROLE = "no file: code compiled at run time (wasmtime: the plugin and Extism's kernel)"


# --- callgrind output (pure; unit-tested in tests/test_bench_instructions.py) -------------------------


@dataclass(frozen=True)
class Profile:
    """Self instruction counts of one callgrind dump."""

    total: int
    by_object: dict[str, int]  # object path (``???`` when none) -> Ir
    by_function: dict[tuple[str, str], int]  # (object path, function) -> Ir, recursion levels merged


_NAME = re.compile(r"\((\d+)\)(?: (.*))?$")
# callgrind names recursion levels fn'2, fn'3, ...: one function for this report.
_RECURSION = re.compile(r"'\d+$")
# Which name-compression table a spec line uses: objects, files and functions have one each.
_TABLES = {
    key: table
    for table, keys in (("ob", ("ob", "cob")), ("fl", ("fl", "fi", "fe", "cfi", "cfl")), ("fn", ("fn", "cfn")))
    for key in keys
}


def parse_callgrind(lines: Iterable[str]) -> Profile:
    """Self cost (``Ir``) per object and function from a callgrind output file.

    Handles compressed names (``fn=(12) name`` defines id 12, ``fn=(12)`` refers to it) and skips
    the cost line after each ``calls=`` line, which is the call's inclusive cost. Files made with
    ``--collect-jumps`` are refused. If the file has a ``totals:`` line it must match the sum.
    """
    names: dict[tuple[str, str], str] = {}
    ob = fn = ""
    positions = 1
    ir_column: int | None = None
    after_call = False
    file_totals: int | None = None
    by_object: Counter[str] = Counter()
    by_function: Counter[tuple[str, str]] = Counter()
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line[0].isdigit() or line[0] in "+-*":
            if after_call:
                after_call = False
                continue
            if ir_column is None:
                raise ValueError("cost line before the 'events:' line")
            fields = line.split()
            column = positions + ir_column
            cost = int(fields[column]) if column < len(fields) else 0
            by_object[ob] += cost
            by_function[(ob, fn)] += cost
            continue
        key, sep, value = line.partition("=")
        if sep and key in _TABLES:
            match = _NAME.match(value)
            name = value
            if match is not None:
                table_key = (_TABLES[key], match.group(1))
                if match.group(2) is not None:
                    names[table_key] = match.group(2)
                name = names.get(table_key, value)
            if key == "ob":
                ob = name
            elif key == "fn":
                fn = _RECURSION.sub("", name)
        elif sep and key == "calls":
            after_call = True
        elif sep and key in ("jump", "jcnd"):
            raise ValueError("jump data (--collect-jumps) is not supported")
        elif line.startswith("positions:"):
            positions = len(line.split()[1:])
        elif line.startswith("events:"):
            events = line.split()[1:]
            if "Ir" not in events:
                raise ValueError(f"no Ir event in {line!r}")
            ir_column = events.index("Ir")
        elif line.startswith("totals:"):
            file_totals = int(line.split()[1 + (ir_column or 0)])
    total = sum(by_object.values())
    if file_totals is not None and file_totals != total:
        raise ValueError(f"cost lines add up to {total} Ir, the file's totals line says {file_totals}")
    return Profile(total, dict(by_object), dict(by_function))


def parse_maps(text: str) -> list[tuple[int, int, str]]:
    """``/proc/<pid>/maps`` as (start, end, path) of each mapping; path is ``""`` for anonymous memory."""
    mappings = []
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            continue
        start, end = (int(part, 16) for part in fields[0].split("-"))
        mappings.append((start, end, fields[5].strip() if len(fields) == 6 else ""))
    return mappings


def attribute_unknown(profile: Profile, mappings: list[tuple[int, int, str]]) -> Profile:
    """Move ``???`` code that lies in a file's mapping to that file.

    callgrind names code outside every symbol table ``???``, with its address as the function name:
    both PLT stubs (in a library's mapping: the library's cost) and code generated at run time
    (anonymous mappings: wasmtime's compiled plugin), which stays ``???``.
    """
    by_object: Counter[str] = Counter()
    by_function: Counter[tuple[str, str]] = Counter()
    for (ob, fn), cost in profile.by_function.items():
        if ob in ("", UNKNOWN_OBJECT) and fn.startswith("0x"):
            address = int(fn, 16)
            ob = next((path for start, end, path in mappings if start <= address < end and path), ob)
        by_object[ob] += cost
        by_function[(ob, fn)] += cost
    return Profile(profile.total, dict(by_object), dict(by_function))


def object_name(path: str) -> str:
    """The file name of an object (``???`` stays as it is)."""
    return path.rsplit("/", 1)[-1] if path else UNKNOWN_OBJECT


def object_role(path: str) -> str:
    if path in ("", UNKNOWN_OBJECT):
        return UNKNOWN_ROLE
    return next((role for mark, role in OBJECT_ROLES if mark in path), OTHER_ROLE)


# --- cases, plugin calls and targets (pure; unit-tested) ---------------------------------------------


def measurable(case: Case) -> bool:
    """A case this script can run: our server, bodiless GETs, one process, every request through it.

    Body cases would need a body phase the expected plugin calls do not model; worker and bypass
    cases need a port range or an Envoy route this script does not set up.
    """
    return case.kind is Kind.SERVER and not case.body_bytes and case.workers is None and not case.bypass_prefixes


def _names(text: str) -> list[str]:
    """Comma-separated names, in the order given, each once."""
    return list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))


def parse_cases(text: str) -> tuple[Case, ...]:
    """Comma-separated case names, in the order given, each once."""
    by_name = {case.name: case for case in CASES if measurable(case)}
    names = _names(text)
    unknown = [name for name in names if name not in by_name]
    if unknown or not names:
        raise ValueError(f"unknown or unsupported cases {unknown} (choose from {', '.join(by_name)})")
    return tuple(by_name[name] for name in names)


def parse_noop_stacks(text: str) -> tuple[Case, ...]:
    """Comma-separated stacks besides the baseline's, each as its no-op variant; empty text: none."""
    stacks = _names(text)
    unknown = [stack for stack in stacks if stack not in _OTHER_NOOPS]
    if unknown:
        raise ValueError(f"unknown no-op stacks {unknown} (choose from {', '.join(_OTHER_NOOPS)})")
    return tuple(stack_case(_OTHER_NOOPS[stack], stack) for stack in stacks)


# Execution points a matching plugin runs exactly once on a bodiless GET, with the export each calls:
# request headers always, then generate_response (stream.py asks it once every request_headers call
# has returned without a reply).
_ONCE_PER_GET = frozenset({Phase.REQUEST_HEADERS, Phase.GENERATE_RESPONSE})


def expected_plugin_calls(config: Config, path: str) -> dict[tuple[str, str], int]:
    """Plugin calls per bodiless ``GET path``, by (plugin, export): the server's counter labels.

    Derived from the config with the server's own match rules, so a run whose plugins ran more or
    less often than the config says (a missed match, a retry, a call counted twice) fails the check
    instead of skewing Ir per request. Refused, because the count would then depend on something the
    config does not fix: execution points left to the module's exports or other than request headers
    and generate_response (response phases do not run after a generated reply), host or header match
    rules (h2load's exact request headers), and a second generate plugin (the first reply ends it).
    """
    calls: dict[tuple[str, str], int] = {}
    for plugin in config.plugins:
        points = plugin.execution_points
        if points is None or not points <= _ONCE_PER_GET:
            listed = "none, so every export" if points is None else ", ".join(sorted(p.config_name for p in points))
            supported = ", ".join(sorted(p.config_name for p in _ONCE_PER_GET))
            raise ValueError(f"plugin {plugin.name!r}: execution points {listed}; supported: {supported}")
        if plugin.match.hosts or plugin.match.headers:
            raise ValueError(f"plugin {plugin.name!r}: host or header match rules")
        if plugin.enabled and plugin.match.matches("GET", path, "", {}):
            calls |= {(plugin.name, point.value): 1 for point in sorted(points)}
    if sum(export == Phase.GENERATE_RESPONSE.value for _, export in calls) > 1:
        raise ValueError(f"more than one generate_response plugin matches {path}")
    return calls


def plugin_calls(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[tuple[str, str], int]:
    """The server's plugin call counters from its scraped /metrics, by (plugin, export)."""
    calls: Counter[tuple[str, str]] = Counter()
    for (name, labels), value in samples.items():
        if name == "extproc_plugin_calls_total":
            label = dict(labels)
            calls[(label["plugin"], label["phase"])] += int(value)
    return dict(calls)


def counter_delta(before: Mapping[Any, int], after: Mapping[Any, int]) -> dict[Any, int]:
    """What counters moved between two scrapes (counters that never moved are absent from both)."""
    return {key: moved for key, value in after.items() if (moved := value - before.get(key, 0))}


@dataclass(frozen=True)
class Target:
    """One of the issue's CPU targets, as instructions: case Ir/request over baseline Ir/request."""

    case: str
    baseline: str
    limit: float
    ratio: float

    @property
    def name(self) -> str:
        return f"{self.case}/{self.baseline}"

    @property
    def passed(self) -> bool:
        return self.ratio <= self.limit


# (case, baseline, highest ratio allowed)
TARGETS: tuple[tuple[str, str, float], ...] = (
    ("header", "noop", 1.0),
    ("header3", "noop", 1.25),
    ("generate", "header", 1.0),
)


def targets(ir_per_request: Mapping[str, float]) -> list[Target]:
    """The targets whose case and baseline were both measured, from Ir per request by variant."""
    return [
        Target(case, baseline, limit, ir_per_request[case] / ir_per_request[baseline])
        for case, baseline, limit in TARGETS
        if case in ir_per_request and baseline in ir_per_request
    ]


# --- measuring ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    requests: int
    warmup: int
    work: Path
    plugin_dir: Path


@dataclass(frozen=True)
class Measured:
    variant: str  # the case's name
    requests: int
    load: LoadResult
    envoy_ext_proc: dict[str, int]  # Envoy's ext_proc counters over the measured run
    # The server's plugin call counters over the measured run, by "plugin export" (None for the no-op).
    plugin_calls: dict[str, int] | None
    plugin_failures: int | None
    callgrind_file: Path
    profile: Profile


@dataclass(frozen=True)
class Stack:
    """A server under callgrind behind the bench's Envoy."""

    url: str
    envoy_admin_url: str
    server: ManagedProcess
    envoy: ManagedProcess


def _valgrind_argv(out_file: Path) -> list[str]:
    return [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out_file}",
        "--dump-instr=no",
        # Full names in every dump: with compression a later dump refers to names defined in earlier ones.
        "--compress-strings=no",
    ]


def _callgrind_control(pid: int, flag: str) -> None:
    # vgdb waits for callgrind to act on the command, so the zeroing or dump is done on return.
    proc = subprocess.run(["callgrind_control", flag, str(pid)], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or "OK" not in proc.stdout:
        raise RuntimeError(f"callgrind_control {flag} {pid} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")


def _wait_idle(pid: int, timeout: float = 120.0) -> None:
    """Until the server has finished with the requests already answered.

    A stream ends after Envoy has its reply, so that work would otherwise straddle the zeroing or the dump.
    """
    window = [procstat.tree_cpu_seconds(pid), time.monotonic()]

    def idle() -> bool:
        cpu, now = procstat.tree_cpu_seconds(pid), time.monotonic()
        if now - window[1] < IDLE_WINDOW_S:
            return False
        quiet = cpu - window[0] < IDLE_CPU_SHARE * (now - window[1])
        window[:] = [cpu, now]
        return quiet

    wait_until(idle, timeout, f"the server (pid {pid}) to go idle")


def _ext_proc_counters(stack: Stack) -> dict[str, int]:
    stats = envoy_stats(stack.envoy_admin_url, EXT_PROC_STATS + ".")
    return {name.removeprefix(EXT_PROC_STATS + "."): value for name, value in stats.items()}


def _plugin_counters(admin_url: str) -> tuple[dict[tuple[str, str], int], int]:
    samples = scrape_metrics(admin_url)
    failures = sum(v for (name, _), v in samples.items() if name == "extproc_plugin_failures_total")
    return plugin_calls(samples), int(failures)


def _write_server_config(case: Case, settings: Settings, admin_port: int) -> Path:
    config = server_config(case.plugins, settings.plugin_dir)
    # The admin endpoint's counters show how often each plugin ran. It is scraped outside the
    # window; its idle thread wakes twice a second, a few hundred Ir per request at most.
    config["server"]["admin_listen"] = f"127.0.0.1:{admin_port}"
    return write_config(settings.work / case.name / "extproc.yaml", config)


@contextlib.contextmanager
def _stack(case: Case, config_path: Path | None, work: Path, upstream_port: int) -> Iterator[Stack]:
    """``config_path`` None: the no-op server."""
    out_file = work / "callgrind.out"
    port, listen_port, admin_port = free_port(), free_port(), free_port()
    server_argv = case.noop_argv(port) if config_path is None else default_server_cmd(config_path, port)
    argv = _valgrind_argv(out_file) + server_argv
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONHASHSEED": "0"}
    bootstrap = proxy_bootstrap(
        proxy_filter=ProxyFilter.EXT_PROC,
        listen_port=listen_port,
        admin_port=admin_port,
        upstream_port=upstream_port,
        extproc_port=port,
        message_timeout_ms=MESSAGE_TIMEOUT_MS,
    )
    with ManagedProcess(case.name, argv, work / "server.log", env=env, cwd=REPO_ROOT) as server:
        wait_for_port("127.0.0.1", port, STARTUP_TIMEOUT_S, process=server)
        # Stopped before the server: Envoy never sees the server vanish under live streams.
        with running_envoy("envoy", bootstrap, work, STARTUP_TIMEOUT_S) as envoy:
            yield Stack(f"http://127.0.0.1:{listen_port}", f"http://127.0.0.1:{admin_port}", server, envoy)


def _h2load(stack: Stack, load: Load, requests: int, what: str, work: Path) -> LoadResult:
    # A folder per run: h2load appends to its --log-file, which would mix the runs' requests.
    run_dir = work / what.replace(" ", "-")
    run_dir.mkdir(parents=True, exist_ok=True)
    result = loadgen.run_h2load(stack.url, load, requests=requests, connections=CONNECTIONS, work_dir=run_dir)
    if result.errors or result.requests != requests:
        raise LoadError(
            f"{what}: {result.errors} of {result.requests} requests failed ({requests} sent)\n"
            f"--- server log (tail) ---\n{stack.server.log_text()[-3000:]}\n"
            f"--- Envoy log (tail) ---\n{stack.envoy.log_text()[-3000:]}"
        )
    return result


def measure(case: Case, settings: Settings, upstream_port: int) -> Measured:
    work = settings.work / case.name
    server_admin_port = free_port()
    admin_url = f"http://127.0.0.1:{server_admin_port}"
    config_path = None if case.kind is Kind.NOOP else _write_server_config(case, settings, server_admin_port)
    # Before the slow start under valgrind: a case the check cannot model fails at once.
    expected = None if config_path is None else expected_plugin_calls(load_config(config_path), case.load.path)
    with _stack(case, config_path, work, upstream_port) as stack:
        pid = stack.server.pid
        assert pid is not None
        _h2load(stack, case.load, settings.warmup, "warm-up", work)
        _wait_idle(pid)
        envoy_before = _ext_proc_counters(stack)
        plugins_before = _plugin_counters(admin_url) if expected is not None else None
        _callgrind_control(pid, "--zero")
        load = _h2load(stack, case.load, settings.requests, "measured run", work)
        _wait_idle(pid)
        _callgrind_control(pid, "--dump")
        maps = Path(f"/proc/{pid}/maps").read_text()
        envoy_after = _ext_proc_counters(stack)
        plugins_after = _plugin_counters(admin_url) if expected is not None else None
    envoy_counters = {name: envoy_after[name] - envoy_before.get(name, 0) for name in sorted(envoy_after)}
    _check_envoy(case.name, envoy_counters, settings.requests)
    calls: dict[str, int] | None = None
    failures = None
    if expected is not None and plugins_before is not None and plugins_after is not None:
        moved = counter_delta(plugins_before[0], plugins_after[0])
        failures = plugins_after[1] - plugins_before[1]
        # Exact per plugin and export: each matching plugin once per request, the others never.
        wanted = {key: n * settings.requests for key, n in expected.items()}
        if moved != wanted or failures:
            raise RuntimeError(
                f"{case.name}: plugin calls {moved} ({failures} failed) over {settings.requests} requests; "
                f"the config says {wanted}"
            )
        calls = {f"{plugin} {export}": n for (plugin, export), n in sorted(moved.items())}
    (work / "maps.txt").write_text(maps)
    dump = work / "callgrind.out.1"
    with dump.open() as lines:
        profile = attribute_unknown(parse_callgrind(lines), parse_maps(maps))
    return Measured(case.name, settings.requests, load, envoy_counters, calls, failures, dump, profile)


def _check_envoy(variant: str, counters: dict[str, int], requests: int) -> None:
    bad = {name: counters.get(name, 0) for name in ("streams_failed", "message_timeouts", "failure_mode_allowed")}
    if counters.get("streams_started") != requests or any(bad.values()):
        raise RuntimeError(f"{variant}: Envoy's ext_proc counters over {requests} requests: {counters}")


# --- output ---------------------------------------------------------------------------------------------


def per_request(profile: Profile, requests: int) -> dict[str, float]:
    """Ir per request by object file name, most first."""
    by_name: Counter[str] = Counter()
    for path, cost in profile.by_object.items():
        by_name[object_name(path)] += cost
    return {name: cost / requests for name, cost in by_name.most_common()}


def _roles(profile: Profile) -> dict[str, str]:
    return {object_name(path): object_role(path) for path in profile.by_object}


def ir_per_request(results: Mapping[str, Measured]) -> dict[str, float]:
    return {name: result.profile.total / result.requests for name, result in results.items()}


def _top_functions(result: Measured, baseline: Measured | None) -> list[dict[str, Any]]:
    """The most costly functions by self Ir; with ``baseline``, each one's Ir/request there too."""
    profile, requests = result.profile, result.requests
    ranked = sorted(profile.by_function.items(), key=lambda item: -item[1])[:TOP_N]
    rows = []
    for key, cost in ranked:
        row = {
            "function": key[1],
            "object": object_name(key[0]),
            "ir_per_request": cost / requests,
            "share": cost / profile.total,
        }
        if baseline is not None:
            row[f"{baseline.variant}_ir_per_request"] = baseline.profile.by_function.get(key, 0) / baseline.requests
        rows.append(row)
    return rows


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _total_lines(ir: Mapping[str, float]) -> list[str]:
    floor = ir[NOOP.name]
    lines = ["## Total\n", "| variant | Ir/request | vs noop |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {_n(value)} | {value / floor:.2f}x |" for name, value in ir.items()]
    return lines


def _target_lines(ir: Mapping[str, float]) -> list[str]:
    found = targets(ir)
    if not found:
        return []
    lines = ["\n## Targets (in instructions)\n"]
    lines += ["| target | Ir/request | baseline Ir/request | ratio | limit | result |"]
    lines += ["| --- | ---: | ---: | ---: | ---: | --- |"]
    for target in found:
        lines.append(
            f"| {target.case} / {target.baseline} | {_n(ir[target.case])} | {_n(ir[target.baseline])} "
            f"| {target.ratio:.3f}x | <= {target.limit:.2f}x | {'PASS' if target.passed else 'MISS'} |"
        )
    return lines


def _object_lines(noop: Measured, ours: Measured) -> list[str]:
    noop_objects, our_objects = per_request(noop.profile, noop.requests), per_request(ours.profile, ours.requests)
    roles = _roles(noop.profile) | _roles(ours.profile)
    extra = ours.profile.total / ours.requests - noop.profile.total / noop.requests
    name = ours.variant
    lines = [f"\n## By shared object: {name} vs noop (Ir per request)\n"]
    lines += [f"| object | what | noop | {name} | {name} - noop | share of the difference |"]
    lines += ["| --- | --- | ---: | ---: | ---: | ---: |"]
    rows: list[tuple[str, str, float, float]] = []
    small: list[tuple[float, float]] = []
    for obj in sorted(roles, key=lambda n: -max(noop_objects.get(n, 0), our_objects.get(n, 0))):
        a, b = noop_objects.get(obj, 0.0), our_objects.get(obj, 0.0)
        if max(a, b) >= MIN_ROW_IR:
            rows.append((f"`{obj}`", roles[obj], a, b))
        else:
            small.append((a, b))
    if small:
        a, b = sum(a for a, _ in small), sum(b for _, b in small)
        rows.append((f"{len(small)} more objects", f"each < {MIN_ROW_IR} Ir/request", a, b))
    for obj, role, a, b in rows:
        share = f"{100 * (b - a) / extra:.1f} %" if extra else "-"
        lines.append(f"| {obj} | {role} | {_n(a)} | {_n(b)} | {b - a:+,.0f} | {share} |")
    return lines


def _function_lines(result: Measured, noop: Measured | None) -> list[str]:
    lines = [f"\n## Top {TOP_N} functions: {result.variant} (self Ir per request)\n"]
    if noop is None:
        lines += ["| # | function | object | Ir/request | % |", "| ---: | --- | --- | ---: | ---: |"]
    else:
        lines += [f"| # | function | object | Ir/request | % | noop | {result.variant} - noop |"]
        lines += ["| ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for rank, row in enumerate(_top_functions(result, noop), 1):
        line = (
            f"| {rank} | `{row['function']}` | `{row['object']}` | {_n(row['ir_per_request'])} "
            f"| {100 * row['share']:.1f} |"
        )
        if noop is not None:
            floor = row[f"{noop.variant}_ir_per_request"]
            line += f" {_n(floor)} | {row['ir_per_request'] - floor:+,.0f} |"
        lines.append(line)
    return lines


def _check_lines(results: Mapping[str, Measured]) -> list[str]:
    lines = ["\n## Checks\n"]
    lines += ["| variant | requests | failed | Envoy ext_proc streams | plugin calls | per request | h2load s |"]
    lines += ["| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for result in results.values():
        calls = per = "-"
        if result.plugin_calls is not None:
            total = sum(result.plugin_calls.values())
            calls, per = str(total), f"{total / result.requests:g}"
        lines.append(
            f"| {result.variant} | {result.load.requests} | {result.load.errors} "
            f"| {result.envoy_ext_proc.get('streams_started', 0)} | {calls} | {per} | {result.load.duration_s:.1f} |"
        )
    return lines


def render(results: Mapping[str, Measured], header: str) -> str:
    """The Markdown report; ``results`` by variant name, the no-op's included."""
    noop = results[NOOP.name]
    # The other no-op stacks are compared in the totals only.
    cases = [result for name, result in results.items() if name not in NOOP_STACKS]
    ir = ir_per_request(results)
    lines = [header, *_total_lines(ir), *_target_lines(ir)]
    for result in cases:
        lines += _object_lines(noop, result)
    lines += _function_lines(noop, None)
    for result in cases:
        lines += _function_lines(result, noop)
    lines += _check_lines(results)
    return "\n".join(lines) + "\n"


def to_json(results: Mapping[str, Measured], info: dict[str, str], command: str) -> dict[str, Any]:
    noop = results[NOOP.name]
    ir = ir_per_request(results)
    variants = {}
    for name, result in results.items():
        variants[name] = {
            "requests": result.requests,
            "ir_total": result.profile.total,
            "ir_per_request": ir[name],
            "vs_noop": ir[name] / ir[NOOP.name],
            "objects": [
                {"object": object_name(path), "what": object_role(path), "ir_per_request": cost / result.requests}
                for path, cost in sorted(result.profile.by_object.items(), key=lambda item: -item[1])
            ],
            "top_functions": _top_functions(result, None if result is noop else noop),
            "load": asdict(result.load),
            "envoy_ext_proc": result.envoy_ext_proc,
            "plugin_calls": result.plugin_calls,
            "plugin_failures": result.plugin_failures,
            "callgrind_file": str(result.callgrind_file),
        }
    found = [asdict(target) | {"name": target.name, "passed": target.passed} for target in targets(ir)]
    return {"machine": info, "command": command, "variants": variants, "targets": found}


def _tree_state() -> str:
    """Uncommitted changes measured along with the commit (read-only git)."""
    argv = ["git", "-C", str(REPO_ROOT), "diff", "--name-only", "HEAD", "--", "extproc", "bench"]
    changed = subprocess.run(argv, capture_output=True, text=True, check=False).stdout.split()
    return f"modified: {' '.join(changed)}" if changed else "clean"


def _valgrind_version() -> str:
    return subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=True).stdout.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per variant (default 2000)")
    parser.add_argument("--warmup", type=int, default=300, help="requests before the counters are zeroed")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    choices = ", ".join(case.name for case in CASES if measurable(case))
    parser.add_argument(
        "--cases",
        default=DEFAULT_CASES,
        help=f"comma-separated bench cases to run besides noop, from {choices} (default {DEFAULT_CASES})",
    )
    parser.add_argument(
        "--noop-stacks",
        default="",
        help=f"comma-separated other gRPC stacks to run the no-op on, from {', '.join(_OTHER_NOOPS)} (default none)",
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup < 1:
        parser.error("--requests and --warmup must be positive")
    try:
        cases = parse_cases(args.cases)
        noop_variants = parse_noop_stacks(args.noop_stacks)
    except ValueError as e:
        parser.error(str(e))

    loadgen.ensure_tools()
    loadgen.ensure_commands({"valgrind": "valgrind", "callgrind_control": "valgrind"})
    for package in sorted({package for case in noop_variants for package in STACK_PACKAGES[NOOP_STACKS[case.name]]}):
        pip_install(package, importlib.util.find_spec(package) is not None)
    out: Path = args.out.resolve()
    work = out / "work" / "instructions"
    shutil.rmtree(work, ignore_errors=True)
    settings = Settings(requests=args.requests, warmup=args.warmup, work=work, plugin_dir=ensure_built())
    command = "python -m bench.lab.instructions " + " ".join(argv if argv is not None else sys.argv[1:])
    info = machine() | {"valgrind": _valgrind_version(), "tree": _tree_state()}
    print(f"instructions: {args.requests} requests per variant under callgrind; work files in {work}", flush=True)

    results: dict[str, Measured] = {}
    with upstream(work) as (upstream_port, _):
        for case in (NOOP, *noop_variants, *cases):
            started = time.monotonic()
            results[case.name] = measure(case, settings, upstream_port)
            per_req = results[case.name].profile.total / args.requests
            print(f"  {case.name}: {per_req:,.0f} Ir/request ({time.monotonic() - started:.0f}s)", flush=True)

    facts = ", ".join(f"{key} {value}" for key, value in info.items())
    header = (
        f"# Instructions per request (callgrind)\n\n{facts}\n\nCommand: `{command.strip()}`: per variant "
        f"{args.warmup} warm-up requests, counters zeroed, {args.requests} requests through Envoy "
        f"(h2load -c{CONNECTIONS}), counters dumped. Self Ir (instructions executed in user space, all "
        "threads); the kernel is not counted. See bench/lab/instructions.py.\n"
    )
    text = render(results, header)
    out.mkdir(parents=True, exist_ok=True)
    (out / "instructions.md").write_text(text)
    data = to_json(results, info, command.strip())
    (out / "instructions.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(text)
    print(f"instructions: wrote {out / 'instructions.md'}, {out / 'instructions.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
