"""py-spy profile of a server under wrk load, reduced to own-time and per-layer tables.

``python -m bench.lab.profile [--duration S] [--out bench/results]`` profiles the bench's one-header-plugin
case and writes profile.md, profile.svg (py-spy flame graph, all threads, waits included) and the collapsed
stacks profile-busy.txt / profile-gil.txt. It installs py-spy (pip) and perf (Debian's linux-perf) on first
use. Three views, all taken while wrk drives the case:

- busy: every thread sampled (``--nonblocking``, so the server is not paused 250 times a second),
  minus samples sleeping in a known blocking call (py-spy's own idle detection does not catch
  them here) and minus the main thread, which only waits for signals. Native code that releases
  the GIL (extism's wasm call, grpc's C core) shows as the Python line that called it.
- gil: only the thread holding the GIL (``--gil``): how the one Python interpreter lock is spent.
- threads: CPU per thread name from /proc/<pid>/task/*/stat, which separates gRPC's C-core
  threads (``event_engine``, ...) from the Python threads running handlers.
- binaries: ``perf record -e cpu-clock``: true on-CPU time per shared object (interpreter, kernel,
  grpc's cygrpc, protobuf's upb, extism, libc), which py-spy cannot give since it only sees Python
  frames and GIL waits look busy to it.

A sample's layer is that of its innermost frame belonging to a layer, so time in a lock taken by
grpc's code is charged to the lock, not to grpc.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import loadgen
from bench.cases import CASES
from bench.lab import case_settings, pip_install, serving
from bench.loadgen import Load

# The case profiled: one header plugin.
PROFILE_CASE = "header"

SAMPLE_RATE_HZ = 250
TOP_N = 15

# Innermost frames in which a thread sleeps (Python 3.11, grpcio 1.85): a waiter's lock, the
# thread pool's queue, grpc's completion-queue poll. A change of version moves the lines; the
# report prints the waiting share, so a miss shows up as busy time in these functions.
WAIT_FRAMES = (
    "Condition.wait (threading.py:",
    "Event.wait (threading.py:",
    "_worker (concurrent/futures/thread.py:",
    "_serve (grpc/_server.py:1314)",
)
MAIN_THREAD_MARK = "_run_module_as_main ("

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("extism (Python wrapper + the wasm call)", ("extism/",)),
    ("extproc.contract (plugin input/output JSON)", ("extproc/contract.py",)),
    ("extproc, other modules", ("extproc/",)),
    ("threading / concurrent.futures (locks, handoff)", ("threading.py", "concurrent/futures/", "queue.py")),
    ("grpcio + protobuf", ("grpc/", "grpc_", "protobuf", "_pb2", "upb")),
)
OTHER_LAYER = "other"


@dataclass(frozen=True)
class Profile:
    samples: int  # samples kept
    waiting: int  # samples dropped as sleeping (or on the main thread)
    own: list[tuple[str, int]]  # (innermost frame, samples), most first
    layers: list[tuple[str, int]]


def layer_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, marks in LAYERS:
            if any(mark in frame for mark in marks):
                return name
    return OTHER_LAYER


def parse_collapsed(lines: Iterable[str], *, drop_waiting: bool) -> Profile:
    """py-spy's ``--format raw`` output: one ``outer;...;innermost COUNT`` line per distinct stack."""
    own: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    kept = waiting = 0
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        if drop_waiting and (
            any(frames[-1].startswith(mark) for mark in WAIT_FRAMES) or any(MAIN_THREAD_MARK in f for f in frames)
        ):
            waiting += count
            continue
        kept += count
        own[frames[-1]] += count
        layers[layer_of(frames)] += count
    return Profile(kept, waiting, own.most_common(), layers.most_common())


def _thread_ticks(pid: int) -> dict[int, tuple[str, int]]:
    ticks = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # the thread ended
        ticks[int(tid)] = (name, int(fields[11]) + int(fields[12]))
    return ticks


def thread_cpu(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]) -> list[tuple[str, int]]:
    """CPU ticks per thread name (digits stripped, so numbered pool threads group) between two reads."""
    by_name: Counter[str] = Counter()
    for tid, (name, ticks) in after.items():
        by_name[name.rstrip("0123456789_-")] += ticks - before.get(tid, (name, 0))[1]
    return by_name.most_common()


def _share(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}" if total else "-"


def render(busy: Profile, gil: Profile, threads: list[tuple[str, int]], perf: str, note: str) -> str:
    lines = [
        "# py-spy profile: one header plugin under wrk -c16\n",
        f"{note}\n",
        f"## Busy samples: top {TOP_N} innermost frames (own time)\n",
        f"{busy.samples} busy samples; {busy.waiting} more were threads sleeping (dropped).\n",
        "| # | own % | frame |",
        "| ---: | ---: | --- |",
    ]
    for rank, (frame, count) in enumerate(busy.own[:TOP_N], 1):
        lines.append(f"| {rank} | {_share(count, busy.samples)} | `{frame}` |")
    lines += ["\n## By layer (innermost frame that belongs to a layer)\n", "| layer | busy % | GIL-holder % |"]
    lines.append("| --- | ---: | ---: |")
    gil_layers = dict(gil.layers)
    for name, count in busy.layers:
        lines.append(f"| {name} | {_share(count, busy.samples)} | {_share(gil_layers.get(name, 0), gil.samples)} |")
    lines += [f"\nGIL-holder samples: {gil.samples}. Top {TOP_N} while holding the GIL:\n"]
    lines += ["| # | own % | frame |", "| ---: | ---: | --- |"]
    for rank, (frame, count) in enumerate(gil.own[:TOP_N], 1):
        lines.append(f"| {rank} | {_share(count, gil.samples)} | `{frame}` |")
    total = sum(ticks for _, ticks in threads)
    lines += ["\n## Server CPU by thread name (/proc, over the busy-sample recording)\n"]
    lines += ["| thread | CPU % of the server's |", "| --- | ---: |"]
    lines += [f"| {name} | {_share(ticks, total)} |" for name, ticks in threads if ticks]
    lines += [f"\n## On-CPU time by binary (perf, cpu-clock), top {TOP_N}\n", perf]
    return "\n".join(lines) + "\n"


def parse_perf_report(text: str) -> list[tuple[str, float]]:
    """``perf report --stdio -g none`` lines ``  42.52%  libpython3.11.so.1.0  [.] symbol`` -> (rest, %)."""
    rows = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or "%" not in stripped.split()[0]:
            continue
        percent, _, rest = stripped.partition("%")
        rows.append((" ".join(rest.split()), float(percent)))
    return rows


def _perf_tables(perf_data: Path) -> str:
    sections = []
    for sort, title in (("dso", "shared object"), ("dso,sym", "shared object and symbol")):
        proc = subprocess.run(
            ["perf", "report", "-i", str(perf_data), "--no-children", "--sort", sort, "--stdio", "-g", "none"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"perf report failed ({proc.returncode}): {proc.stderr.strip()}")
        rows = parse_perf_report(proc.stdout)[:TOP_N]
        table = [f"| {title} | CPU % |", "| --- | ---: |", *(f"| `{name}` | {pct:.1f} |" for name, pct in rows)]
        sections.append("\n".join(table))
    return "\n\n".join(sections)


def py_spy_path() -> str | None:
    """The py-spy executable: on PATH, or beside this interpreter (pip's scripts folder)."""
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else None


def _py_spy() -> str:
    found = py_spy_path()
    if found is None:
        raise RuntimeError("py-spy is not installed (pip install py-spy)")
    return found


def _py_spy_record(pid: int, seconds: int, fmt: str, path: Path, *flags: str) -> None:
    argv = [_py_spy(), "record", "-r", str(SAMPLE_RATE_HZ), "-d", str(seconds), "--format", fmt, "-o", str(path)]
    proc = subprocess.run([*argv, *flags, "--pid", str(pid)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"py-spy failed ({proc.returncode}): {proc.stderr.strip()}")


def record(url: str, load: Load, pid: int, duration_s: float, out: Path, work: Path) -> Path:
    """Profile ``pid`` under wrk load; writes profile.svg (flame graph, all threads, waits included),
    profile-busy.txt / profile-gil.txt (collapsed stacks) and profile.md."""
    work.mkdir(parents=True, exist_ok=True)
    loadgen.run_wrk(url, load, duration_s=2, connections=16, work_dir=work)  # warm-up
    seconds = max(2, round(duration_s))
    busy_raw, gil_raw, svg = out / "profile-busy.txt", out / "profile-gil.txt", out / "profile.svg"
    perf_data = work / "perf.data"
    wrk = subprocess.Popen(
        ["wrk", "-t1", "-c16", f"-d{4 * seconds + 10}s", url + load.path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1)  # wrk connecting; the recordings below bound the measurement, not this
        before = _thread_ticks(pid)
        _py_spy_record(pid, seconds, "raw", busy_raw, "--nonblocking", "--idle")
        threads = thread_cpu(before, _thread_ticks(pid))
        _py_spy_record(pid, seconds, "raw", gil_raw, "--nonblocking", "--gil")
        _py_spy_record(pid, seconds, "flamegraph", svg, "--nonblocking")
        perf = ["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-p", str(pid), "-o", str(perf_data)]
        subprocess.run([*perf, "--", "sleep", str(seconds)], capture_output=True, check=True)
    finally:
        wrk.terminate()
        wrk.wait()
    busy = parse_collapsed(busy_raw.read_text().splitlines(), drop_waiting=True)
    gil = parse_collapsed(gil_raw.read_text().splitlines(), drop_waiting=False)
    note = f"py-spy record -r {SAMPLE_RATE_HZ} --nonblocking, {seconds} s per view; see bench/lab/profile.py."
    report = out / "profile.md"
    report.write_text(render(busy, gil, threads, _perf_tables(perf_data), note))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    settings = case_settings(argv, __doc__ or "", "seconds per view")
    loadgen.ensure_commands({"perf": "linux-perf"})
    pip_install("py-spy", py_spy_path() is not None)
    case = next(c for c in CASES if c.name == PROFILE_CASE)
    with serving(case, settings) as (running, pid):
        report = record(running.url, case.load, pid, settings.duration_s, settings.out, settings.work / "profile")
    print(report.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
