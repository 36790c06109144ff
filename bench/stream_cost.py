"""Server CPU per ext_proc stream without Envoy: which part of a request's cost is the gRPC stack,
which the Extism call, which our own code.

Run as ``python bench/stream_cost.py [--streams N]``. It starts each server variant on a free port,
sends N sequential one-message streams (the request headers of a GET, as Envoy sends them) from a
grpcio client, and prints the server's CPU (user + system, all threads) per stream. Variants:

- ``noop``: bench/noop_server.py, the floor;
- ``extism-only``: a grpcio sync server that makes one Extism call with a fixed input per stream and
  returns a canned reply: the least any plugin server can do;
- ``extproc``: ``extproc serve`` with one header plugin (the bench's ``header`` case);
- ``extproc-aio`` and ``extproc-grpclib``: our ``ExchangeStream`` behind grpc.aio, and behind grpclib on
  uvloop (installed on first use, bench only): the alternative stacks.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cases import server_config
from bench.procstat import tree_cpu_seconds
from tests.e2e.harness import ManagedProcess, default_server_cmd, free_port, wait_for_port
from tests.plugins.build import ensure_built  # type: ignore[attr-defined]

HERE = Path(__file__).resolve()
WARMUP_STREAMS = 300
HEADERS = (
    (":authority", "127.0.0.1:10000"),
    (":path", "/bench"),
    (":method", "GET"),
    (":scheme", "http"),
    ("user-agent", "wrk"),
    ("x-forwarded-proto", "http"),
    ("x-request-id", "2ae17a35-ff8e-4fc7-b4e8-6a46e7b82694"),
)
PROCESS = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"


def request_headers() -> ep.ProcessingRequest:
    header_map = base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in HEADERS])
    return ep.ProcessingRequest(request_headers=ep.HttpHeaders(headers=header_map, end_of_stream=True))


# --- server variants (run in a child process: `stream_cost.py --serve VARIANT`) -----------------------


def _plugin_set(config_path: Path) -> Any:
    from extproc.config import load_config
    from extproc.plugins.registry import PluginSet

    return PluginSet.load(load_config(config_path))


def serve_extism_only(config_path: Path, port: int) -> None:
    import extism

    from extproc import envoy

    plugins = _plugin_set(config_path)
    plugin = plugins.plugins[0]
    instance = plugin.pool.acquire(1.0)
    lock = threading.Lock()
    payload = b'{"phase":"REQUEST_HEADERS","request":{"headers":[{"name":":path","value":"/bench"}]}}'
    skip_rest = envoy.mode_override(request_body=False, response_headers=False, response_body=False)

    class ExtismOnly(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
        def Process(self, requests: Iterator[ep.ProcessingRequest], _: Any) -> Iterator[ep.ProcessingResponse]:
            for _request in requests:
                with lock:
                    instance.call("process_request_headers", payload)
                yield ep.ProcessingResponse(request_headers=ep.HeadersResponse(), mode_override=skip_rest)

    assert isinstance(instance, extism.Plugin)
    server = grpc.server(futures.ThreadPoolExecutor(16))
    ep_grpc.add_ExternalProcessorServicer_to_server(ExtismOnly(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


async def serve_aio(config_path: Path, port: int) -> None:
    from extproc.stream import ExchangeStream

    plugins = _plugin_set(config_path)

    class Aio(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
        async def Process(
            self, requests: AsyncIterator[ep.ProcessingRequest], _: Any
        ) -> AsyncIterator[ep.ProcessingResponse]:
            stream = ExchangeStream(plugins, plugins.config.server.max_body_bytes)
            async for request in requests:
                yield stream.handle(request)

    server = grpc.aio.server()
    ep_grpc.add_ExternalProcessorServicer_to_server(Aio(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def serve_grpclib(config_path: Path, port: int) -> None:
    from grpclib.const import Cardinality, Handler
    from grpclib.server import Server

    from extproc.stream import ExchangeStream

    plugins = _plugin_set(config_path)

    class Grpclib:
        async def process(self, stream: Any) -> None:
            exchange = ExchangeStream(plugins, plugins.config.server.max_body_bytes)
            async for request in stream:
                await stream.send_message(exchange.handle(request))

        def __mapping__(self) -> dict[str, Handler]:
            return {
                PROCESS: Handler(self.process, Cardinality.STREAM_STREAM, ep.ProcessingRequest, ep.ProcessingResponse)
            }

    server = Server([Grpclib()])
    await server.start("127.0.0.1", port)
    await server.wait_closed()


def serve(variant: str, config_path: Path, port: int) -> None:
    import extproc.plugins  # noqa: F401 - sets RUST_LIB_BACKTRACE before extism loads, as the server does

    if variant == "extism-only":
        serve_extism_only(config_path, port)
    elif variant == "extproc-aio":
        asyncio.run(serve_aio(config_path, port))
    else:
        import uvloop

        uvloop.install()
        asyncio.run(serve_grpclib(config_path, port))


# --- driver ------------------------------------------------------------------------------------------


def variant_argv(variant: str, config_path: Path, port: int) -> list[str]:
    if variant == "noop":
        return [sys.executable, str(HERE.with_name("noop_server.py")), "--port", str(port)]
    if variant == "extproc":
        return default_server_cmd(config_path, port)
    return [sys.executable, str(HERE), "--serve", variant, "--config", str(config_path), "--port", str(port)]


def cpu_per_stream(variant: str, config_path: Path, work: Path, streams: int) -> float:
    port = free_port()
    with ManagedProcess(variant, variant_argv(variant, config_path, port), work / f"{variant}.log") as server:
        wait_for_port("127.0.0.1", port, 30, process=server)
        message = request_headers()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ep_grpc.ExternalProcessorStub(channel)
            for _ in range(WARMUP_STREAMS):
                list(stub.Process(iter([message])))
            assert server.pid is not None
            before = tree_cpu_seconds(server.pid)
            for _ in range(streams):
                list(stub.Process(iter([message])))
            return (tree_cpu_seconds(server.pid) - before) / streams * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=3000)
    parser.add_argument("--work", type=Path, default=HERE.parent / "results" / "work" / "stream_cost")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.config, args.port)
        return
    for module, package in (("grpclib", "grpclib"), ("uvloop", "uvloop")):
        if importlib.util.find_spec(module) is None:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", package], check=True)
    args.work.mkdir(parents=True, exist_ok=True)
    config_path = args.work / "extproc.yaml"
    config_path.write_text(json.dumps(server_config(("header",), ensure_built())))
    print(f"server CPU per sequential stream, {args.streams} streams each:")
    for variant in ("noop", "extism-only", "extproc", "extproc-aio", "extproc-grpclib"):
        print(f"  {variant:16s} {cpu_per_stream(variant, config_path, args.work, args.streams):6.0f} us", flush=True)


if __name__ == "__main__":
    main()
