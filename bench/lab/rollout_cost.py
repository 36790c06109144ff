"""What the rollout features cost per request: CPU of ``ExchangeStream.handle`` in process, per variant.

``python -m bench.lab.rollout_cost [--requests N] [--rounds R]`` runs the bench's one-header-plugin
config (bench/cases.py, case ``header``) through the stream state machine as bench/lab/inprocess.py does,
in these variants: ``plain`` (no candidate, nothing watched: what every server without the features
runs), ``outcomes`` (server.outcome_metadata), ``record-1%`` and ``record-100%`` (extproc serve --record,
into a temporary folder), ``shadow`` (a shadow candidate on every exchange; the shadow calls, on plugin
threads, are waited for after each request and counted) and ``canary`` (half of the request ids served by
the candidate). CPU is the process's (every thread: the shadow calls and the record writer included).
The variants take turns for ``--rounds`` rounds and each reports its median, since CPU time per request
varies by about 15 % between runs on a shared VM. ``server.inline_call_budget_us`` is raised so that a call
slowed by a busy machine does not move one variant's plugin to the threads and not another's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cases import server_config
from bench.lab.inprocess import request_headers
from extproc import rollout
from extproc.config import parse_config
from extproc.plugins.registry import PluginSet
from extproc.plugins.runner import PluginThreads
from extproc.recording import Recorder, RecordOptions
from extproc.rollout import Observe
from extproc.stream import ExchangeStream
from support.plugins import ensure_built
from support.processes import REPO_ROOT

Variant = Callable[[dict[str, Any], Path], tuple[dict[str, Any], Observe]]


def _plain(config: dict[str, Any], _records: Path) -> tuple[dict[str, Any], Observe]:
    return config, Observe()


def _outcomes(config: dict[str, Any], _records: Path) -> tuple[dict[str, Any], Observe]:
    return config, Observe(outcome_metadata=True)


def _recording(fraction: float) -> Variant:
    def variant(config: dict[str, Any], records: Path) -> tuple[dict[str, Any], Observe]:
        return config, Observe(recorder=Recorder(RecordOptions(records / str(fraction), fraction=fraction)))

    return variant


def _candidate(**fields: Any) -> Variant:
    def variant(config: dict[str, Any], _records: Path) -> tuple[dict[str, Any], Observe]:
        (entry,) = config["plugins"]
        return {**config, "plugins": [{**entry, "candidate": {"path": entry["path"], **fields}}]}, Observe()

    return variant


VARIANTS: dict[str, Variant] = {
    "plain": _plain,
    "outcomes": _outcomes,
    "record-1%": _recording(0.01),
    "record-100%": _recording(1.0),
    "shadow": _candidate(fraction=1),
    "canary": _candidate(mode="canary", fraction=0.5),
}


async def _requests(plugins: PluginSet, times: int) -> None:
    max_body = plugins.config.server.max_body_bytes
    for index in range(times):
        message = request_headers("/")
        # A request id of its own per request, so that the canary draws each one anew.
        message.request_headers.headers.headers[5].raw_value = f"request-{index}".encode()
        await ExchangeStream(plugins, max_body).handle(message)
        await rollout.shadows_settled()


def cpu_us(plugins: PluginSet, requests: int) -> float:
    with asyncio.Runner() as runner:
        runner.run(_requests(plugins, min(500, requests)))  # warm-up
        started = time.process_time()
        runner.run(_requests(plugins, requests))
        return (time.process_time() - started) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    base = server_config(("header",), ensure_built())
    base["server"]["inline_call_budget_us"] = 1_000_000
    threads = PluginThreads(8)
    measured: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as records:
        for _ in range(args.rounds):
            for name, variant in VARIANTS.items():
                raw, observe = variant(base, Path(records))
                config = parse_config(raw, REPO_ROOT / "bench" / "lab" / "rollout_cost")
                plugins = PluginSet.load(config, threads, observe)
                try:
                    measured[name].append(cpu_us(plugins, args.requests))
                finally:
                    plugins.close()
                    if observe.recorder is not None:
                        observe.recorder.close()
    threads.close()
    plain = statistics.median(measured["plain"])
    print(f"in-process, 1 header plugin, {args.requests} requests x {args.rounds} rounds, median CPU per request:")
    for name, values in measured.items():
        median = statistics.median(values)
        print(f"  {name:12} {median:7.1f} us  ({median - plain:+6.1f} us against plain)")


if __name__ == "__main__":
    main()
