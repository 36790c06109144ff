"""The admin HTTP endpoint over a real socket, and the log formats it sits beside."""

from __future__ import annotations

import io
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from prometheus_client import CONTENT_TYPE_LATEST

from extproc import logs
from extproc.admin import AdminServer, accepts_host
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


# --- who may talk to it: Host, Origin, token -------------------------------------------------------------

TOKEN = "4f1c9e0b7a2d4c55b8e3"


@pytest.fixture(scope="module")
def guarded() -> Iterator[tuple[AdminServer, int]]:
    server = AdminServer(
        ListenAddress("127.0.0.1", 0),
        Backend(),
        reload=lambda: ReloadResult(ok=True, message="loaded", config_hash="abc"),
        token=TOKEN,
    )
    server.start()
    try:
        yield server, server.port
    finally:
        server.stop()


AUTHORIZED = ("Authorization", f"Bearer {TOKEN}")


@pytest.mark.parametrize(
    "headers",
    [
        [("Host", "evil.example:{port}")],  # DNS rebinding: the page's own name, pointed at 127.0.0.1
        [("Host", "localhost.evil.example:{port}")],
        [("Host", "127.0.0.1:{other}")],
        [("Host", "127.0.0.1")],  # no port means 80
        [("Host", "127.0.0.1:{port}"), ("Host", "evil.example:{port}")],
        [("Host", "[::1:{port}")],
        [("Host", "::1:{port}")],
        [("Host", "127.0.0.1:{port}"), ("Origin", "http://evil.example")],  # CSRF: a form on another site
        [("Host", "127.0.0.1:{port}"), ("Origin", "null")],
        [("Host", "127.0.0.1:{port}"), ("Origin", "http://127.0.0.1:{other}")],
        [("Host", "127.0.0.1:{port}"), ("Origin", "https://127.0.0.1:{port}")],
    ],
    ids=[
        "foreign-host",
        "loopback-lookalike",
        "other-port",
        "default-port",
        "two-hosts",
        "broken-bracket",
        "unbracketed-v6",
        "foreign-origin",
        "null-origin",
        "origin-other-port",
        "origin-https",
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_requests_a_web_page_can_forge_are_refused(
    guarded: tuple[AdminServer, int], headers: list[tuple[str, str]], method: str
) -> None:
    _, port = guarded
    filled = [(name, value.format(port=port, other=port + 1)) for name, value in headers]
    path = "/reload" if method == "POST" else "/plugins"
    answer = request(method, f"http://127.0.0.1:{port}{path}", [*filled, AUTHORIZED])
    assert answer.status == 403, answer.text
    assert "ok" not in answer.text


@pytest.mark.parametrize(
    "headers",
    [
        [("Host", "127.0.0.1:{port}")],
        [("Host", "localhost:{port}")],
        [("Host", "LocalHost:{port}")],
        [("Host", "[::1]:{port}")],
        [("Host", "127.0.0.1:{port}"), ("Origin", "http://127.0.0.1:{port}")],
    ],
    ids=["address", "localhost", "case", "v6-loopback", "same-origin"],
)
def test_the_admin_address_and_loopback_names_are_served(
    guarded: tuple[AdminServer, int], headers: list[tuple[str, str]]
) -> None:
    _, port = guarded
    filled = [(name, value.format(port=port)) for name, value in headers]
    assert request("GET", f"http://127.0.0.1:{port}/plugins", filled).status == 200
    assert request("POST", f"http://127.0.0.1:{port}/reload", [*filled, AUTHORIZED]).json()["ok"] is True


def test_a_request_without_host_is_refused(guarded: tuple[AdminServer, int]) -> None:
    _, port = guarded
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /plugins HTTP/1.0\r\n\r\n")
        answer = sock.makefile("rb").read()
    assert answer.startswith(b"HTTP/1.0 403 "), answer


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer wrong-token-of-some-length", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}"],
    ids=["none", "empty", "wrong", "basic", "longer", "shorter"],
)
def test_reload_needs_the_token(guarded: tuple[AdminServer, int], authorization: str | None) -> None:
    _, port = guarded
    headers = [] if authorization is None else [("Authorization", authorization)]
    answer = request("POST", f"http://127.0.0.1:{port}/reload", headers)
    assert answer.status == 401
    assert answer.header("www-authenticate") == 'Bearer realm="extproc-admin"'
    assert TOKEN not in answer.text


def test_reading_needs_no_token_and_reload_takes_the_right_one(guarded: tuple[AdminServer, int]) -> None:
    _, port = guarded
    url = f"http://127.0.0.1:{port}"
    assert request("GET", f"{url}/metrics").status == 200
    assert request("GET", f"{url}/plugins").status == 200
    assert request("POST", f"{url}/reload", [("Authorization", f"bearer {TOKEN}")]).json()["ok"] is True


@pytest.mark.parametrize(
    ("listen", "host", "accepted"),
    [
        (ListenAddress("127.0.0.1", 9901), "127.0.0.1:9901", True),
        (ListenAddress("127.0.0.1", 9901), "localhost:9901", True),
        (ListenAddress("127.0.0.1", 9901), "127.0.0.1:9902", False),
        (ListenAddress("127.0.0.1", 9901), "10.0.0.5:9901", False),
        (ListenAddress("127.0.0.1", 9901), "attacker.example:9901", False),
        (ListenAddress("localhost", 9901), "127.0.0.1:9901", True),
        (ListenAddress("::1", 9901), "[::1]:9901", True),
        (ListenAddress("::1", 9901), "[::1]", False),
        (ListenAddress("127.0.0.1", 80), "localhost", True),
        # Off loopback (allow_plaintext_off_loopback): the address or, for a wildcard, any IP address.
        (ListenAddress("10.0.0.5", 9090), "10.0.0.5:9090", True),
        (ListenAddress("10.0.0.5", 9090), "localhost:9090", False),
        (ListenAddress("0.0.0.0", 9090), "10.1.2.3:9090", True),
        (ListenAddress("0.0.0.0", 9090), "localhost:9090", True),
        (ListenAddress("::", 9090), "[fd00::1]:9090", True),
        (ListenAddress("0.0.0.0", 9090), "extproc.default.svc:9090", False),
        (ListenAddress("admin.internal", 9090), "Admin.Internal:9090", True),
    ],
    ids=[
        "exact",
        "localhost-name",
        "other-port",
        "other-ip",
        "other-name",
        "listen-localhost",
        "v6",
        "v6-without-port",
        "port-80-without-port",
        "off-loopback-exact",
        "off-loopback-localhost",
        "wildcard-any-ip",
        "wildcard-localhost",
        "v6-wildcard",
        "wildcard-name",
        "listen-name-any-case",
    ],
)
def test_accepts_host(listen: ListenAddress, host: str, accepted: bool) -> None:
    assert accepts_host(host, listen) is accepted


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
