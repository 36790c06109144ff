"""bench/noop_server.py, the bench's floor: its reply to each message, and the no-op on every gRPC stack
(bench/lab/noop_servers.py too) answering over a real gRPC channel."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from bench.lab.noop_servers import COMPARED_STACKS, STACK_PACKAGES
from bench.noop_server import answer
from support.processes import REPO_ROOT, ManagedProcess, free_port, wait_for_port


def request_headers(request_id: str = "") -> ep.ProcessingRequest:
    headers = HeaderMap(
        headers=[
            HeaderValue(key=":path", raw_value=b"/"),
            HeaderValue(key=":method", raw_value=b"GET"),
            HeaderValue(key="x-request-id", raw_value=request_id.encode()),
        ]
    )
    return ep.ProcessingRequest(request_headers=ep.HttpHeaders(headers=headers, end_of_stream=True))


def test_request_headers_get_an_empty_reply_that_skips_every_later_phase() -> None:
    reply = answer(request_headers())
    assert reply.WhichOneof("response") == "request_headers"
    assert reply.request_headers == ep.HeadersResponse()
    mode = reply.mode_override
    assert (mode.request_header_mode, mode.response_header_mode) == (ProcessingMode.SEND, ProcessingMode.SKIP)
    assert (mode.request_body_mode, mode.response_body_mode) == (ProcessingMode.NONE, ProcessingMode.NONE)
    assert (mode.request_trailer_mode, mode.response_trailer_mode) == (ProcessingMode.SKIP, ProcessingMode.SKIP)


# Every other message kind, with a sample message of it.
OTHER_MESSAGES = {
    "response_headers": ep.HttpHeaders(),
    "request_body": ep.HttpBody(body=b"x"),
    "response_body": ep.HttpBody(body=b"x"),
    "request_trailers": ep.HttpTrailers(),
    "response_trailers": ep.HttpTrailers(),
}


@pytest.mark.parametrize(("kind", "message"), OTHER_MESSAGES.items(), ids=list(OTHER_MESSAGES))
def test_any_other_message_gets_the_matching_empty_reply(kind: str, message: Any) -> None:
    reply = answer(ep.ProcessingRequest(**{kind: message}))
    assert reply.WhichOneof("response") == kind
    assert not reply.HasField("mode_override")
    assert getattr(reply, kind).ByteSize() == 0


# The floor, then the lab's other stacks, with the packages each needs.
SERVERS = {"sync": (("bench.noop_server",), ())} | {
    stack: (("bench.lab.noop_servers", "--stack", stack), STACK_PACKAGES[stack]) for stack in COMPARED_STACKS
}


@pytest.mark.parametrize("stack", list(SERVERS))
def test_each_stack_answers_request_headers_and_stops_cleanly(stack: str, tmp_path: Path) -> None:
    command, packages = SERVERS[stack]
    for module in packages:
        pytest.importorskip(module)
    port = free_port()
    argv = [sys.executable, "-m", *command, "--port", str(port)]
    with ManagedProcess(f"noop {stack}", argv, tmp_path / "server.log", cwd=REPO_ROOT) as server:
        wait_for_port("127.0.0.1", port, 30.0, process=server)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            replies = list(ep_grpc.ExternalProcessorStub(channel).Process(iter([request_headers()]), timeout=30))
    # One reply, then the server ends the stream once the client has half-closed.
    assert len(replies) == 1
    assert replies[0].WhichOneof("response") == "request_headers"
    assert replies[0].mode_override.response_header_mode == ProcessingMode.SKIP
    # SIGTERM (the context's exit) stops it with status 0, not by the default handler or SIGKILL.
    assert server.returncode == 0, server.log_text()
