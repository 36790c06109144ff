"""bench/noop_server.py: the shared no-op reply, and each --stack answering over a real gRPC channel."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from bench import noop_server
from bench.noop_server import BENCH_PACKAGES, STACKS, answer
from tests.e2e.harness import REPO_ROOT, ManagedProcess, free_port, wait_for_port, wait_until

NOOP_SERVER = Path(noop_server.__file__)


def _request_headers(request_id: str = "") -> ep.ProcessingRequest:
    headers = HeaderMap(
        headers=[
            HeaderValue(key=":path", raw_value=b"/"),
            HeaderValue(key=":method", raw_value=b"GET"),
            HeaderValue(key="x-request-id", raw_value=request_id.encode()),
        ]
    )
    return ep.ProcessingRequest(request_headers=ep.HttpHeaders(headers=headers, end_of_stream=True))


def test_request_headers_get_an_empty_reply_that_skips_every_later_phase() -> None:
    reply = answer(_request_headers())
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


@pytest.mark.parametrize("stack", STACKS)
def test_each_stack_answers_request_headers_and_stops_cleanly(stack: str, tmp_path: Path) -> None:
    for module in BENCH_PACKAGES[stack]:
        pytest.importorskip(module)
    port = free_port()
    argv = [sys.executable, str(NOOP_SERVER), "--port", str(port), "--stack", stack]
    with ManagedProcess(f"noop {stack}", argv, tmp_path / "server.log", cwd=REPO_ROOT) as server:
        wait_for_port("127.0.0.1", port, 30.0, process=server)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            replies = list(ep_grpc.ExternalProcessorStub(channel).Process(iter([_request_headers()]), timeout=30))
    # One reply, then the server ends the stream once the client has half-closed.
    assert len(replies) == 1
    assert replies[0].WhichOneof("response") == "request_headers"
    assert replies[0].mode_override.response_header_mode == ProcessingMode.SKIP
    # SIGTERM (the context's exit) stops it with status 0, not by the default handler or SIGKILL.
    assert server.returncode == 0, server.log_text()


def test_timings_are_recorded_between_the_signals_and_written_whole(tmp_path: Path) -> None:
    port, timings = free_port(), tmp_path / "timings.txt"
    argv = [sys.executable, str(NOOP_SERVER), "--port", str(port), "--timings", str(timings)]
    with ManagedProcess("noop timed", argv, tmp_path / "server.log", cwd=REPO_ROOT) as server:
        wait_for_port("127.0.0.1", port, 30.0, process=server)
        assert server.pid is not None
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ep_grpc.ExternalProcessorStub(channel)
            list(stub.Process(iter([_request_headers()]), timeout=30))  # before recording: not counted
            timings.write_text("stale 1 2 3 4 5\n")  # an earlier recording's file is replaced
            os.kill(server.pid, signal.SIGUSR1)
            wait_until(noop_server.recording_marker(timings).exists, 10.0, "recording to start")
            assert not timings.exists()
            for number in (1, 2, 3):
                assert len(list(stub.Process(iter([_request_headers(f"req-{number}")]), timeout=30))) == 1
            os.kill(server.pid, signal.SIGUSR2)
            wait_until(timings.exists, 10.0, "the timings file")
    assert not noop_server.recording_marker(timings).exists()
    rows = noop_server.read_timings(timings.read_text())
    assert len(rows) == 3
    assert all(
        len(row.moments) == len(noop_server.MOMENTS) and list(row.moments) == sorted(row.moments) for row in rows
    )
    assert [row.request_id for row in rows] == ["req-1", "req-2", "req-3"]


def test_spans_inside_the_server_and_around_it_from_envoys_log() -> None:
    us = 1000  # the moments are in ns
    rows = [
        noop_server.StreamRow("a", (100_000 * us, 100_200 * us, 100_500 * us, 100_550 * us, 101_000 * us)),
        noop_server.StreamRow("b", (200_000 * us, 200_100 * us, 200_200 * us, 200_250 * us, 200_300 * us)),
    ]
    # Envoy began request "a" 400 us before the dispatch and had the reply 1450 us after it was
    # yielded; request "b" is not in Envoy's log (e.g. it started before the window).
    found = noop_server.spans(rows, {"a": (99_600 / 1e6, 3000)})
    assert list(found.values()) == [
        [pytest.approx(400)],
        [200, 100],
        [300, 100],
        [50, 50],
        [pytest.approx(2050)],
        [450, 50],
    ]
    assert list(found) == [name for name, _, _ in noop_server.SPANS]


@pytest.mark.parametrize("line", ["a 1 2 3 4", "a 1 2 3 4 5 6", "a 1 2 x 4 5", "1 2 3 4 5"])
def test_a_malformed_timings_line_is_an_error(line: str) -> None:
    with pytest.raises(ValueError, match="expected a request id and 5 timestamps"):
        noop_server.read_timings(line)


def test_timings_are_refused_on_the_async_stacks(tmp_path: Path) -> None:
    argv = [sys.executable, str(NOOP_SERVER), "--port", "1", "--stack", "aio", "--timings", str(tmp_path / "t")]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=False)
    assert proc.returncode == 2
    assert "--timings is only for the sync stack" in proc.stderr
