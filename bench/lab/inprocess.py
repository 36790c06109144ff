"""Our request path without gRPC: CPU per request of ``ExchangeStream.handle`` in one thread.

``python -m bench.lab.inprocess [--requests N] [--cases header,header3,...]`` builds the same server
config as a bench case, then feeds a request_headers message like the one Envoy sends for wrk's
GET straight into the stream state machine (header parsing, plugin selection, plugin input JSON,
the extism call, output validation, the Envoy mutation). Subtracting this from the server's
CPU/request under load leaves what the gRPC stack and thread handoffs cost.

Extism captures a Rust backtrace on every call when RUST_BACKTRACE=1 is in the environment and
RUST_LIB_BACKTRACE is not 0, so the printout names both variables.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from bench.cases import CASES, Kind
from bench.cases import server_config as bench_server_config
from extproc.config import parse_config
from extproc.plugins.registry import PluginSet
from extproc.plugins.runner import PluginThreads
from extproc.stream import ExchangeStream
from support.plugins import ensure_built
from support.processes import REPO_ROOT

# What Envoy sends for `wrk http://127.0.0.1:PORT/`: pseudo-headers, wrk's none, Envoy's own.
_HEADERS = (
    (":authority", "127.0.0.1:10000"),
    (":path", "/"),
    (":method", "GET"),
    (":scheme", "http"),
    ("x-forwarded-proto", "http"),
    ("x-request-id", "2b1c7f36-6c1e-4a8e-9d55-4f6a3d9b1e20"),
)


def request_headers(path: str) -> ep.ProcessingRequest:
    headers = [base_pb2.HeaderValue(key=k, raw_value=(path if k == ":path" else v).encode()) for k, v in _HEADERS]
    message = ep.HttpHeaders(headers=base_pb2.HeaderMap(headers=headers), end_of_stream=True)
    return ep.ProcessingRequest(request_headers=message)


async def _handle(plugins: PluginSet, message: ep.ProcessingRequest, times: int) -> None:
    max_body = plugins.config.server.max_body_bytes
    for _ in range(times):
        await ExchangeStream(plugins, max_body).handle(message)


def cpu_us_per_request(plugins: PluginSet, path: str, requests: int) -> float:
    """On one event loop, as the server runs it (the header plugins' calls run inline)."""
    message = request_headers(path)
    with asyncio.Runner() as runner:
        runner.run(_handle(plugins, message, min(1000, requests)))  # warm-up: caches, allocator
        start = time.process_time()
        runner.run(_handle(plugins, message, requests))
        return (time.process_time() - start) / requests * 1e6


def main() -> None:
    header_cases = [c.name for c in CASES if c.kind is Kind.SERVER and not c.load.body_bytes and c.workers is None]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--cases", default="header,header3,generate,nomatch", help=f"of: {', '.join(header_cases)}")
    args = parser.parse_args()
    plugin_dir = ensure_built()
    env = {name: os.environ.get(name, "unset") for name in ("RUST_BACKTRACE", "RUST_LIB_BACKTRACE")}
    print(f"in-process, one thread, {args.requests} requests each; {env}")
    for name in args.cases.split(","):
        case = next((c for c in CASES if c.name == name and c.name in header_cases), None)
        if case is None:
            parser.error(f"not a header-only server case: {name} (choose from {', '.join(header_cases)})")
        config = parse_config(bench_server_config(case.plugins, plugin_dir), REPO_ROOT / "bench" / "lab" / "inprocess")
        plugins = PluginSet.load(config, PluginThreads(config.server.plugin_threads))
        try:
            print(f"  {case.name:10} {cpu_us_per_request(plugins, case.load.path, args.requests):7.1f} us CPU/request")
        finally:
            plugins.close()


if __name__ == "__main__":
    main()
