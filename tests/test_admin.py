"""The admin HTTP endpoint over a real socket, and the log formats it sits beside."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from prometheus_client import CONTENT_TYPE_LATEST

from extproc import logs
from extproc.admin import AdminServer
from extproc.config import ListenAddress
from extproc.reload import ReloadResult
from tests.e2e.harness import request


class Backend:
    def __init__(self) -> None:
        self.ready = True

    def metrics_text(self) -> bytes:
        return b"# TYPE up gauge\nup 1.0\n"

    def readiness(self) -> tuple[bool, str]:
        return self.ready, "fine" if self.ready else "draining"

    def plugin_report(self) -> list[dict[str, Any]]:
        return [{"name": "p", "state": "closed"}]


@pytest.fixture
def admin() -> Iterator[tuple[AdminServer, Backend, str]]:
    backend = Backend()
    server = AdminServer(ListenAddress("127.0.0.1", 0), backend)
    server.start()
    try:
        yield server, backend, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def test_endpoints(admin: tuple[AdminServer, Backend, str]) -> None:
    _, backend, url = admin
    metrics = request("GET", f"{url}/metrics")
    assert (metrics.status, metrics.body) == (200, b"# TYPE up gauge\nup 1.0\n")
    assert metrics.header("content-type") == CONTENT_TYPE_LATEST
    assert request("GET", f"{url}/healthz").status == 200
    assert (request("GET", f"{url}/readyz").status, request("GET", f"{url}/readyz").text) == (200, "fine\n")
    backend.ready = False
    assert (request("GET", f"{url}/readyz").status, request("GET", f"{url}/readyz").text) == (503, "draining\n")
    assert request("GET", f"{url}/plugins").json() == {"plugins": [{"name": "p", "state": "closed"}]}
    assert request("GET", f"{url}/nope").status == 404
    assert request("GET", f"{url}/reload").status == 405
    assert request("POST", f"{url}/metrics").status == 404


def test_reload_is_501_until_a_hook_is_given(admin: tuple[AdminServer, Backend, str]) -> None:
    server, _, url = admin
    assert request("POST", f"{url}/reload").status == 501
    server.reload = lambda: ReloadResult(ok=False, message="plugins[0].path: file not found", config_hash="abc")
    failed = request("POST", f"{url}/reload")
    assert (failed.status, failed.json()) == (
        422,
        {"ok": False, "message": "plugins[0].path: file not found", "config_hash": "abc"},
    )
    server.reload = lambda: ReloadResult(ok=True, message="loaded 1 plugin(s)", config_hash="def")
    assert request("POST", f"{url}/reload").json()["ok"] is True


def headers_message(request_id: str | None) -> ep.ProcessingRequest:
    pairs = [(":path", "/"), *([] if request_id is None else [("x-request-id", request_id)])]
    headers = [base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
    return ep.ProcessingRequest(request_headers=ep.HttpHeaders(headers=base_pb2.HeaderMap(headers=headers)))


def capture(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter() if fmt == "json" else logs.TextFormatter())
    handler.addFilter(logs.RequestIdFilter())
    logger = logging.getLogger(f"test.admin.{fmt}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_json_lines_carry_request_id_and_plugin() -> None:
    logger, stream = capture("json")
    logs.bind_stream(headers_message("req-42"))
    try:
        logger.warning("plugin %s failed", "p", extra={"plugin": "p", "phase": "process_request_headers"})
    finally:
        logs.unbind_stream()
    logger.info("after the stream")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "plugin p failed"
    assert (first["level"], first["logger"]) == ("warning", "test.admin.json")
    assert (first["request_id"], first["plugin"], first["phase"]) == ("req-42", "p", "process_request_headers")
    assert first["time"].endswith("Z")
    assert "request_id" not in second


def test_text_lines_show_fields_and_tracebacks() -> None:
    logger, stream = capture("text")
    logs.bind_stream(headers_message(None))  # no x-request-id: no field rather than an empty one
    try:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logger.exception("failed", extra={"plugin": "my plugin"})
    finally:
        logs.unbind_stream()
    first, *trace = stream.getvalue().splitlines()
    assert first.endswith(' ERROR test.admin.text failed plugin="my plugin"')
    assert trace[-1] == "RuntimeError: boom"
