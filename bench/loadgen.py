"""Load generators: wrk for peak throughput and for a set request rate, h2load for a request count.

Peak: wrk keeps every connection busy (closed loop), so its requests/s is what the stack sustains.

Set rate: wrk2 is not packaged in Debian, and h2load's ``--rps`` starts every client's timer at the
same instant, so its clients fire in lockstep and the p99 measures how fast a burst of 16
simultaneous requests drains rather than latency at that rate. So wrk paces itself from Lua:
``delay()`` (called before each request) hands out send times from one Poisson arrival schedule
at the set rate, taken by whichever connection is free. Latency is timed from the actual send,
so a request that found all connections busy does not count its wait (fine well below the peak).

h2load sends an exact number of requests (``-n``), which the memory run needs; its per-request
log gives the latencies. Both tools come from Debian packages and are installed on first use.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Debian package of each tool.
PACKAGES = {"wrk": "wrk", "h2load": "nghttp2-client"}

_WRK_MARK = "BENCH_JSON "

# wrk's done() hook prints exact numbers, so nothing depends on wrk's human-readable units.
_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}\\n',
    "MARK", summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
""".replace("MARK", _WRK_MARK)


class LoadError(RuntimeError):
    """A load generator failed or reported failed requests."""


@dataclass(frozen=True)
class Load:
    """What one load run sends: ``body_bytes`` > 0 means a POST with that many bytes."""

    path: str = "/"
    body_bytes: int = 0


@dataclass(frozen=True)
class LoadResult:
    requests: int
    duration_s: float
    p50_us: float
    p99_us: float
    errors: int  # failed requests: socket errors, timeouts and non-2xx/3xx statuses

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s


def ensure_tools() -> None:
    """Install wrk and h2load with apt-get when they are missing (the bench runs as root)."""
    ensure_commands(PACKAGES)


def ensure_commands(packages: Mapping[str, str]) -> None:
    """Install with apt-get the Debian package (the value) of each command (the key) not on PATH."""
    missing = sorted({package for command, package in packages.items() if shutil.which(command) is None})
    if not missing:
        return
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise LoadError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")


def body_file(work_dir: Path, size: int) -> Path:
    """A request body of ``size`` bytes of ASCII text (the transform plugin only edits UTF-8 text)."""
    path = work_dir / f"body-{size}.txt"
    if not path.exists():
        path.write_bytes(b"a" * size)
    return path


# LuaJIT's ffi gives the monotonic clock in ms that wrk's Lua API lacks. wrk's timers take whole
# milliseconds, so a wait is rounded up or down at random in proportion to its fraction, which
# keeps the mean gap exact.
_WRK_PACE = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local mean_gap_ms = 1000 / RATE
local next_ms = nil
math.randomseed(os.time())
delay = function()
  local now = now_ms()
  next_ms = (next_ms or now) - math.log(1 - math.random()) * mean_gap_ms
  local wait = next_ms - now
  if wait <= 0 then return 0 end
  local whole = math.floor(wait)
  if math.random() < wait - whole then whole = whole + 1 end
  return whole
end
"""


def _wrk_script(work_dir: Path, load: Load, rate: float | None) -> Path:
    lines = []
    if rate is not None:
        if rate <= 0:
            raise ValueError(f"request rate must be positive, got {rate}")
        lines.append(_WRK_PACE.replace("RATE", repr(float(rate))))
    if load.body_bytes:
        lines += [
            'wrk.method = "POST"',
            f'wrk.body = string.rep("a", {load.body_bytes})',
            'wrk.headers["Content-Type"] = "text/plain"',
        ]
    path = work_dir / ("wrk-peak.lua" if rate is None else "wrk-rate.lua")
    path.write_text("\n".join(lines) + _WRK_DONE)
    return path


def parse_wrk(stdout: str) -> LoadResult:
    for line in stdout.splitlines():
        if line.startswith(_WRK_MARK):
            data = json.loads(line.removeprefix(_WRK_MARK))
            errors = sum(int(data[key]) for key in ("connect", "read", "write", "status", "timeout"))
            return LoadResult(
                requests=int(data["requests"]),
                duration_s=int(data["duration_us"]) / 1e6,
                p50_us=float(data["p50_us"]),
                p99_us=float(data["p99_us"]),
                errors=errors,
            )
    raise LoadError(f"wrk printed no result line; its output:\n{stdout}")


def run_wrk(
    base_url: str,
    load: Load,
    *,
    duration_s: float,
    connections: int,
    work_dir: Path,
    rate: float | None = None,
) -> LoadResult:
    """``connections`` connections, each sending its next request as soon as the last returns, or
    (``rate`` set) Poisson arrivals at ``rate`` requests/s served by whichever connection is free."""
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "5s",
        "-s",
        str(_wrk_script(work_dir, load, rate)),
        base_url + load.path,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=duration_s + 60)
    if proc.returncode != 0:
        raise LoadError(f"`{' '.join(argv)}` failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return parse_wrk(proc.stdout)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def parse_h2load_log(text: str, duration_s: float) -> LoadResult:
    """h2load's --log-file: start time (us since epoch), status (-1 = failed stream), duration (us)."""
    durations: list[float] = []
    errors = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        _start, status, took = line.split("\t")[:3]
        if not 200 <= int(status) < 400:
            errors += 1
        durations.append(float(took))
    durations.sort()
    if not durations:
        raise LoadError("h2load logged no requests")
    return LoadResult(
        requests=len(durations),
        duration_s=duration_s,
        p50_us=percentile(durations, 0.50),
        p99_us=percentile(durations, 0.99),
        errors=errors,
    )


def run_h2load(base_url: str, load: Load, *, requests: int, connections: int, work_dir: Path) -> LoadResult:
    """Exactly ``requests`` HTTP/1.1 requests, as fast as ``connections`` connections go."""
    log_path = work_dir / "h2load.log"
    # h2load appends to an existing log: a second run in the same folder would count the first's requests.
    log_path.unlink(missing_ok=True)
    argv = ["h2load", "--h1", f"-c{connections}", f"-n{requests}", f"--log-file={log_path}"]
    if load.body_bytes:
        argv += ["-H", "content-type: text/plain", "-d", str(body_file(work_dir, load.body_bytes))]
    argv.append(base_url + load.path)
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=3600)
    if proc.returncode != 0:
        raise LoadError(f"`{' '.join(argv)}` failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return parse_h2load_log(log_path.read_text(), _h2load_elapsed(proc.stdout))


def _h2load_elapsed(stdout: str) -> float:
    # "finished in 7.10s, 14084.51 req/s, 1.02MB/s"
    for line in stdout.splitlines():
        if line.startswith("finished in "):
            value = line.removeprefix("finished in ").split(",")[0]
            if value.endswith("ms"):
                return float(value[:-2]) / 1000
            return float(value.removesuffix("s"))
    raise LoadError(f"h2load printed no 'finished in' line; its output:\n{stdout}")
