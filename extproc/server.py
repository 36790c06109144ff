"""The gRPC side: the ExternalProcessor service, the listener and its lifecycle."""

from __future__ import annotations

import logging
import queue
import signal
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from types import FrameType
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extproc import envoy, logs, metrics
from extproc.admin import AdminServer, describe_plugins, registry_text
from extproc.config import Config, ListenAddress
from extproc.contract import ImmediateReply
from extproc.plugins.registry import PluginSet
from extproc.reload import FileWatcher, Reloader
from extproc.stream import ExchangeStream
from extproc.tls import server_credentials

log = logging.getLogger("extproc.server")

# "" is the whole server, as Kubernetes' gRPC probe and Envoy's health check ask by default.
_HEALTH_SERVICES = ("", ep.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name)

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
        streams = metrics.STREAMS
        streams.started()
        bound = False
        try:
            for request in request_iterator:
                if not bound:
                    logs.bind_stream(request)  # records of this stream get its x-request-id
                    bound = True
                try:
                    yield stream.handle(request)
                except Exception:
                    # A bug of ours must not hang Envoy's request: answer it, then end the stream.
                    log.exception("failed to process %s", request.WhichOneof("request"))
                    streams.immediate_response(_INTERNAL_ERROR.status)
                    yield envoy.immediate_response(_INTERNAL_ERROR, is_grpc=False)
                    return
                if stream.done:
                    # Envoy goes on without us after a clean end. Envoy 1.40 would reset the stream
                    # itself once it expects nothing more; grpcio's cancellation path costs more.
                    return
        finally:
            streams.finished()
            if bound:
                logs.unbind_stream()


class Server:
    """A started gRPC listener; `port` is the bound port (useful with port 0)."""

    def __init__(self, config: Config, host: str, port: int, admin: ListenAddress | None = None) -> None:
        self.plugins = PluginSet.load(config)
        self.servicer = ExternalProcessor(self.plugins)
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=config.server.grpc_threads, thread_name_prefix="extproc"),
            maximum_concurrent_rpcs=None,
        )
        ep_grpc.add_ExternalProcessorServicer_to_server(self.servicer, self._grpc)
        # grpc.health.v1 on the same port, for Envoy's cluster health checks and Kubernetes gRPC probes.
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        tls = config.server.tls
        if tls is None:
            self.port = self._grpc.add_insecure_port(address)
        else:
            self.port = self._grpc.add_secure_port(address, server_credentials(tls, config.source))
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        self.address = f"{host}:{self.port}"
        self.draining = False
        self.admin = AdminServer(admin, self, token=config.server.admin_token) if admin is not None else None

    def install(self, plugins: PluginSet) -> None:
        """New streams use `plugins`; running streams keep the set they started with."""
        self.servicer.plugins = plugins
        self.plugins = plugins

    def start(self) -> None:
        self._grpc.start()
        for service in _HEALTH_SERVICES:
            self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self.admin is not None:
            self.admin.start()
        log.info("listening on %s with %d plugin(s)", self.address, len(self.plugins.plugins))

    def drain(self) -> None:
        """Tell health checkers to send no new streams; the listener still takes them until stop()."""
        self.draining = True
        self.health.enter_graceful_shutdown()  # every service NOT_SERVING, and it stays so

    def stop(self, grace_seconds: float) -> None:
        self.drain()
        self._grpc.stop(grace_seconds).wait()
        self.plugins.close()
        if self.admin is not None:
            self.admin.stop()

    # --- what the admin endpoint reports ----------------------------------------------------

    def metrics_text(self) -> bytes:
        return registry_text()

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        return True, f"serving {len(self.plugins.plugins)} plugin(s) on {self.address}"

    def plugin_report(self) -> list[dict[str, Any]]:
        plugins = self.plugins
        return describe_plugins(plugins.config, plugins)


def serve(
    config: Config,
    host: str,
    port: int,
    admin: ListenAddress | None = None,
    on_started: Callable[[Server], None] | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, reloading on SIGHUP and on file changes.

    On SIGTERM the health service turns NOT_SERVING for `drain_ms` (a second SIGTERM cuts that short),
    then the listener stops taking new streams and in-flight ones get `shutdown_grace_ms`.
    """
    server = Server(config, host, port, admin)
    reloader = Reloader(server.plugins, server.install)
    metrics.config_loaded(reloader.hash)
    if server.admin is not None:
        server.admin.reload = reloader.reload
    commands: queue.SimpleQueue[str] = queue.SimpleQueue()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # SimpleQueue.put is safe inside a signal handler; the work happens in the main loop.
        commands.put("reload" if signum == signal.SIGHUP else "stop")

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    watcher = None
    if config.server.reload_poll_ms:
        watcher = FileWatcher(reloader, config.server.reload_poll_ms / 1000)
        watcher.start()
    server.start()
    if on_started is not None:
        on_started(server)
    while commands.get() != "stop":
        log.info("SIGHUP: reloading %s", config.source)
        reloader.reload()
    if config.server.drain_ms:
        log.info("draining: health checks see NOT_SERVING for %d ms before the listener closes", config.server.drain_ms)
        server.drain()
        _wait_for_stop(commands, config.server.drain_ms / 1000)
    log.info("draining: no new streams, up to %d ms for those in flight", config.server.shutdown_grace_ms)
    if watcher is not None:
        watcher.stop()
    server.stop(config.server.shutdown_grace_ms / 1000)
    log.info("stopped")


def _wait_for_stop(commands: queue.SimpleQueue[str], seconds: float) -> None:
    """Wait `seconds`, or less if another stop signal comes; reloads asked for meanwhile are dropped."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            if commands.get(timeout=left) == "stop":
                return
        except queue.Empty:
            return
