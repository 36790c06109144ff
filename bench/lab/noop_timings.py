"""Where the no-op's ext_proc call spends its time: ``python -m bench.lab.noop_timings [--duration S]``.

Runs the bench's no-op case with the timed grpcio no-op (bench/lab/noop_servers.py ``--stack timed``)
behind the suite's Envoy, finds its peak with wrk, then records five moments of each stream during a
run paced to half the peak: when grpcio's polling thread dispatches it, when a pool thread starts the
handler, when the first message is in hand, when the reply is yielded, and when the generator resumes.
Each stream is lined up with Envoy's log line of the same request (by x-request-id), which gives the
spans before the server and on the way back. Prints, and writes to noop-timings.md (``--out``), each
span's p50 and p99 next to the call's p99 as Envoy timed it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence

from bench import loadgen, run
from bench.envoy_configs import CallRecord
from bench.lab import case_settings, serving
from bench.lab.noop_servers import read_timings, recording_marker, spans, stack_case
from support.processes import wait_until


def span_percentiles(timings_text: str, calls: Sequence[CallRecord]) -> dict[str, tuple[float, float]]:
    """p50 and p99 (us) of each span the no-op timed, with the spans before and after it from Envoy's
    log line of the same request."""
    by_request = {call.request_id: (call.started_s, call.latency_us) for call in calls if call.latency_us is not None}
    found = spans(read_timings(timings_text), by_request)
    return {
        name: (loadgen.percentile(sorted(values), 0.5), loadgen.percentile(sorted(values), 0.99))
        for name, values in found.items()
        if values
    }


def render(percentiles: dict[str, tuple[float, float]], call_p99_us: float | None) -> str:
    lines = ["| span | p50 ms | p99 ms |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {p50 / 1000:.2f} | {p99 / 1000:.2f} |" for name, (p50, p99) in percentiles.items()]
    call = "-" if call_p99_us is None else f"{call_p99_us / 1000:.2f}"
    lines.append(f"| ext_proc call as Envoy timed it | - | {call} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    settings = case_settings(argv, __doc__ or "", "seconds of the peak run")
    timings = settings.work / "noop_timed" / "stream-timings.txt"
    case = stack_case("noop_timed", "timed", "--timings", str(timings))
    with serving(case, settings) as (running, pid):
        run.warm_up(case, settings, running)
        peak = run.peak_run(case, settings, running)
        started = time.time()
        os.kill(pid, signal.SIGUSR1)
        wait_until(recording_marker(timings).exists, 10.0, f"the no-op to start timing streams ({timings})")
        half = run.paced_run(case, settings, running, peak.rps / 2)
        os.kill(pid, signal.SIGUSR2)
        wait_until(timings.exists, 10.0, f"the no-op's stream timings in {timings}")
        calls = run.logged_calls(running, half.result, started, time.time())
    text = (
        f"# Where the no-op's ext_proc call spends its time\n\nPeak {peak.rps:,.0f} req/s; paced to "
        f"{half.rate:,.0f} req/s for {settings.duration_s / 2:g} s.\n\n"
        f"{render(span_percentiles(timings.read_text(), calls), run.call_p99_us(calls))}"
    )
    settings.out.mkdir(parents=True, exist_ok=True)
    (settings.out / "noop-timings.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
