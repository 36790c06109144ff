"""Instructions per request of an ext_proc server, by shared object and by function: callgrind counts.

Run as ``python bench/instructions.py [--requests N]``. CPU time per request varies by about ±15 %
between runs on a shared VM; the number of instructions executed (callgrind's ``Ir``) hardly does.
For each variant, ``noop`` (bench/noop_server.py, the floor) and ``extproc`` (``extproc serve`` with
the bench's one-header-plugin config), the server runs under ``valgrind --tool=callgrind`` behind
the bench's Envoy and direct_response upstream (as in bench/run.py). h2load sends a warm-up, the
counters are zeroed, h2load sends N requests (4 connections: valgrind runs the server about 30x
slower), and the counters are dumped. Start-up, warm-up and shutdown are not counted.

Counted: user-space instructions of every thread of the server. Not counted: the kernel (syscalls,
context switches, epoll), which CPU time includes. Each variant runs with ``PYTHONHASHSEED=0``;
what is left to vary is thread interleaving (lock spinning, batching), about 1-2 % between runs.

Writes bench/results/instructions.md and .json (``--out``); callgrind files and logs are under
bench/results/work/instructions/. valgrind (Debian package) is installed on first use.
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
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Iterable, Iterator  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from typing import Any  # noqa: E402

from bench import loadgen, procstat  # noqa: E402
from bench.cases import server_config  # noqa: E402
from bench.envoy_configs import ProxyFilter, proxy_bootstrap, upstream_bootstrap  # noqa: E402
from bench.loadgen import Load, LoadError, LoadResult  # noqa: E402
from bench.run import NOOP_SERVER, _envoy, _write_yaml, machine  # noqa: E402
from tests.e2e.envoy_config import EXT_PROC_STATS  # noqa: E402
from tests.e2e.harness import (  # noqa: E402
    ManagedProcess,
    Stack,
    default_server_cmd,
    free_port,
    scrape_metrics,
    wait_for_port,
    wait_until,
)

# mypy takes tests/plugins/build/ (the output folder) for a namespace package; Python imports build.py.
from tests.plugins.build import ensure_built  # type: ignore[attr-defined]  # noqa: E402

VARIANTS = ("noop", "extproc")
CONNECTIONS = 4
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


# --- measuring ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    requests: int
    warmup: int
    work: Path
    plugin_dir: Path


@dataclass(frozen=True)
class Measured:
    variant: str
    requests: int
    load: LoadResult
    envoy_ext_proc: dict[str, int]  # Envoy's ext_proc counters over the measured run
    plugin_calls: int | None  # the server's plugin call counter over the measured run (extproc only)
    plugin_failures: int | None
    callgrind_file: Path
    profile: Profile


def ensure_valgrind() -> None:
    """Install valgrind with apt-get when it is missing (the bench runs as root)."""
    if shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None:
        return
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "valgrind"]):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")


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
    return {name.removeprefix(EXT_PROC_STATS + "."): v for name, v in stack.envoy_stats(EXT_PROC_STATS + ".").items()}


def _plugin_counters(admin_url: str) -> tuple[int, int]:
    samples = scrape_metrics(admin_url)
    calls = sum(v for (name, _), v in samples.items() if name == "extproc_plugin_calls_total")
    failures = sum(v for (name, _), v in samples.items() if name == "extproc_plugin_failures_total")
    return int(calls), int(failures)


def _server_argv(variant: str, settings: Settings, port: int, admin_port: int) -> list[str]:
    if variant == "noop":
        return [sys.executable, str(NOOP_SERVER), "--port", str(port)]
    config = server_config(("header",), settings.plugin_dir)
    # The admin endpoint's counters show the plugin ran once per request. It is scraped outside the
    # window; its idle thread wakes twice a second, a few hundred Ir per request at most.
    config["server"]["admin_listen"] = f"127.0.0.1:{admin_port}"
    return default_server_cmd(_write_yaml(settings.work / variant / "extproc.yaml", config), port)


@contextlib.contextmanager
def _stack(variant: str, settings: Settings, upstream_port: int, server_admin_port: int) -> Iterator[Stack]:
    work = settings.work / variant
    out_file = work / "callgrind.out"
    port, listen_port, admin_port = free_port(), free_port(), free_port()
    argv = _valgrind_argv(out_file) + _server_argv(variant, settings, port, server_admin_port)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONHASHSEED": "0"}
    bootstrap = proxy_bootstrap(
        proxy_filter=ProxyFilter.EXT_PROC,
        listen_port=listen_port,
        admin_port=admin_port,
        upstream_port=upstream_port,
        extproc_port=port,
        message_timeout_ms=MESSAGE_TIMEOUT_MS,
    )
    with ManagedProcess(variant, argv, work / "server.log", env=env, cwd=REPO_ROOT) as server:
        wait_for_port("127.0.0.1", port, STARTUP_TIMEOUT_S, process=server)
        # Stopped before the server: Envoy never sees the server vanish under live streams.
        with _envoy("envoy", bootstrap, work, listen_port) as envoy:
            yield Stack(
                listen_port=listen_port,
                admin_port=admin_port,
                extproc_port=port,
                upstream_port=upstream_port,
                server=server,
                envoy=envoy,
                config_path=work / "extproc.yaml",
                bootstrap_path=work / "envoy.yaml",
                bootstrap=bootstrap,
            )


def _h2load(stack: Stack, requests: int, what: str, work: Path) -> LoadResult:
    # A folder per run: h2load appends to its --log-file, which would mix the runs' requests.
    run_dir = work / what.replace(" ", "-")
    run_dir.mkdir(parents=True, exist_ok=True)
    result = loadgen.run_h2load(stack.url, Load(), requests=requests, connections=CONNECTIONS, work_dir=run_dir)
    if result.errors or result.requests != requests:
        raise LoadError(
            f"{what}: {result.errors} of {result.requests} requests failed ({requests} sent)\n"
            f"--- server log (tail) ---\n{stack.server_log()[-3000:]}\n"
            f"--- Envoy log (tail) ---\n{stack.envoy_log()[-3000:]}"
        )
    return result


def measure(variant: str, settings: Settings, upstream_port: int) -> Measured:
    work = settings.work / variant
    server_admin_port = free_port()
    admin_url = f"http://127.0.0.1:{server_admin_port}"
    with _stack(variant, settings, upstream_port, server_admin_port) as stack:
        pid = stack.server.pid
        assert pid is not None
        _h2load(stack, settings.warmup, "warm-up", work)
        _wait_idle(pid)
        envoy_before = _ext_proc_counters(stack)
        plugins_before = _plugin_counters(admin_url) if variant == "extproc" else None
        _callgrind_control(pid, "--zero")
        load = _h2load(stack, settings.requests, "measured run", work)
        _wait_idle(pid)
        _callgrind_control(pid, "--dump")
        maps = Path(f"/proc/{pid}/maps").read_text()
        envoy_after = _ext_proc_counters(stack)
        plugins_after = _plugin_counters(admin_url) if plugins_before is not None else None
    envoy_counters = {name: envoy_after[name] - envoy_before.get(name, 0) for name in sorted(envoy_after)}
    _check_envoy(variant, envoy_counters, settings.requests)
    calls = failures = None
    if plugins_before is not None and plugins_after is not None:
        calls, failures = plugins_after[0] - plugins_before[0], plugins_after[1] - plugins_before[1]
        if calls != settings.requests or failures:
            raise RuntimeError(f"{variant}: {calls} plugin calls ({failures} failed) for {settings.requests} requests")
    (work / "maps.txt").write_text(maps)
    dump = work / "callgrind.out.1"
    with dump.open() as lines:
        profile = attribute_unknown(parse_callgrind(lines), parse_maps(maps))
    return Measured(variant, settings.requests, load, envoy_counters, calls, failures, dump, profile)


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


def _top_functions(profile: Profile, requests: int) -> list[dict[str, Any]]:
    ranked = sorted(profile.by_function.items(), key=lambda item: -item[1])[:TOP_N]
    return [
        {"function": fn, "object": object_name(ob), "ir_per_request": cost / requests, "share": cost / profile.total}
        for (ob, fn), cost in ranked
    ]


def _n(value: float) -> str:
    return f"{value:,.0f}"


def render(results: dict[str, Measured], header: str) -> str:
    noop, ours = results["noop"], results["extproc"]
    noop_objects, our_objects = per_request(noop.profile, noop.requests), per_request(ours.profile, ours.requests)
    roles = _roles(noop.profile) | _roles(ours.profile)
    noop_total, our_total = noop.profile.total / noop.requests, ours.profile.total / ours.requests
    extra = our_total - noop_total
    lines = [header, "## Total\n", "| variant | Ir/request | vs noop |", "| --- | ---: | ---: |"]
    lines += [f"| noop | {_n(noop_total)} | 1.00x |", f"| extproc | {_n(our_total)} | {our_total / noop_total:.2f}x |"]
    lines += ["\n## By shared object (Ir per request)\n"]
    lines += ["| object | what | noop | extproc | extproc - noop | share of the difference |"]
    lines += ["| --- | --- | ---: | ---: | ---: | ---: |"]
    rows: list[tuple[str, str, float, float]] = []
    small: list[tuple[float, float]] = []
    for name in sorted(roles, key=lambda n: -max(noop_objects.get(n, 0), our_objects.get(n, 0))):
        a, b = noop_objects.get(name, 0.0), our_objects.get(name, 0.0)
        if max(a, b) >= MIN_ROW_IR:
            rows.append((f"`{name}`", roles[name], a, b))
        else:
            small.append((a, b))
    if small:
        a, b = sum(a for a, _ in small), sum(b for _, b in small)
        rows.append((f"{len(small)} more objects", f"each < {MIN_ROW_IR} Ir/request", a, b))
    for name, role, a, b in rows:
        share = f"{100 * (b - a) / extra:.1f} %" if extra else "-"
        lines.append(f"| {name} | {role} | {_n(a)} | {_n(b)} | {b - a:+,.0f} | {share} |")
    for result in (noop, ours):
        lines += [f"\n## Top {TOP_N} functions: {result.variant} (self Ir per request)\n"]
        lines += ["| # | function | object | Ir/request | % |", "| ---: | --- | --- | ---: | ---: |"]
        for rank, row in enumerate(_top_functions(result.profile, result.requests), 1):
            lines.append(
                f"| {rank} | `{row['function']}` | `{row['object']}` | {_n(row['ir_per_request'])} "
                f"| {100 * row['share']:.1f} |"
            )
    lines += ["\n## Checks\n", "| variant | requests | failed | Envoy ext_proc streams | plugin calls | h2load s |"]
    lines += ["| --- | ---: | ---: | ---: | ---: | ---: |"]
    for result in (noop, ours):
        calls = "-" if result.plugin_calls is None else str(result.plugin_calls)
        lines.append(
            f"| {result.variant} | {result.load.requests} | {result.load.errors} "
            f"| {result.envoy_ext_proc.get('streams_started', 0)} | {calls} | {result.load.duration_s:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _json(results: dict[str, Measured], info: dict[str, str], command: str) -> dict[str, Any]:
    variants = {}
    for name, result in results.items():
        variants[name] = {
            "requests": result.requests,
            "ir_total": result.profile.total,
            "ir_per_request": result.profile.total / result.requests,
            "objects": [
                {"object": object_name(path), "what": object_role(path), "ir_per_request": cost / result.requests}
                for path, cost in sorted(result.profile.by_object.items(), key=lambda item: -item[1])
            ],
            "top_functions": _top_functions(result.profile, result.requests),
            "load": asdict(result.load),
            "envoy_ext_proc": result.envoy_ext_proc,
            "plugin_calls": result.plugin_calls,
            "plugin_failures": result.plugin_failures,
            "callgrind_file": str(result.callgrind_file),
        }
    noop, ours = results["noop"], results["extproc"]
    ratio = (ours.profile.total / ours.requests) / (noop.profile.total / noop.requests)
    return {"machine": info, "command": command, "variants": variants, "ratio_extproc_to_noop": ratio}


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
    args = parser.parse_args(argv)
    if args.requests < 1 or args.warmup < 1:
        parser.error("--requests and --warmup must be positive")

    loadgen.ensure_tools()
    ensure_valgrind()
    out: Path = args.out.resolve()
    work = out / "work" / "instructions"
    shutil.rmtree(work, ignore_errors=True)
    settings = Settings(requests=args.requests, warmup=args.warmup, work=work, plugin_dir=ensure_built())
    command = "python bench/instructions.py " + " ".join(argv if argv is not None else sys.argv[1:])
    info = machine() | {"valgrind": _valgrind_version(), "tree": _tree_state()}
    print(f"instructions: {args.requests} requests per variant under callgrind; work files in {work}", flush=True)

    results: dict[str, Measured] = {}
    upstream_port = free_port()
    with _envoy("upstream", upstream_bootstrap(listen_port=upstream_port, admin_port=free_port()), work, upstream_port):
        for variant in VARIANTS:
            started = time.monotonic()
            results[variant] = measure(variant, settings, upstream_port)
            per_req = results[variant].profile.total / args.requests
            print(f"  {variant}: {per_req:,.0f} Ir/request ({time.monotonic() - started:.0f}s)", flush=True)

    facts = ", ".join(f"{key} {value}" for key, value in info.items())
    header = (
        f"# Instructions per request (callgrind)\n\n{facts}\n\nCommand: `{command.strip()}`: per variant "
        f"{args.warmup} warm-up requests, counters zeroed, {args.requests} requests through Envoy "
        f"(h2load -c{CONNECTIONS}), counters dumped. Self Ir (instructions executed in user space, all "
        "threads); the kernel is not counted. See bench/instructions.py.\n"
    )
    text = render(results, header)
    out.mkdir(parents=True, exist_ok=True)
    (out / "instructions.md").write_text(text)
    data = _json(results, info, command.strip())
    (out / "instructions.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(text)
    print(f"instructions: wrote {out / 'instructions.md'}, {out / 'instructions.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
