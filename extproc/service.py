"""The ExternalProcessor gRPC service: one coroutine per ext_proc stream, within the stream limits.

A stream waiting for Envoy's next message holds no thread, so open streams cost memory, not
capacity. What bounds them: `max_concurrent_streams` (a stream over it is refused at once with
RESOURCE_EXHAUSTED, so Envoy applies its failure mode instead of waiting) and
`stream_idle_timeout_ms` (a stream that gets no message for that long is closed). When Envoy ends a
stream early, the stream's task is cancelled, and with it any plugin call it still waits for.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from extproc import logs, metrics, tracing, wire
from extproc.config import ServerConfig
from extproc.contract import ImmediateReply
from extproc.metrics import StreamEnd
from extproc.plugins.registry import PluginSet
from extproc.stream import ExchangeStream

log = logging.getLogger("extproc.service")

_INTERNAL_ERROR: Final = ImmediateReply(
    status=500,
    headers=(("content-type", "text/plain"),),
    body=b"Internal Server Error\n",
    details="extproc_error",
)
# How often idle streams are looked for, as a share of the idle limit (within the bounds below).
_IDLE_SCANS_PER_LIMIT: Final = 8
_IDLE_SCAN_BOUNDS_S: Final = (0.01, 1.0)


class _OpenStream:
    """What the idle watch knows of one stream: since when it has waited for Envoy (inf: it has not)."""

    __slots__ = ("closed_idle", "task", "waiting_since")

    def __init__(self, task: asyncio.Task[Any], now: float) -> None:
        self.task = task
        self.waiting_since = now
        self.closed_idle = False


async def _close(messages: AsyncIterator[ep.ProcessingRequest]) -> None:
    """End a stream's message iterator that still waits for Envoy. Left open, grpc.aio frees the
    stream's last message only at the next full garbage collection: with buffered bodies, megabytes
    per stream that pile up between two."""
    close = getattr(messages, "aclose", None)
    if close is not None:
        await close()


class ExternalProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Serves each stream with the plugin set current when the stream began."""

    def __init__(self, plugins: PluginSet, server: ServerConfig) -> None:
        self.plugins = plugins
        self._max_streams = server.max_concurrent_streams
        self._idle_timeout = server.stream_idle_timeout_ms / 1000
        self._open: dict[asyncio.Task[Any], _OpenStream] = {}

    @property
    def open_streams(self) -> int:
        return len(self._open)

    async def Process(
        self, requests: AsyncIterator[ep.ProcessingRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[ep.ProcessingResponse]:
        if len(self._open) >= self._max_streams:
            metrics.STREAMS.ended(StreamEnd.REFUSED)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"server.max_concurrent_streams ({self._max_streams}) are open"
            )
        plugins = self.plugins
        stream = ExchangeStream(plugins, plugins.config.server.max_body_bytes)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None  # grpc.aio runs every handler in a task
        watch = self._open[task] = _OpenStream(task, loop.time())
        metrics.STREAMS.started()
        how = StreamEnd.DONE
        bound = False
        messages = aiter(requests)
        traced = None
        try:
            async for request in messages:
                watch.waiting_since = math.inf
                if not bound:
                    # Records of this stream get its x-request-id. The binding lives in this task's
                    # context and ends with it.
                    logs.bind_stream(request)
                    bound = True
                    if tracing.tracer is not None:
                        traced = tracing.tracer.stream_started(request, context)
                try:
                    reply = await stream.handle(request)
                except Exception:
                    # A bug of ours must not hang Envoy's request: answer it, then end the stream.
                    log.exception("failed to process %s", request.WhichOneof("request"))
                    how = StreamEnd.ERROR
                    metrics.STREAMS.immediate_response(_INTERNAL_ERROR.status)
                    yield wire.immediate_response(_INTERNAL_ERROR, is_grpc=False)
                    await _close(messages)
                    return
                if isinstance(reply, tuple):  # none, or several (FULL_DUPLEX_STREAMED bodies)
                    for each in reply:
                        yield each
                else:
                    yield reply
                if stream.done:
                    # Envoy goes on without us after a clean end. Envoy 1.40 would reset the stream
                    # itself once it expects nothing more; grpcio's cancellation path costs more.
                    await _close(messages)
                    return
                watch.waiting_since = loop.time()
        except asyncio.CancelledError:
            if not watch.closed_idle:
                how = StreamEnd.CANCELLED
                raise
            how = StreamEnd.IDLE
            task.uncancel()
            idle_ms = round(self._idle_timeout * 1000)
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"no message from Envoy for {idle_ms} ms")
        finally:
            del self._open[task]
            metrics.STREAMS.ended(how)
            if traced is not None:
                traced.end(how)

    async def close_idle_streams(self) -> None:
        """Runs for the life of the server: closes streams that waited for Envoy longer than the limit."""
        if not self._idle_timeout:
            return
        low, high = _IDLE_SCAN_BOUNDS_S
        interval = min(high, max(low, self._idle_timeout / _IDLE_SCANS_PER_LIMIT))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            oldest_allowed = loop.time() - self._idle_timeout
            for watch in list(self._open.values()):
                if watch.waiting_since < oldest_allowed and not watch.closed_idle:
                    watch.closed_idle = True
                    watch.task.cancel()
