"""The bench's no-op ext_proc server (bench/noop_server.py) on other gRPC stacks, and timing its streams.

Run as ``python -m bench.lab.noop_servers --port P --stack aio|grpclib|timed``. Each answers through the
same :func:`bench.noop_server.answer`, so that a difference is what the stack alone costs:

- ``aio``: grpcio's asyncio server (``grpc.aio``) on the default event loop.
- ``grpclib``: the pure-Python grpclib server on uvloop. grpclib is not a project dependency: the lab
  tools that run this stack pip-install it on first use.
- ``timed``: grpcio's thread-pool server, as the bench's floor, timing each stream inside the server
  between SIGUSR1 and SIGUSR2 and writing the timestamps to ``--timings FILE`` on SIGUSR2 (see
  bench/lab/noop_timings.py): how much of the latency Envoy sees is spent in the server's Python layer,
  and in which part of it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from concurrent import futures
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from bench.cases import CASES, Case, Kind
from bench.noop_server import GRACE_S, STOP_SIGNALS, answer, listen, serve_sync

if TYPE_CHECKING:
    from grpclib.const import Handler
    from grpclib.server import Stream

STACKS = ("aio", "grpclib", "timed")
# What each stack needs beyond the project's dependencies (pip names, also the module names).
STACK_PACKAGES: dict[str, tuple[str, ...]] = {"aio": (), "grpclib": ("grpclib",), "timed": ()}
# The stacks compared with grpcio's thread-pool server, and their titles in the reports.
COMPARED_STACKS = ("aio", "grpclib")
STACK_TITLES = {"aio": "no-op on grpc.aio", "grpclib": "no-op on grpclib + uvloop"}
PROCESS_METHOD = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"

# The moments of one stream the timed no-op records, in order (Unix ns: Envoy's access log, which
# the bench lines them up with, has wall-clock times).
MOMENTS = ("dispatched", "handler started", "first message", "reply yielded", "send confirmed")
# Two more moments come from Envoy's log line of the same request (``spans(calls=...)``).
ENVOY_REQUEST, ENVOY_REPLY = "Envoy has the request", "Envoy has the reply"
# The spans reported, in the order a stream meets them: (name, from moment, to moment).
SPANS = (
    (f"{ENVOY_REQUEST} -> polling thread dispatch", ENVOY_REQUEST, "dispatched"),
    ("dispatch -> handler start (thread pool handoff)", "dispatched", "handler started"),
    ("handler start -> first message", "handler started", "first message"),
    ("first message -> reply yielded (the no-op's own work)", "first message", "reply yielded"),
    (f"reply yielded -> {ENVOY_REPLY}", "reply yielded", ENVOY_REPLY),
    ("reply yielded -> grpcio confirms the send to the handler", "reply yielded", "send confirmed"),
)


def stack_case(name: str, stack: str, *args: str) -> Case:
    """The bench's no-op case, served by this module on ``stack`` (more arguments: ``args``)."""
    noop = next(case for case in CASES if case.kind is Kind.NOOP)
    title = STACK_TITLES.get(stack, noop.title)
    return replace(noop, name=name, title=title, noop_command=(__spec__.name, "--stack", stack, *args))


@dataclass(frozen=True)
class StreamRow:
    """One timed stream: the x-request-id Envoy gave the request, and ``MOMENTS`` in Unix ns."""

    request_id: str
    moments: tuple[int, ...]


class StreamTimings:
    """Per-stream timestamps taken while recording.

    "dispatched" is taken on grpcio's polling thread as it looks up the stream's handler, before
    handing the stream to the thread pool; "send confirmed" when the handler's generator resumes,
    which grpcio does once its polling thread has seen the send of the yielded reply complete.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._rows: list[StreamRow] = []
        self.recording = False

    @property
    def marker(self) -> Path:
        """Present while recording, so whoever sent SIGUSR1 can tell it has been handled."""
        return recording_marker(self._path)

    def start(self) -> None:
        self._rows = []
        self.recording = True
        # A file from an earlier recording must not pass for this one's.
        self._path.unlink(missing_ok=True)
        self.marker.touch()

    def record(self, request_id: str, *moments: int) -> None:
        if self.recording:
            self._rows.append(StreamRow(request_id, moments))  # list.append is atomic under the GIL

    def stop(self) -> None:
        """Write what was recorded; the file appears whole (bench/lab/noop_timings.py waits for it)."""
        self.recording = False
        partial = self._path.with_suffix(".partial")
        lines = (" ".join([row.request_id or "-", *map(str, row.moments)]) + "\n" for row in self._rows)
        partial.write_text("".join(lines))
        os.replace(partial, self._path)
        self.marker.unlink(missing_ok=True)


def recording_marker(timings: Path) -> Path:
    return timings.with_suffix(".recording")


def read_timings(text: str) -> list[StreamRow]:
    rows = []
    for line in text.splitlines():
        request_id, *fields = line.split()
        if len(fields) != len(MOMENTS) or not all(field.isdigit() for field in fields):
            raise ValueError(f"stream timings line {line!r}: expected a request id and {len(MOMENTS)} timestamps")
        rows.append(StreamRow(request_id, tuple(int(field) for field in fields)))
    return rows


def spans(rows: Sequence[StreamRow], calls: Mapping[str, tuple[float, int]]) -> dict[str, list[float]]:
    """Each span of each stream, in microseconds, by span name.

    ``calls``: by request id, when Envoy began the request (Unix s) and how long its ext_proc call
    took (us), from its access log; the spans that start or end in Envoy need the stream's request
    there. Envoy starts the call once it has parsed the request headers, a few us after the logged
    start, so the first span is that much long and the "Envoy has the reply" one that much short.
    """
    found: dict[str, list[float]] = {name: [] for name, _, _ in SPANS}
    for row in rows:
        moments = {moment: ns / 1000 for moment, ns in zip(MOMENTS, row.moments, strict=True)}
        call = calls.get(row.request_id)
        if call is not None:
            moments[ENVOY_REQUEST] = call[0] * 1e6
            moments[ENVOY_REPLY] = moments[ENVOY_REQUEST] + call[1]
        for name, begin, end in SPANS:
            if begin in moments and end in moments:
                found[name].append(moments[end] - moments[begin])
    return found


def _request_id(request: ep.ProcessingRequest) -> str:
    for header in request.request_headers.headers.headers:
        if header.key == "x-request-id":
            value: str = header.raw_value.decode() or header.value
            return value
    return ""


if TYPE_CHECKING:
    _Handler = grpc.RpcMethodHandler[ep.ProcessingRequest, ep.ProcessingResponse]
    _GenericHandler = grpc.GenericRpcHandler[ep.ProcessingRequest, ep.ProcessingResponse]
else:  # grpcio's classes are not generic at run time; only its type stubs are
    _GenericHandler = grpc.GenericRpcHandler


class TimedNoopHandler(_GenericHandler):
    """The sync no-op with per-stream timestamps. grpcio asks a generic handler for each new stream
    on its polling thread, which is where "dispatched" is taken. A separate path from
    bench.noop_server's NoopProcessor, so the floor itself pays nothing for the timing."""

    def __init__(self, timings: StreamTimings) -> None:
        self._timings = timings

    def service(self, details: grpc.HandlerCallDetails) -> _Handler | None:
        if details.method != PROCESS_METHOD:
            return None
        dispatched = time.time_ns()
        return grpc.stream_stream_rpc_method_handler(
            functools.partial(self._process, dispatched),
            request_deserializer=ep.ProcessingRequest.FromString,
            response_serializer=ep.ProcessingResponse.SerializeToString,
        )

    def _process(
        self, dispatched: int, request_iterator: Iterator[ep.ProcessingRequest], _context: grpc.ServicerContext
    ) -> Iterator[ep.ProcessingResponse]:
        started = time.time_ns()
        first_message = 0
        for request in request_iterator:
            if first_message:
                yield answer(request)
                continue
            first_message = time.time_ns()
            reply = answer(request)
            reply_yielded = time.time_ns()
            yield reply
            self._timings.record(
                _request_id(request), dispatched, started, first_message, reply_yielded, time.time_ns()
            )


class AioNoopProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    async def Process(
        self, request_iterator: AsyncIterator[ep.ProcessingRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[ep.ProcessingResponse]:
        async for request in request_iterator:
            yield answer(request)


class GrpclibNoopProcessor:
    """grpclib's servable: the method table grpclib's generated code would hold."""

    async def process(self, stream: Stream[ep.ProcessingRequest, ep.ProcessingResponse]) -> None:
        async for request in stream:
            await stream.send_message(answer(request))

    def __mapping__(self) -> Mapping[str, Handler]:
        from grpclib.const import Cardinality, Handler

        handler = Handler(self.process, Cardinality.STREAM_STREAM, ep.ProcessingRequest, ep.ProcessingResponse)
        return {PROCESS_METHOD: handler}


async def _until_signal() -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()


async def serve_aio(port: int) -> None:
    server = grpc.aio.server()
    ep_grpc.add_ExternalProcessorServicer_to_server(AioNoopProcessor(), server)
    listen(server, port)
    await server.start()
    await _until_signal()
    await server.stop(GRACE_S)


async def serve_grpclib(port: int) -> None:
    from grpclib.server import Server

    server = Server([GrpclibNoopProcessor()])
    await server.start("127.0.0.1", port)
    await _until_signal()
    server.close()
    await server.wait_closed()


def serve_timed(port: int, threads: int, timings: StreamTimings) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads))
    server.add_generic_rpc_handlers((TimedNoopHandler(timings),))
    signal.signal(signal.SIGUSR1, lambda _signum, _frame: timings.start())
    signal.signal(signal.SIGUSR2, lambda _signum, _frame: timings.stop())
    serve_sync(server, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stack", choices=STACKS, required=True)
    parser.add_argument("--threads", type=int, default=16, help="thread pool size of the timed stack")
    parser.add_argument("--timings", type=Path, help="timed stack: per-stream timestamps file (see above)")
    args = parser.parse_args()
    if (args.timings is not None) != (args.stack == "timed"):
        parser.error("--timings goes with --stack timed, and only with it")

    if args.stack == "timed":
        serve_timed(args.port, args.threads, StreamTimings(args.timings))
    elif args.stack == "aio":
        asyncio.run(serve_aio(args.port))
    else:
        import uvloop

        uvloop.run(serve_grpclib(args.port))


if __name__ == "__main__":
    main()
