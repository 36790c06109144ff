"""The floor for any Python ext_proc server: a no-op written the simplest way with grpcio.

Run as ``python bench/noop_server.py --port P``. It answers the request headers with no change
and, like our server does for header-only plugins, a mode override that skips every later
phase, so each HTTP request costs one message each way; any other message gets an empty reply.
16 threads: as many as wrk's connections, so no stream waits for one.
"""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Iterator
from concurrent import futures
from types import FrameType

import grpc
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

_SKIP_REST = ProcessingMode(
    request_header_mode=ProcessingMode.SEND,
    response_header_mode=ProcessingMode.SKIP,
    request_body_mode=ProcessingMode.NONE,
    response_body_mode=ProcessingMode.NONE,
    request_trailer_mode=ProcessingMode.SKIP,
    response_trailer_mode=ProcessingMode.SKIP,
)


class NoopProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def Process(
        self, request_iterator: Iterator[ep.ProcessingRequest], context: grpc.ServicerContext
    ) -> Iterator[ep.ProcessingResponse]:
        for request in request_iterator:
            kind = request.WhichOneof("request")
            if kind == "request_headers":
                yield ep.ProcessingResponse(request_headers=ep.HeadersResponse(), mode_override=_SKIP_REST)
            elif kind in ("request_body", "response_body"):
                yield ep.ProcessingResponse(**{kind: ep.BodyResponse()})
            elif kind == "response_headers":
                yield ep.ProcessingResponse(response_headers=ep.HeadersResponse())
            else:
                yield ep.ProcessingResponse(**{kind: ep.TrailersResponse()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads))
    ep_grpc.add_ExternalProcessorServicer_to_server(NoopProcessor(), server)
    if server.add_insecure_port(f"127.0.0.1:{args.port}") == 0:
        raise SystemExit(f"noop_server: cannot listen on 127.0.0.1:{args.port}")
    stopping = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    stopping.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    main()
