"""Plugin HTTP calls (extproc/plugins/http_calls.py and the extproc_http_request host function) against a
real loopback HTTP server: every redirect hop checked against allowed_hosts, the response size and the
time bounded, and every failure a value the plugin reads (through each SDK's HTTP client, in a probe plugin:
sdk/assemblyscript/tests/http_probe.ts and its Rust and C twins, test ids assemblyscript_sdk, rust_sdk, c_sdk)."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from extproc.plugins import http_calls
from extproc.plugins.http_calls import ErrorKind, HttpCallError, HttpPolicy, HttpRequest, fetch, parse_request
from extproc.testing import PluginHarness, request
from scripts import sdk_build
from support.npm import npm
from tests.e2e.test_tls import Authority
from tests.examples_build import EXAMPLES_DIR, REPO_ROOT, ensure_installed

PROBE_SOURCE = REPO_ROOT / "sdk" / "assemblyscript" / "tests" / "http_probe.ts"


class Seen:
    """One request as the server received it."""

    def __init__(self, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.method, self.path, self.headers, self.body = method, path, headers, body


class Server:
    """A loopback HTTP/1.1 server. Routes: /echo, /redirect?to=URL[&status=N], /chain/N (N redirects to
    itself, then 200), /bytes?n=N[&chunked=1], /binary, /slow (answers once the test is over), /drip (one
    header byte every 50 ms)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.seen: list[Seen] = []
        self.over = threading.Event()
        self.connections: list[socket.socket] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                owner.connections.append(self.connection)

            def do_GET(self) -> None:
                self.route()

            def do_POST(self) -> None:
                self.route()

            def do_PUT(self) -> None:
                self.route()

            def route(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                owner.seen.append(Seen(self.command, self.path, headers, body))
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                if url.path == "/redirect":
                    self.answer(int(query.get("status", "302")), b"", [("location", query["to"])])
                elif url.path.startswith("/chain/"):
                    left = int(url.path.rpartition("/")[2])
                    if left:
                        self.answer(302, b"", [("location", f"/chain/{left - 1}")])
                    else:
                        self.answer(200, b"end of chain")
                elif url.path == "/bytes":
                    self.answer(200, b"x" * int(query["n"]), chunked=query.get("chunked") == "1")
                elif url.path == "/binary":
                    self.answer(200, b"\xff\x00\xfe", [("content-type", "application/octet-stream")])
                elif url.path == "/slow":
                    owner.over.wait(30)
                    self.answer(200, b"late")
                elif url.path == "/drip":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nx-drip: ")
                    for _ in range(200):
                        self.wfile.write(b"a")
                        self.wfile.flush()
                        if owner.over.wait(0.05):
                            break
                else:
                    echo = {"method": self.command, "path": self.path, "headers": headers, "body": body.decode()}
                    self.answer(200, json.dumps(echo).encode(), [("content-type", "application/json")])

            def answer(
                self, status: int, body: bytes, headers: Sequence[tuple[str, str]] = (), chunked: bool = False
            ) -> None:
                try:
                    self.send_response(status)
                    for name, value in headers:
                        self.send_header(name, value)
                    if chunked:
                        self.send_header("transfer-encoding", "chunked")
                        self.end_headers()
                        for start in range(0, len(body), 1000):
                            piece = body[start : start + 1000]
                            self.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                        self.wfile.write(b"0\r\n\r\n")
                    else:
                        self.send_header("content-length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                except OSError:  # the client gave up (a timeout test) and closed the connection
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "http" if tls is None else "https"
        self.port = self.server.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"


@pytest.fixture
def server() -> Iterator[Server]:
    yield from serve(Server())


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    ca = Authority(tmp_path, "test-ca")
    issued = ca.issue("localhost", server=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.cert, issued.key)
    for endpoint in serve(Server(context)):
        yield endpoint, ca.cert_file


def serve(endpoint: Server) -> Iterator[Server]:
    thread = threading.Thread(target=endpoint.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        endpoint.over.set()
        endpoint.server.shutdown()
        endpoint.server.server_close()
        thread.join()
        # Kept-alive connections outlive the server otherwise, and a later test's server may get this port.
        for connection in endpoint.connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


def call(policy: HttpPolicy, spec: dict[str, Any], seconds: float = 5.0) -> Any:
    """What the host function gives the plugin for this request JSON, parsed."""
    try:
        answer = fetch(policy, parse_request(json.dumps(spec).encode()), time.monotonic() + seconds)
    except HttpCallError as exc:
        return json.loads(exc.to_json())
    return json.loads(answer.to_json())


LOOPBACK = HttpPolicy(("127.0.0.1",))


# --- the client, called as the host function calls it ------------------------------------------------


def test_a_redirect_to_a_host_not_allowed_is_refused_and_never_reached(server: Server) -> None:
    policy = HttpPolicy(("localhost",))
    target = server.url("/echo")
    answer = call(policy, {"url": server.url(f"/redirect?to={target}", host="localhost")})
    assert answer["error"]["kind"] == "host_refused"
    assert "'127.0.0.1' is not in allowed_hosts (a redirect from http://localhost:" in answer["error"]["message"]
    assert [seen.path for seen in server.seen] == [f"/redirect?to={target}"]


def test_allowed_redirects_are_followed_within_the_limit(server: Server) -> None:
    policy = HttpPolicy(("localhost", "127.0.0.1"))
    answer = call(policy, {"url": server.url("/redirect?to=" + server.url("/echo"), host="localhost")})
    assert answer["status"] == 200 and answer["url"] == server.url("/echo")
    assert json.loads(answer["body"]["text"])["headers"]["host"] == f"127.0.0.1:{server.port}"

    assert call(LOOPBACK, {"url": server.url("/chain/5")})["body"] == {"text": "end of chain"}
    too_long = call(LOOPBACK, {"url": server.url("/chain/3"), "max_redirects": 2})
    assert too_long["error"]["kind"] == "too_many_redirects"
    # 0: the plugin follows redirects itself.
    own = call(LOOPBACK, {"url": server.url("/chain/3"), "max_redirects": 0})
    assert own["status"] == 302 and {"name": "location", "value": "/chain/2"} in own["headers"]


def test_redirects_change_method_and_drop_credentials_as_browsers_do(server: Server) -> None:
    policy = HttpPolicy(("localhost", "127.0.0.1"))
    credentials = [{"name": "authorization", "value": "Bearer t"}, {"name": "content-type", "value": "text/plain"}]
    post = {"method": "POST", "headers": credentials, "body": {"text": "form"}}
    call(policy, {**post, "url": server.url("/redirect?status=303&to=/echo")})
    call(policy, {**post, "url": server.url("/redirect?status=307&to=" + server.url("/echo", host="localhost"))})
    see_other, cross_origin = server.seen[1], server.seen[3]
    # 303 (and 301/302 after POST): GET without the body; same origin, so the credentials stay.
    assert (see_other.method, see_other.body, see_other.headers.get("authorization")) == ("GET", b"", "Bearer t")
    assert "content-type" not in see_other.headers
    # 307 keeps method and body; another origin never sees the credentials.
    assert (cross_origin.method, cross_origin.body) == ("POST", b"form")
    assert "authorization" not in cross_origin.headers


def test_responses_over_the_limit_are_refused(server: Server) -> None:
    small = HttpPolicy(("127.0.0.1",), max_response_bytes=1000)
    assert call(small, {"url": server.url("/bytes?n=1000")})["body"] == {"text": "x" * 1000}
    declared = call(small, {"url": server.url("/bytes?n=1001")})["error"]
    assert declared == {
        "kind": "too_large",
        "message": f"{server.url('/bytes?n=1001')}: content-length 1001, over 1000 bytes",
    }
    streamed = call(small, {"url": server.url("/bytes?n=5000&chunked=1")})["error"]
    assert streamed["kind"] == "too_large" and "response body over 1000 bytes" in streamed["message"]


def test_a_slow_answer_times_out_by_the_deadline(server: Server) -> None:
    for path, deadline, request_timeout in (("/slow", 0.3, None), ("/slow", 5.0, 300), ("/drip", 0.3, None)):
        started = time.monotonic()
        answer = call(LOOPBACK, {"url": server.url(path), "timeout_ms": request_timeout}, seconds=deadline)
        took = time.monotonic() - started
        assert answer["error"]["kind"] == "timeout", path
        # /drip sends a byte every 50 ms for 10 s: a per-read socket timeout would never fire.
        assert 0.25 < took < 1.5, (path, took)


def test_hosts_schemes_and_connections_that_fail(server: Server) -> None:
    assert call(LOOPBACK, {"url": server.url("/echo", host="localhost")})["error"]["kind"] == "host_refused"
    assert call(LOOPBACK, {"url": f"ftp://127.0.0.1:{server.port}/"})["error"]["kind"] == "host_refused"
    assert call(HttpPolicy(()), {"url": server.url("/echo")})["error"]["kind"] == "host_refused"
    with socket.socket() as bound:  # bound but not listening: every connect is refused
        bound.bind(("127.0.0.1", 0))
        refused = call(LOOPBACK, {"url": f"http://127.0.0.1:{bound.getsockname()[1]}/"})["error"]
    assert refused["kind"] == "connection" and "cannot connect to 127.0.0.1" in refused["message"]


def test_https_is_verified_against_the_system_trust_store(
    tls_server: tuple[Server, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, ca = tls_server
    policy = HttpPolicy(("localhost",))
    monkeypatch.setattr(http_calls, "_pool_instance", None)  # a pool that reads the trust store anew
    untrusted = call(policy, {"url": server.url("/echo", host="localhost")})["error"]
    assert untrusted["kind"] == "connection" and "CERTIFICATE_VERIFY_FAILED" in untrusted["message"]

    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # how an operator adds a CA to OpenSSL's default paths
    monkeypatch.setattr(http_calls, "_pool_instance", None)
    answer = call(policy, {"url": server.url("/echo", host="localhost"), "method": "POST", "body": {"text": "hi"}})
    assert answer["status"] == 200 and json.loads(answer["body"]["text"])["body"] == "hi"


def test_a_tls_handshake_that_never_ends_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connects complete in the backlog; nothing answers
        url = f"https://127.0.0.1:{silent.getsockname()[1]}/"
        started = time.monotonic()
        answer = call(LOOPBACK, {"url": url}, seconds=0.3)
    assert answer["error"]["kind"] == "timeout" and 0.25 < time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    ("allowed", "host", "allowed_it"),
    [
        (("api.example.com",), "api.example.com", True),
        (("api.example.com",), "API.Example.com", True),
        (("*.example.com",), "a.b.example.com", True),
        (("*.example.com",), "example.com", False),
        (("*.example.com",), "example.com.evil.net", False),
        (("127.0.0.1",), "127.0.0.1", True),
        (("*.0.0.1",), "127.0.0.1", False),  # a wildcard never admits an address
        (("[::1]",), "[0:0::1]", True),  # addresses compare as addresses
        (("localhost",), "127.0.0.1", False),  # names are not resolved to match addresses
    ],
    ids=[
        "exact",
        "any-case",
        "wildcard-deeper",
        "wildcard-bare",
        "wildcard-suffix-forged",
        "address",
        "wildcard-address",
        "v6-forms",
        "name-vs-address",
    ],
)
def test_allowed_hosts_matching(allowed: tuple[str, ...], host: str, allowed_it: bool) -> None:
    url = f"http://{host}/x"
    if allowed_it:
        assert HttpPolicy(allowed).check(url).host == host.lower().strip("[]").replace("0:0::1", "::1")
    else:
        with pytest.raises(HttpCallError) as caught:
            HttpPolicy(allowed).check(url)
        assert caught.value.kind is ErrorKind.HOST_REFUSED


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"url": "http://127.1/"}, "invalid host '127.1'"),  # a resolver reads it as 127.0.0.1
        ({"url": "http://u:p@127.0.0.1/"}, "credentials in the URL"),
        ({"url": "http://127.0.0.1:99999/"}, "invalid URL"),
        ({"url": "http://127.0.0.1/a b"}, "percent-encode"),
        ({"url": "http://127.0.0.1/", "method": "CONNECT"}, "CONNECT is refused"),
        ({"url": "http://127.0.0.1/", "headers": [{"name": "Host", "value": "admin"}]}, "'host' is set by the server"),
        (
            {"url": "http://127.0.0.1/", "headers": [{"name": "transfer-encoding", "value": "chunked"}]},
            "'transfer-encoding' is set by the server",
        ),
        ({"url": "http://127.0.0.1/", "headers": [{"name": "x", "value": "a\r\nb: c"}]}, "CR, LF or NUL"),
        ({"url": "http://127.0.0.1/", "headers": [{"name": "x", "value": "v" * 70_000}]}, "over 65536"),
        ({"url": "http://127.0.0.1/", "body": {"text": "x" * (1024 * 1024 + 1)}}, "over 1048576"),
        ({"url": "http://127.0.0.1/", "body": {"data": "%%%"}}, "not base64"),
        ({"url": "http://127.0.0.1/", "max_redirects": 11}, "max_redirects must be 0-10"),
        ({"url": "http://127.0.0.1/", "timeout_ms": 0}, "timeout_ms must be a positive integer"),
        ({"url": "http://127.0.0.1/", "verify": False}, "unknown request fields ['verify']"),
        ({"method": "GET"}, "needs a 'url' string"),
    ],
    ids=[
        "short-ipv4",
        "credentials",
        "bad-port",
        "space-in-path",
        "connect",
        "host-header",
        "transfer-encoding",
        "crlf-in-value",
        "headers-too-large",
        "body-too-large",
        "body-not-base64",
        "too-many-redirects",
        "zero-timeout",
        "unknown-field",
        "no-url",
    ],
)
def test_bad_requests_are_refused_before_any_connection(spec: dict[str, Any], reason: str) -> None:
    answer = call(HttpPolicy(("127.0.0.1", "127.1")), spec)
    assert answer["error"]["kind"] == "bad_request"
    assert reason in answer["error"]["message"]


def test_bodies_are_text_when_utf8_and_base64_otherwise(server: Server) -> None:
    answer = call(LOOPBACK, {"url": server.url("/binary")})
    assert answer["body"] == {"data": "/wD+"}
    sent = call(LOOPBACK, {"url": server.url("/echo"), "method": "PUT", "body": {"data": "aMOp"}})
    assert json.loads(sent["body"]["text"])["method"] == "PUT" and server.seen[-1].body == "hé".encode()


def test_parse_request_defaults() -> None:
    assert parse_request(b'{"url": "http://a/"}') == HttpRequest("http://a/")


# --- through a plugin: the SDK's Http on the host function --------------------------------------------


SDKS = ["assemblyscript", "rust", "c"]


@pytest.fixture(scope="module", params=SDKS, ids=[f"{sdk}_sdk" for sdk in SDKS])
def probe_wasm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if request.param != "assemblyscript":
        return sdk_build.probe_wasm(request.param, "host")
    ensure_installed()  # examples/ has assemblyscript and the SDK's extproc-build
    wasm = tmp_path_factory.mktemp("sdk-http") / "http_probe.wasm"
    npm(["exec", "--", "extproc-build", str(PROBE_SOURCE), "-o", str(wasm)], EXAMPLES_DIR)
    return wasm


def probe(wasm: Path, config: dict[str, Any], **settings: Any) -> Any:
    settings.setdefault("allowed_hosts", ["127.0.0.1"])
    # Room for a loaded machine: these calls are about what the plugin sees, not about its time limit.
    settings.setdefault("timeout_ms", 2000)
    # The Rust and C probes also export process_request_headers (their key-value checks).
    settings.setdefault("execution_points", ["generate_response"])
    with PluginHarness(wasm, config=config, **settings) as harness:
        result = harness.run(request())
    assert result.status == 200, result
    return json.loads(result.response.body if result.response is not None else b"")


def test_the_sdk_sees_answers_and_failures_as_values(probe_wasm: Path, server: Server) -> None:
    echo = probe(probe_wasm, {"url": server.url("/echo"), "method": "POST", "body": "hi", "header": ["x-a", "b"]})
    assert echo["status"] == 200 and echo["error"] == "" and echo["content_type"] == "application/json"
    assert json.loads(echo["body"])["body"] == "hi" and server.seen[-1].headers["x-a"] == "b"

    escape = probe(
        probe_wasm,
        {"url": server.url("/redirect?to=" + server.url("/echo"), host="localhost")},
        allowed_hosts=["localhost"],
    )
    assert (escape["status"], escape["error"]) == (0, "host_refused")
    assert "'127.0.0.1' is not in allowed_hosts" in escape["message"]

    big = probe(probe_wasm, {"url": server.url("/bytes?n=2000")}, max_http_response_bytes=1000)
    assert big["error"] == "too_large"
    hops = probe(probe_wasm, {"url": server.url("/chain/2"), "max_redirects": 1})
    assert hops["error"] == "too_many_redirects"


def test_a_plugin_told_timeout_still_answers_within_its_own_timeout(probe_wasm: Path, server: Server) -> None:
    # The call ends a tenth of timeout_ms before the plugin's deadline, so the plugin can act on it: probe()
    # checks it answered (200); had the call run to the deadline, Extism would have failed it (503).
    slow = probe(probe_wasm, {"url": server.url("/slow")}, timeout_ms=1000)
    assert slow["error"] == "timeout"
    shorter = probe(probe_wasm, {"url": server.url("/slow"), "timeout_ms": 100}, timeout_ms=2000)
    assert shorter["error"] == "timeout"


def test_extism_builtin_http_request_is_refused_whatever_allowed_hosts_say(plugin_dir: Path, server: Server) -> None:
    wasm = plugin_dir / "kernelhttp.wasm"
    with PluginHarness(wasm, config={"url": server.url("/echo")}, allowed_hosts=["127.0.0.1"]) as harness:
        result = harness.run(request())
    # Extism traps the call (the plugin cannot bypass the checks through it), so on_error answers.
    assert (result.status, result.immediate_details) == (503, "extproc_plugin_failure")
    assert server.seen == []


def test_concurrent_calls_share_the_pool_safely(server: Server) -> None:
    threads, calls = 8, 5
    barrier = threading.Barrier(threads)

    def work(i: int) -> list[int]:
        barrier.wait()
        return [call(LOOPBACK, {"url": server.url(f"/echo?{i}")})["status"] for _ in range(calls)]

    with ThreadPoolExecutor(threads) as pool:
        statuses = [status for batch in pool.map(work, range(threads)) for status in batch]
    assert statuses == [200] * threads * calls
    # Kept-alive connections are reused: at most one per thread that ran at the same time.
    assert len(server.connections) <= threads
