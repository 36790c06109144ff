"""The floor for any Python ext_proc server: a no-op written the simplest way with grpcio.

Run as ``python -m bench.noop_server --port P``. It answers the request headers with no change and,
like our server does for header-only plugins, a mode override that skips every later phase, so each
HTTP request costs one message each way; any other message gets an empty reply. grpcio's thread-pool
server with 16 threads: as many as wrk's connections, so no stream waits for one.

The same no-op on other gRPC stacks, and one that times its streams, are in bench/lab/noop_servers.py.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Iterator
from concurrent import futures
from types import FrameType
from typing import Final

import grpc
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
# Streams still open at shutdown get this long to finish.
GRACE_S: Final = 1.0

_SKIP_REST = ProcessingMode(
    request_header_mode=ProcessingMode.SEND,
    response_header_mode=ProcessingMode.SKIP,
    request_body_mode=ProcessingMode.NONE,
    response_body_mode=ProcessingMode.NONE,
    request_trailer_mode=ProcessingMode.SKIP,
    response_trailer_mode=ProcessingMode.SKIP,
)


def answer(request: ep.ProcessingRequest) -> ep.ProcessingResponse:
    """The no-op reply to one message, whichever stack carries it."""
    kind = request.WhichOneof("request")
    if kind == "request_headers":
        return ep.ProcessingResponse(request_headers=ep.HeadersResponse(), mode_override=_SKIP_REST)
    if kind in ("request_body", "response_body"):
        return ep.ProcessingResponse(**{kind: ep.BodyResponse()})
    if kind == "response_headers":
        return ep.ProcessingResponse(response_headers=ep.HeadersResponse())
    return ep.ProcessingResponse(**{kind: ep.TrailersResponse()})


class NoopProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def Process(
        self, request_iterator: Iterator[ep.ProcessingRequest], context: grpc.ServicerContext
    ) -> Iterator[ep.ProcessingResponse]:
        for request in request_iterator:
            yield answer(request)


def listen(server: grpc.Server | grpc.aio.Server, port: int) -> None:
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise SystemExit(f"noop server: cannot listen on 127.0.0.1:{port}")


def serve_sync(server: grpc.Server, port: int) -> None:
    """Serve on ``port`` until SIGTERM or SIGINT; ``server`` has its handlers already."""
    listen(server, port)
    stopping = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    for signum in STOP_SIGNALS:
        signal.signal(signum, on_signal)
    server.start()
    stopping.wait()
    server.stop(GRACE_S).wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=16, help="thread pool size (default 16)")
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads))
    ep_grpc.add_ExternalProcessorServicer_to_server(NoopProcessor(), server)
    serve_sync(server, args.port)


if __name__ == "__main__":
    main()
