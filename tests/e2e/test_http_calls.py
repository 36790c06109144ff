"""Plugin HTTP calls through extproc_http_request: the token-introspect example against a real
introspection endpoint, and the limits (allowed_hosts on every redirect hop, max_http_response_bytes,
timeout_ms), each reported to the plugin, which answers 503 itself and logs why."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.examples_build import example_wasm

from .conftest import StackFactory
from .harness import request

pytestmark = pytest.mark.e2e

TOKENS = {"good-token": {"active": True, "sub": "alice"}, "old-token": {"active": False}}


class Introspection:
    """A loopback introspection endpoint: /introspect answers from TOKENS, /big with too many bytes,
    /slow only once the test is over, /moved with a 302 to /introspect on 127.0.0.1."""

    def __init__(self) -> None:
        self.forms: list[dict[str, list[str]]] = []
        self.release = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                owner.forms.append(urllib.parse.parse_qs(body.decode()))
                if self.path == "/moved":
                    self.send_response(302)
                    self.send_header("location", f"http://127.0.0.1:{owner.port}/introspect")
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                if self.path == "/slow":
                    owner.release.wait(30)
                payload: Any = {"active": True, "pad": "x" * 4096} if self.path == "/big" else None
                if payload is None:
                    token = owner.forms[-1].get("token", [""])[0]
                    payload = TOKENS.get(token, {"active": False})
                data = json.dumps(payload).encode()
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the plugin gave up on /slow long ago and closed the connection
                    pass

            def do_GET(self) -> None:  # where a client that follows the 302 of a POST goes
                self.do_POST()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]


@pytest.fixture
def introspection() -> Iterator[Introspection]:
    endpoint = Introspection()
    thread = threading.Thread(target=endpoint.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        endpoint.release.set()
        endpoint.server.shutdown()
        endpoint.server.server_close()
        thread.join()


def introspect_plugin(name: str, prefix: str, url: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "path": str(example_wasm("token-introspect")),
        "match": {"path_prefix": prefix},
        "allowed_hosts": ["127.0.0.1"],
        "timeout_ms": 1000,
        "config": {"introspect_url": url, "forward_as": "x-subject"},
        **fields,
    }


def test_token_introspection_over_plugin_http_calls(make_stack: StackFactory, introspection: Introspection) -> None:
    base = f"http://127.0.0.1:{introspection.port}"
    plugins = [
        introspect_plugin("ok", "/ok", f"{base}/introspect"),
        # Same port, but "localhost" is not in allowed_hosts.
        introspect_plugin("refused", "/refused", f"http://localhost:{introspection.port}/introspect"),
        introspect_plugin("big", "/big", f"{base}/big", max_http_response_bytes=1024),
        introspect_plugin("slow", "/slow", f"{base}/slow", timeout_ms=300),
        # Allowed: localhost only. The endpoint redirects to 127.0.0.1, which is not.
        introspect_plugin(
            "moved", "/moved", f"http://localhost:{introspection.port}/moved", allowed_hosts=["localhost"]
        ),
    ]

    def call(path: str, token: str = "good-token") -> Any:
        return request("GET", f"{stack.url}{path}", headers=[("authorization", f"Bearer {token}")])

    with make_stack(json.dumps({"plugins": plugins})) as stack:
        good = call("/ok/items")
        inactive = call("/ok/items", "old-token")
        missing = request("GET", f"{stack.url}/ok/items")
        asked = len(introspection.forms)
        refused = call("/refused/items")
        big = call("/big/items")
        slow = call("/slow/items")
        moved = call("/moved/items")
        log = stack.server_log()

    assert good.status == 200
    assert ("x-subject", "alice") in [tuple(pair) for pair in good.json()["headers"]]
    assert inactive.status == 401 and inactive.json() == {"error": "inactive token"}
    assert missing.status == 401
    # The endpoint saw the two tokens, form-encoded; the request without one was answered without a call.
    assert [form["token"] for form in introspection.forms[:asked]] == [["good-token"], ["old-token"]]

    # Refused, too large, too slow and the redirect to a host not allowed all reach the plugin as values:
    # it answers 503 itself and logs why.
    for response in (refused, big, slow, moved):
        assert response.status == 503, response
        assert response.json() == {"error": "token could not be checked"}
    for name, kind in (
        ("refused", "host_refused"),
        ("big", "too_large"),
        ("slow", "timeout"),
        ("moved", "host_refused"),
    ):
        assert f"[{name}] introspection call failed: {kind}: " in log, name
    assert "'127.0.0.1' is not in allowed_hosts (a redirect from http://localhost:" in log
    # The refused call never reached the endpoint; the big, the slow one and the first hop of the moved one
    # did, and the 302's target was never asked. The slow one was cut off by the plugin's timeout: its answer
    # only comes after the test.
    assert len(introspection.forms) == asked + 3
