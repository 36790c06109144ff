"""`extproc plugin test` and `extproc plugin bench` (and, from replay.py, `replay` and `cases`): a plugin
author's tools, on the server's own code path."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from extproc import replay
from extproc.config import PluginConfig, ServerConfig
from extproc.contract import Chunk, MessageView, build_input
from extproc.errors import ExtprocError, FailureKind, PluginCallError, PluginLoadError
from extproc.phases import CONFIG_NAMES as PHASE_NAMES
from extproc.phases import Phase
from extproc.plugins.loader import LoadedPlugin, load_plugin
from extproc.plugins.runner import invoke, shared_threads
from extproc.plugins.store import MemoryStore
from extproc.testing import plugin_config, run_cases

# Instances created to estimate the memory of one: enough to average out allocator noise.
MEMORY_SAMPLE_INSTANCES = 8
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def add_commands(commands: Any) -> None:
    """Register `plugin test`, `bench`, `replay` and `cases` on the top-level subparsers."""
    plugin = commands.add_parser("plugin", help="test and measure a plugin without Envoy")
    tools = plugin.add_subparsers(dest="plugin_command", required=True)

    test = tools.add_parser("test", help="run a plugin against the cases of a CASES.yaml file")
    test.add_argument("wasm", type=Path, metavar="PLUGIN.wasm")
    test.add_argument("cases", type=Path, metavar="CASES.yaml")

    bench = tools.add_parser("bench", help="calls per second, latency and memory of one plugin export")
    bench.add_argument("wasm", type=Path, metavar="PLUGIN.wasm")
    bench.add_argument("--phase", choices=PHASE_NAMES, help="default: the plugin's first export")
    bench.add_argument(
        "--body-size", type=int, default=0, metavar="N", help="body bytes in body phases (per chunk in chunk phases)"
    )
    bench.add_argument("--config", type=Path, metavar="YAML", help="plugin config: a YAML mapping, as under config:")
    bench.add_argument("--seconds", type=float, default=2.0, help="how long to measure (default 2)")
    bench.add_argument("--timeout-ms", type=int, help="per-call limit (default: the server's, 100)")
    bench.add_argument(
        "--memory-limit-mb", type=int, help="per-instance memory limit (default: the server's for --max-body-bytes)"
    )
    bench.add_argument(
        "--max-body-bytes",
        type=int,
        default=ServerConfig.max_body_bytes,
        help=f"server.max_body_bytes (default {ServerConfig.max_body_bytes}); larger --body-size is refused",
    )
    bench.add_argument("--json", action="store_true", help="print the result as JSON")

    replay.add_commands(tools)


def main(args: argparse.Namespace) -> int:
    if args.plugin_command in ("replay", "cases"):
        return replay.main(args)
    try:
        if args.plugin_command == "test":
            return _test(args.wasm, args.cases)
        return _bench(args)
    except (ExtprocError, OSError) as exc:
        print(f"extproc: error: {exc}", file=sys.stderr)
        return 1


def _test(wasm: Path, cases: Path) -> int:
    report = run_cases(wasm, cases)
    for case in report.passed:
        print(f"ok   {case.name}")
    print(report)
    return 0 if report.ok else 1


# --- bench ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchResult:
    plugin: str
    export: str
    body_bytes: int
    calls: int
    seconds: float
    p50_us: float
    p99_us: float
    max_us: float
    instance_memory_bytes: int
    timeout_ms: int
    memory_limit_bytes: int
    # The smallest memory_limit_mb one call succeeds under (see call_memory_mb).
    call_memory_mb: int

    @property
    def calls_per_second(self) -> float:
        return self.calls / self.seconds

    def __str__(self) -> str:
        mib = 1024 * 1024
        return (
            f"plugin   {self.plugin}\n"
            f"export   {self.export}, body {self.body_bytes} bytes{' per chunk' if 'chunk' in self.export else ''}\n"
            f"calls    {self.calls} in {self.seconds:.2f} s = {self.calls_per_second:,.0f} calls/s\n"
            f"latency  p50 {self.p50_us:,.1f} us, p99 {self.p99_us:,.1f} us, max {self.max_us:,.1f} us per call "
            f"(timeout {self.timeout_ms} ms)\n"
            f"memory   a call needs memory_limit_mb >= {self.call_memory_mb} "
            f"(limit {self.memory_limit_bytes / mib:.0f} MiB); "
            f"{self.instance_memory_bytes / mib:.2f} MiB resident per warm instance"
        )


def bench_payload(export: Phase, body_size: int, plugin_name: str) -> dict[str, Any]:
    """A typical input for `export`; body phases get a JSON body of about `body_size` bytes (chunk phases: a
    middle chunk of a text/event-stream body, of that size), trailers phases gRPC's trailers."""
    body = _json_body(body_size) if export.is_body else None
    if export.is_chunk:
        body = _events(body_size)
    trailers = [("grpc-status", "0"), ("grpc-message", "")] if export.is_trailers else None
    request_headers = [
        (":authority", "shop.example.com"),
        (":path", "/api/items?page=2"),
        (":method", "POST" if body is not None else "GET"),
        (":scheme", "http"),
        ("accept", "application/json"),
        ("user-agent", "extproc-bench/1"),
        ("content-type", "application/json"),
        ("x-request-id", "5b1f7c1e-8f0a-4c55-a1b7-0d7f7c3a2b11"),
        ("cookie", "a=1"),
        ("cookie", "b=2"),
    ]
    request_body = None if export.is_response else body
    response = None
    if export.is_response:
        content_type = "text/event-stream" if export.is_chunk else "application/json"
        response_headers = [(":status", "200"), ("content-type", content_type), ("etag", '"abc"')]
        response = MessageView(response_headers, body, trailers)
    attributes = {"source.address": "10.0.0.7:53122", "request.id": "5b1f7c1e"}
    request = MessageView(request_headers, request_body, None if export.is_response else trailers)
    chunk = Chunk(3, False) if export.is_chunk else None
    return build_input(export, plugin_name, request, response, attributes, {}, chunk=chunk)


def _events(size: int) -> bytes:
    """Server-sent events of about `size` bytes, as an LLM streams tokens."""
    event = b'data: {"choices":[{"delta":{"content":" token"}}]}\n\n'
    return event * max(1, size // len(event))


def _json_body(size: int) -> bytes:
    head = b'{"name":"Ada","ssn":"123-45-6789","data":"'
    tail = b'"}'
    return head + b"x" * max(0, size - len(head) - len(tail)) + tail


def bench(
    wasm: Path,
    *,
    phase: str | None = None,
    body_size: int = 0,
    config: Mapping[str, Any] | None = None,
    seconds: float = 2.0,
    timeout_ms: int | None = None,
    memory_limit_mb: int | None = None,
    max_body_bytes: int = ServerConfig.max_body_bytes,
) -> BenchResult:
    """Measure one export through `LoadedPlugin.call` (encode, pooled instance, decode, validation), under the
    server's limits unless told otherwise: what passes here passes in the server."""
    if body_size > max_body_bytes:
        raise BenchError(f"--body-size {body_size} is over max_body_bytes ({max_body_bytes}): the server refuses it")
    server_config = plugin_config(
        wasm,
        name="bench",
        config=config,
        timeout_ms=timeout_ms,
        memory_limit_mb=memory_limit_mb,
        pool_size=MEMORY_SAMPLE_INSTANCES + 1,
    )
    spec = server_config.plugins[0]
    server = dataclasses.replace(server_config.server, max_body_bytes=max_body_bytes)
    limit_mb = spec.memory_limit(max_body_bytes)
    plugin = load_plugin(spec, server, shared_threads(), MemoryStore())
    try:
        export = _choose_export(plugin, phase)
        payload = bench_payload(export, body_size, plugin.name)
        needs_mb = call_memory_mb(spec, server, export, payload)
        if needs_mb > limit_mb:
            raise BenchError(
                f"a call of {export.value} needs memory_limit_mb >= {needs_mb}, more than the limit of {limit_mb} MiB "
                "(--memory-limit-mb): the server would fail it"
            )
        with asyncio.Runner() as runner:
            timings, elapsed = runner.run(_timed_calls(plugin, export, payload, seconds))
            memory = runner.run(_instance_memory(plugin, export, payload))
    finally:
        plugin.close()
    timings.sort()
    quantiles = statistics.quantiles(timings, n=100, method="inclusive") if len(timings) > 1 else timings * 99
    return BenchResult(
        plugin=str(wasm),
        export=export.value,
        body_bytes=body_size if export.is_body else 0,
        calls=len(timings),
        seconds=elapsed,
        p50_us=quantiles[49] / 1000,
        p99_us=quantiles[98] / 1000,
        max_us=timings[-1] / 1000,
        instance_memory_bytes=memory,
        timeout_ms=spec.timeout_ms,
        memory_limit_bytes=limit_mb * 1024 * 1024,
        call_memory_mb=needs_mb,
    )


# Past this memory_limit_mb a call that still fails does not fail for want of memory.
MEMORY_SEARCH_MAX_MB: Final = 4096
# The timeout while memory is searched for: only memory may decide whether a call passes.
MEMORY_SEARCH_TIMEOUT_MS: Final = 60_000


def call_memory_mb(spec: PluginConfig, server: ServerConfig, export: Phase, payload: Mapping[str, Any]) -> int:
    """The smallest memory_limit_mb under which one call of `export` with `payload` succeeds: the call's peak
    memory, in whole MiB.

    Extism counts against the limit every page an instance's memories grow by since it was created, the
    plugin's own and Extism's (which holds input and output), and Wasm memory never shrinks: so the smallest
    limit that lets the call pass is its peak, measured by the same enforcement the server relies on, whatever
    language or allocator the plugin uses. Found by bisection, each try on a fresh instance with a fresh
    key-value store, as the server loads it, with the timeout lifted so that only memory decides.
    """
    searched = dataclasses.replace(spec, timeout_ms=MEMORY_SEARCH_TIMEOUT_MS, retries=0, pool_size=1)

    def passes(limit_mb: int) -> bool:
        attempt = dataclasses.replace(searched, memory_limit_mb=limit_mb)
        try:
            plugin = load_plugin(attempt, server, shared_threads(), MemoryStore())
        except PluginLoadError:
            return False  # too little memory to create the instance (a larger limit loaded it)
        try:
            asyncio.run(plugin.call(export, payload))
        except PluginCallError as exc:
            if exc.kind is not FailureKind.MEMORY:
                raise
            return False
        finally:
            plugin.close()
        return True

    # From the plugin's own limit up while the call fails, then down to the smallest limit that passes.
    failing, passing = 0, spec.memory_limit(server.max_body_bytes)
    while not passes(passing):
        failing, passing = passing, passing * 2
        if passing > MEMORY_SEARCH_MAX_MB:
            raise BenchError(f"a call of {export.value} fails even with memory_limit_mb: {failing}")
    while passing - failing > 1:
        middle = (failing + passing) // 2
        if passes(middle):
            passing = middle
        else:
            failing = middle
    return passing


class BenchError(ExtprocError):
    """The benchmark cannot run as asked."""


def _choose_export(plugin: LoadedPlugin, phase: str | None) -> Phase:
    """The phase asked for, or the first the plugin is called for with this config (the first it exports
    when its declaration leaves none: measuring a phase is asking for it)."""
    if phase is None:
        return min(plugin.exports or plugin.module_exports, key=list(Phase).index)
    export = Phase.named(phase)
    if export not in plugin.module_exports:
        have = ", ".join(sorted(e.value for e in plugin.module_exports))
        raise BenchError(f"plugin {plugin.spec.path} does not export {export.value} (it has: {have})")
    return export


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE_BYTES


async def _timed_calls(
    plugin: LoadedPlugin, export: Phase, payload: Mapping[str, Any], seconds: float
) -> tuple[list[int], float]:
    """Nanoseconds per call for `seconds`, and the seconds it really took; on the loop, as the server calls."""
    for _ in range(10):  # warm-up: first calls grow memory and fill caches
        await plugin.call(export, payload)
    timings: list[int] = []
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        before = time.perf_counter_ns()
        await plugin.call(export, payload)
        timings.append(time.perf_counter_ns() - before)
    return timings, time.perf_counter() - started


async def _instance_memory(plugin: LoadedPlugin, export: Phase, payload: Mapping[str, Any]) -> int:
    """Resident memory one warm instance adds: RSS growth over several pool instances, each called once."""
    data = plugin.encode(payload)
    gc.collect()
    before = _rss_bytes()
    instances = []
    try:
        for _ in range(MEMORY_SAMPLE_INSTANCES):
            instance = await plugin.pool.acquire(1.0)
            instances.append(plugin.pool.factory() if instance is None else instance)
        for instance in instances:
            invoke(instance, export, data, plugin.host, plugin.max_output_bytes)
        return max(0, (_rss_bytes() - before) // MEMORY_SAMPLE_INSTANCES)
    finally:
        for instance in instances:
            plugin.pool.release(instance)


def _bench(args: argparse.Namespace) -> int:
    config: Mapping[str, Any] | None = None
    if args.config is not None:
        loaded = yaml.safe_load(args.config.read_text())
        if not isinstance(loaded, dict):
            print(f"extproc: error: {args.config}: must hold a YAML mapping (the plugin's config:)", file=sys.stderr)
            return 1
        config = loaded
    result = bench(
        args.wasm,
        phase=args.phase,
        body_size=args.body_size,
        config=config,
        seconds=args.seconds,
        timeout_ms=args.timeout_ms,
        memory_limit_mb=args.memory_limit_mb,
        max_body_bytes=args.max_body_bytes,
    )
    if args.json:
        print(json.dumps({**result.__dict__, "calls_per_second": result.calls_per_second}))
    else:
        print(result)
    return 0
