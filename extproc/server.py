"""The gRPC server's lifecycle: the listener, its event loop, health, drain and stop.

The data path runs on one asyncio event loop in a thread of its own ("extproc-loop"): every stream
is a coroutine there (service.py), plugin calls run on that loop or on the plugin threads
(plugins/runner.py). The caller's thread keeps the control path: signals, reloads, the admin endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from types import FrameType
from typing import Any, Final, TypeVar

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from extproc import metrics, rollout, tracing
from extproc.admin import AdminServer, describe_plugins, registry_text
from extproc.config import Config, ListenAddress
from extproc.plugins.registry import PluginSet
from extproc.plugins.runner import PluginThreads
from extproc.recording import Recorder
from extproc.reload import FileWatcher, Reloader
from extproc.service import ExternalProcessor
from extproc.tls import server_credentials

log = logging.getLogger("extproc.server")

# "" is the whole server, as Kubernetes' gRPC probe and Envoy's health check ask by default.
_HEALTH_SERVICES: Final = ("", ep.DESCRIPTOR.services_by_name["ExternalProcessor"].full_name)
# Room beside the largest body in one ext_proc message: headers, attributes, metadata.
_MESSAGE_OVERHEAD_BYTES: Final = 1024 * 1024

_T = TypeVar("_T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed: for the same streams it executes about a fifth fewer
    instructions per request than asyncio's own loop (docs/performance.md)."""
    try:
        import uvloop
    except ImportError:  # a platform without uvloop (Windows): asyncio's loop serves as well, slower
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class Server:
    """A gRPC listener with its event loop running; `port` is the bound port (useful with port 0).

    Made and driven from an ordinary thread: the constructor starts the loop thread and binds,
    start() begins serving, stop() ends both.
    """

    def __init__(
        self, config: Config, host: str, port: int, admin: ListenAddress | None = None, recorder: Recorder | None = None
    ) -> None:
        self.config = config
        self.threads = PluginThreads(config.server.plugin_threads)
        self.recorder = recorder
        self.plugins = PluginSet.load(config, self.threads, rollout.Observe(config.server.outcome_metadata, recorder))
        self.processor = ExternalProcessor(self.plugins, config.server)
        self.install(self.plugins)
        self._loop = new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="extproc-loop", daemon=True)
        self._loop_thread.start()
        self._idle_watch: asyncio.Task[None] | None = None
        try:
            self._grpc, self.health, self.port = self._on_loop(self._bind(host, port))
        except BaseException:
            self._close_loop()
            self.plugins.close()
            raise
        self.address = f"{host}:{self.port}"
        self.draining = False
        metrics.watch_pools(self._pool_use)
        self.admin = AdminServer(admin, self, token=config.server.admin_token) if admin is not None else None

    def _on_loop(self, work: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    async def _bind(self, host: str, port: int) -> tuple[grpc.aio.Server, HealthServicer, int]:
        max_message = self.config.server.max_body_bytes + _MESSAGE_OVERHEAD_BYTES
        server = grpc.aio.server(
            options=[
                # A buffered body arrives in one message; grpcio's default limit is 4 MiB.
                ("grpc.max_receive_message_length", max_message),
                ("grpc.max_send_message_length", max_message),
            ]
        )
        ep_grpc.add_ExternalProcessorServicer_to_server(self.processor, server)
        # grpc.health.v1 on the same port, for Envoy's cluster health checks and Kubernetes gRPC probes.
        health_servicer = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        tls = self.config.server.tls
        if tls is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, server_credentials(tls, self.config.source))
        if bound == 0:
            raise OSError(f"cannot listen on {address}")
        return server, health_servicer, bound

    def install(self, plugins: PluginSet) -> None:
        """New streams use `plugins`, and their breakers are the ones reported; running streams keep the set
        they started with."""
        self.processor.plugins = plugins  # one attribute store: atomic for the loop thread
        self.plugins = plugins
        metrics.breakers_in_force(plugin.breaker for plugin in plugins.versions)

    def start(self) -> None:
        self._on_loop(self._start())
        if self.admin is not None:
            self.admin.start()
        log.info(
            "listening on %s with %d plugin(s); request path %s",
            self.address,
            len(self.plugins.plugins),
            "compiled (mypyc)" if metrics.REQUEST_PATH_COMPILED else "interpreted",
        )

    async def _start(self) -> None:
        await self._grpc.start()
        for service in _HEALTH_SERVICES:
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._idle_watch = asyncio.create_task(self.processor.close_idle_streams())

    def drain(self) -> None:
        """Tell health checkers to send no new streams; the listener still takes them until stop()."""
        if not self.draining:
            self.draining = True
            self._on_loop(self.health.enter_graceful_shutdown())  # every service NOT_SERVING, and it stays so

    def stop(self, grace_seconds: float) -> None:
        """Stop taking streams, give those in flight `grace_seconds`, then cancel them and stop."""
        self.drain()
        self._on_loop(self._stop(grace_seconds))
        self._close_loop()
        self.threads.close()
        self.plugins.close()
        if self.recorder is not None:
            self.recorder.close()
        metrics.unwatch_pools(self._pool_use)
        if self.admin is not None:
            self.admin.stop()

    async def _stop(self, grace_seconds: float) -> None:
        await self._grpc.stop(grace_seconds)
        await rollout.shadows_settled()
        if self._idle_watch is not None:
            self._idle_watch.cancel()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join()
        self._loop.close()

    # --- what the admin endpoint reports ----------------------------------------------------

    def _pool_use(self) -> Iterator[metrics.PoolUse]:
        for plugin in self.plugins.versions:
            pool = plugin.pool
            yield plugin.label, pool.size, pool.idle, pool.max_size

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
    recorder: Recorder | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, reloading on SIGHUP and on file changes.

    On SIGTERM the health service turns NOT_SERVING for `drain_ms` (a second SIGTERM cuts that short),
    then the listener stops taking new streams and in-flight ones get `shutdown_grace_ms`.
    """
    tracing.start(config.tracing)
    server = Server(config, host, port, admin, recorder)
    reloader = Reloader(server.plugins, server.install, server.threads)
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
    tracing.stop()
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
