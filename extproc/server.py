"""The gRPC side: the ExternalProcessor service, the listener and its lifecycle."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from concurrent import futures
from types import FrameType

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from extproc import envoy
from extproc.config import Config
from extproc.contract import ImmediateReply
from extproc.plugins.registry import PluginSet
from extproc.stream import ExchangeStream

log = logging.getLogger("extproc.server")

_INTERNAL_ERROR = ImmediateReply(
    status=500,
    headers=(("content-type", "text/plain"),),
    body=b"Internal Server Error\n",
    details="extproc_error",
)


class ExternalProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Serves each stream with the plugin set current when the stream began."""

    def __init__(self, plugins: PluginSet) -> None:
        self.plugins = plugins

    def Process(
        self, request_iterator: Iterator[ep.ProcessingRequest], context: grpc.ServicerContext
    ) -> Iterator[ep.ProcessingResponse]:
        plugins = self.plugins
        stream = ExchangeStream(plugins, plugins.config.server.max_body_bytes)
        for request in request_iterator:
            try:
                yield stream.handle(request)
            except Exception:
                # A bug of ours must not hang Envoy's request: answer it, then end the stream.
                log.exception("failed to process %s", request.WhichOneof("request"))
                yield envoy.immediate_response(_INTERNAL_ERROR, is_grpc=False)
                return


class Server:
    """A started gRPC listener; `port` is the bound port (useful with port 0)."""

    def __init__(self, config: Config, host: str, port: int) -> None:
        self.plugins = PluginSet.load(config)
        self.servicer = ExternalProcessor(self.plugins)
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.server.grpc_threads, thread_name_prefix="extproc"),
            maximum_concurrent_rpcs=None,
        )
        ep_grpc.add_ExternalProcessorServicer_to_server(self.servicer, self._grpc)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self._grpc.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        self.address = f"{host}:{self.port}"

    def start(self) -> None:
        self._grpc.start()
        log.info("listening on %s with %d plugin(s)", self.address, len(self.plugins.plugins))

    def stop(self, grace_seconds: float) -> None:
        self._grpc.stop(grace_seconds).wait()
        self.plugins.close()


def serve(config: Config, host: str, port: int, grace_seconds: float = 10.0) -> None:
    """Run until SIGTERM or SIGINT, then let in-flight streams finish within the grace period."""
    server = Server(config, host, port)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    stopping.wait()
    server.stop(grace_seconds)
    log.info("stopped")
