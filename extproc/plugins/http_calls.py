"""Outgoing HTTP for plugins: the client behind the `extproc_http_request` host function.

Extism's own `http_request` follows redirects without checking `allowed_hosts` again, and every
failure traps the plugin. This client checks every hop (scheme, host) against the plugin's allow-list,
bounds the response size and ends by a deadline however slowly the peer sends, and reports a failure
as an `HttpCallError` whose `kind` the plugin gets as a value.

It is built on httpcore (the transport of httpx): its pluggable network backend lets every socket
operation, the TLS handshake included, be cut off at the call's deadline, which per-operation socket
timeouts (urllib3's) cannot do against a peer that sends one byte at a time. httpcore also reads no
proxy settings from the environment, so a request goes to the checked host and nowhere else.
"""

from __future__ import annotations

import base64
import errno
import functools
import ipaddress
import math
import re
import select
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, TypeVar

import httpcore
import orjson

from extproc.errors import ExtprocError
from extproc.plugins.match import host_matches

# A plugin asks for more with `max_redirects`; a longer chain is a misconfigured endpoint, not a need.
DEFAULT_MAX_REDIRECTS: Final = 5
MAX_REDIRECTS_LIMIT: Final = 10
MAX_REQUEST_BODY_BYTES: Final = 1024 * 1024
MAX_REQUEST_HEADER_BYTES: Final = 64 * 1024
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
# The client frames the request and names the host itself: a plugin-set Host would reach another virtual
# host behind an allowed name, and a plugin-set Content-Length or Transfer-Encoding could smuggle a request.
RESERVED_HEADERS: Final = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "te", "trailer"}
    | {"proxy-connection", "expect"}
)
# Dropped when a redirect leaves the origin, so credentials meant for one host never reach another.
CREDENTIAL_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie"})

_TOKEN_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DNS_NAME_RE: Final = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*")
# A name whose last label is a number is an IPv4 address to the resolver ("127.1", "0x7f.1"), which
# would let a name pattern admit an address; such hosts are refused.
_NUMERIC_LABEL_RE: Final = re.compile(r"[0-9]+|0x[0-9a-f]*")
_TARGET_RE: Final = re.compile(r"[\x21-\x7e]*")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class ErrorKind(StrEnum):
    """Why an HTTP call got no answer: the `error.kind` the plugin reads."""

    BAD_REQUEST = "bad_request"  # the request (or a redirect's URL) is malformed or over a limit
    HOST_REFUSED = "host_refused"  # the URL or a redirect is not http(s) to a host in allowed_hosts
    TOO_MANY_REDIRECTS = "too_many_redirects"
    TOO_LARGE = "too_large"  # the response body is over max_http_response_bytes
    TIMEOUT = "timeout"  # the call's time ran out (connect, send, or receive)
    CONNECTION = "connection"  # name resolution, connect, TLS, a broken connection or an invalid response


class HttpCallError(ExtprocError):
    """An HTTP call that got no answer; `url` is the URL being fetched when it failed."""

    def __init__(self, kind: ErrorKind, url: str, reason: str) -> None:
        super().__init__(f"{url or '(no url)'}: {reason}")
        self.kind = kind
        self.url = url
        self.reason = reason

    def to_json(self) -> bytes:
        return orjson.dumps({"error": {"kind": self.kind.value, "message": str(self)}})


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A request as a plugin asked for it, already validated."""

    url: str
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    timeout_ms: int | None = None  # None: as long as the plugin call allows
    max_redirects: int = DEFAULT_MAX_REDIRECTS


@dataclass(frozen=True, slots=True)
class HttpAnswer:
    """The final response of a call, after any redirects; `url` is where it came from."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    url: str

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)

    def to_json(self) -> bytes:
        answer: dict[str, Any] = {
            "status": self.status,
            "headers": [{"name": name, "value": value} for name, value in self.headers],
            "url": self.url,
        }
        if self.body:
            answer["body"] = _body_json(self.body)
        return orjson.dumps(answer)


@dataclass(frozen=True, slots=True)
class _Target:
    """A checked URL, split into exactly what the connection uses, so the host that was checked is the
    host that is reached."""

    url: str
    scheme: str
    host: str  # as the resolver and TLS get it: lower case, IPv6 without brackets
    port: int
    target: str  # path and query

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class HttpPolicy:
    """What a plugin may do over HTTP: the hosts it may reach (exact names or `*.suffix`; an IP address
    only as a literal listed exactly) and the largest response body it may receive."""

    allowed_hosts: tuple[str, ...] = ()
    max_response_bytes: int = 1024 * 1024

    def check(self, url: str) -> _Target:
        """The URL split for the connection; HttpCallError when it is malformed or not allowed."""
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise HttpCallError(ErrorKind.BAD_REQUEST, url, f"invalid URL: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise HttpCallError(ErrorKind.HOST_REFUSED, url, f"scheme {scheme!r} refused: only http and https")
        if parts.username is not None or parts.password is not None:
            raise HttpCallError(ErrorKind.BAD_REQUEST, url, "credentials in the URL: send an authorization header")
        host = parts.hostname or ""
        address = _canonical_ip(host)
        if address is None and not (_DNS_NAME_RE.fullmatch(host) and not _ends_in_number(host)):
            raise HttpCallError(ErrorKind.BAD_REQUEST, url, f"invalid host {host!r}: a DNS name or an IP address")
        if not self._allows(host, address):
            raise HttpCallError(ErrorKind.HOST_REFUSED, url, f"host {host!r} is not in allowed_hosts")
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        if not _TARGET_RE.fullmatch(target):
            raise HttpCallError(ErrorKind.BAD_REQUEST, url, "path or query with spaces or non-ASCII: percent-encode")
        return _Target(url, scheme, address or host, _DEFAULT_PORTS[scheme] if port is None else port, target)

    def _allows(self, host: str, address: str | None) -> bool:
        if address is not None:
            # Compared as addresses, so "[::1]" admits "[0::1]"; a "*." pattern never admits an address.
            return any(_canonical_ip(pattern.strip("[]")) == address for pattern in self.allowed_hosts)
        return any(host_matches(pattern, host) for pattern in self.allowed_hosts)


def parse_request(raw: bytes) -> HttpRequest:
    """The plugin's request JSON (docs/plugin-abi.md); HttpCallError(bad_request) names what is wrong."""
    try:
        spec = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise HttpCallError(ErrorKind.BAD_REQUEST, "", f"request is not JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise HttpCallError(ErrorKind.BAD_REQUEST, "", "request must be a JSON object")
    url = spec.get("url")
    if not isinstance(url, str) or not url:
        raise HttpCallError(ErrorKind.BAD_REQUEST, "", "request needs a 'url' string")
    unknown = set(spec) - {"method", "url", "headers", "body", "timeout_ms", "max_redirects"}
    if unknown:
        raise HttpCallError(ErrorKind.BAD_REQUEST, url, f"unknown request fields {sorted(unknown)}")

    def bad(reason: str) -> HttpCallError:
        return HttpCallError(ErrorKind.BAD_REQUEST, url, reason)

    method = spec.get("method", "GET")
    if not isinstance(method, str) or not _TOKEN_RE.fullmatch(method) or method.upper() == "CONNECT":
        raise bad(f"method {method!r} is not an HTTP method (CONNECT is refused)")
    timeout_ms = spec.get("timeout_ms")
    if timeout_ms is not None and not (_is_int(timeout_ms) and timeout_ms > 0):
        raise bad(f"timeout_ms must be a positive integer, got {timeout_ms!r}")
    max_redirects = spec.get("max_redirects", DEFAULT_MAX_REDIRECTS)
    if not (_is_int(max_redirects) and 0 <= max_redirects <= MAX_REDIRECTS_LIMIT):
        raise bad(f"max_redirects must be 0-{MAX_REDIRECTS_LIMIT}, got {max_redirects!r}")
    body = _request_body(spec.get("body"), bad)
    return HttpRequest(url, method, _request_headers(spec.get("headers", []), bad), body, timeout_ms, max_redirects)


def _request_headers(value: object, bad: Callable[[str], HttpCallError]) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        raise bad("headers must be a list of {name, value}")
    headers: list[tuple[str, str]] = []
    size = 0
    for item in value:
        if not (isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("value"), str)):
            raise bad(f"header {repr(item)[:80]} is not {{name, value}} with two strings")
        name, text = item["name"].lower(), item["value"]
        if not _TOKEN_RE.fullmatch(name):
            raise bad(f"header name {name!r} is not an HTTP token")
        if name in RESERVED_HEADERS:
            raise bad(f"header {name!r} is set by the server, not the plugin")
        if any(c in text for c in "\r\n\0"):
            raise bad(f"header {name!r}: value with CR, LF or NUL")
        size += len(name) + len(text.encode())
        headers.append((name, text))
    if size > MAX_REQUEST_HEADER_BYTES:
        raise bad(f"headers of {size} bytes, over {MAX_REQUEST_HEADER_BYTES}")
    return tuple(headers)


def _request_body(value: object, bad: Callable[[str], HttpCallError]) -> bytes | None:
    if value is None:
        return None
    text, data = (value.get("text"), value.get("data")) if isinstance(value, dict) and len(value) == 1 else (0, 0)
    if isinstance(text, str):
        body = text.encode()
    elif isinstance(data, str):
        try:
            body = base64.b64decode(data, validate=True)
        except ValueError:
            raise bad("body.data is not base64") from None
    else:
        raise bad("body must be {text} or {data}")
    if len(body) > MAX_REQUEST_BODY_BYTES:
        raise bad(f"body of {len(body)} bytes, over {MAX_REQUEST_BODY_BYTES}")
    return body


def fetch(policy: HttpPolicy, request: HttpRequest, deadline: float) -> HttpAnswer:
    """Send the request, following redirects that pass the policy, and return the final answer.

    `deadline` (time.monotonic()) ends the call, connect and every read and write included; the
    request's own timeout_ms may end it earlier. Raises HttpCallError.
    """
    if request.timeout_ms is not None:
        deadline = min(deadline, time.monotonic() + request.timeout_ms / 1000)
    target = policy.check(request.url)
    method, headers, body = request.method, request.headers, request.body
    _call.deadline = deadline
    try:
        for hop in range(request.max_redirects + 1):
            answer = _send(method, target, headers, body, policy.max_response_bytes)
            location = answer.header("location") if answer.status in REDIRECT_STATUSES else None
            if location is None or request.max_redirects == 0:
                return answer
            if hop == request.max_redirects:
                break
            try:
                next_target = policy.check(urllib.parse.urljoin(target.url, location))
            except HttpCallError as exc:
                raise HttpCallError(exc.kind, exc.url, f"{exc.reason} (a redirect from {target.url})") from None
            if answer.status == 303 or (answer.status in (301, 302) and method == "POST"):
                # What browsers do: the redirect is fetched with GET and without the body.
                method, body = "GET", None
                headers = tuple((n, v) for n, v in headers if n != "content-type")
            if next_target.origin != target.origin:
                headers = tuple((n, v) for n, v in headers if n not in CREDENTIAL_HEADERS)
            target = next_target
    finally:
        _call.deadline = math.inf
    raise HttpCallError(
        ErrorKind.TOO_MANY_REDIRECTS, target.url, f"still a redirect after {request.max_redirects} redirects"
    )


def _send(
    method: str, target: _Target, headers: Iterable[tuple[str, str]], body: bytes | None, limit: int
) -> HttpAnswer:
    left = _call.deadline - time.monotonic()
    if left <= 0:
        raise HttpCallError(ErrorKind.TIMEOUT, target.url, "no time left in the plugin call")
    timeout = None if math.isinf(left) else left
    url = httpcore.URL(scheme=target.scheme, host=target.host, port=target.port, target=target.target)
    wire_headers = [("host", target.host_header), *headers]
    try:
        with _pool().stream(
            method,
            url,
            headers=wire_headers,
            content=body,
            extensions={"timeout": dict.fromkeys(("connect", "read", "write", "pool"), timeout)},
        ) as response:
            received = tuple((k.decode("latin-1").lower(), v.decode(errors="replace")) for k, v in response.headers)
            declared = next((v for k, v in received if k == "content-length"), None)
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise HttpCallError(ErrorKind.TOO_LARGE, target.url, f"content-length {declared}, over {limit} bytes")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_stream():
                size += len(chunk)
                if size > limit:
                    raise HttpCallError(ErrorKind.TOO_LARGE, target.url, f"response body over {limit} bytes")
                chunks.append(chunk)
    except httpcore.TimeoutException:
        raise HttpCallError(ErrorKind.TIMEOUT, target.url, "the plugin call's time ran out") from None
    except httpcore.LocalProtocolError as exc:
        raise HttpCallError(ErrorKind.BAD_REQUEST, target.url, f"request refused by the HTTP client: {exc}") from None
    except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
        raise HttpCallError(ErrorKind.CONNECTION, target.url, str(exc) or type(exc).__name__) from None
    return HttpAnswer(response.status, received, b"".join(chunks), target.url)


def _body_json(body: bytes) -> dict[str, str]:
    try:
        return {"text": body.decode()}
    except UnicodeDecodeError:
        return {"data": base64.b64encode(body).decode()}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _canonical_ip(host: str) -> str | None:
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return None


def _ends_in_number(host: str) -> bool:
    return bool(_NUMERIC_LABEL_RE.fullmatch(host.rpartition(".")[2]))


# --- the network backend: every socket operation ends by the call's deadline ----------------------


class _CallDeadline(threading.local):
    """The deadline of the HTTP call on this thread. httpcore's sync pool runs every socket operation
    on the calling thread, so the backend reads it here rather than through httpcore."""

    deadline: float = math.inf


_call = _CallDeadline()
_T = TypeVar("_T")


def _end(timeout: float | None) -> float:
    return _call.deadline if timeout is None else min(_call.deadline, time.monotonic() + timeout)


def _wait(sock: socket.socket, events: int, end: float) -> bool:
    """Whether `sock` became ready for `events` before `end`."""
    left = end - time.monotonic()
    if left <= 0:
        return False
    poller = select.poll()
    poller.register(sock, events)
    return bool(poller.poll(None if math.isinf(left) else math.ceil(left * 1000)))


class _BoundedStream(httpcore.NetworkStream):
    """A non-blocking socket (plain or TLS) whose every operation waits at most until the deadline,
    so a peer that trickles bytes cannot stretch a call past it."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._io(functools.partial(self._sock.recv, max_bytes), select.POLLIN, _end(timeout), "read")

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        end = _end(timeout)
        view = memoryview(buffer)
        while view:
            view = view[self._io(functools.partial(self._sock.send, view), select.POLLOUT, end, "write") :]

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        try:
            tls = ssl_context.wrap_socket(self._sock, server_hostname=server_hostname, do_handshake_on_connect=False)
            stream = _BoundedStream(tls)
            stream._io(tls.do_handshake, select.POLLIN, _end(timeout), "connect")
        except BaseException:
            self.close()
            raise
        return stream

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object" and isinstance(self._sock, ssl.SSLSocket):
            return self._sock  # httpcore asks it for the negotiated ALPN protocol, which SSLSocket answers
        if info == "socket":
            return self._sock
        if info == "is_readable":  # an idle pooled connection that is readable was closed by the peer
            poller = select.poll()
            poller.register(self._sock, select.POLLIN)
            return bool(poller.poll(0))
        return None

    def _io(self, operation: Callable[[], _T], events: int, end: float, what: str) -> _T:
        timeout_error, error = _ERRORS[what]
        while True:
            try:
                return operation()
            except ssl.SSLWantReadError:
                wait_for = select.POLLIN
            except ssl.SSLWantWriteError:
                wait_for = select.POLLOUT
            except BlockingIOError:
                wait_for = events
            except OSError as exc:
                raise error(f"{what}: {exc}") from exc
            if not _wait(self._sock, wait_for, end):
                raise timeout_error(f"{what}: the call's time ran out")


_ERRORS: Final[Mapping[str, tuple[type[httpcore.TimeoutException], type[httpcore.NetworkError]]]] = {
    "read": (httpcore.ReadTimeout, httpcore.ReadError),
    "write": (httpcore.WriteTimeout, httpcore.WriteError),
    "connect": (httpcore.ConnectTimeout, httpcore.ConnectError),
}


class _BoundedBackend(httpcore.NetworkBackend):
    """Connects address by address within the deadline (a plain connect would give each address the
    whole timeout again). Name resolution itself is the system resolver's and has its own timeout."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        end = _end(timeout)
        try:
            addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        failures: list[str] = []
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            code = sock.connect_ex(address)
            if code == errno.EINPROGRESS:
                if not _wait(sock, select.POLLOUT, end):
                    sock.close()
                    raise httpcore.ConnectTimeout(f"connect to {host}:{port}: the call's time ran out")
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == 0:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return _BoundedStream(sock)
            sock.close()
            failures.append(f"{address[0]}: {errno.errorcode.get(code, code)}")
        raise httpcore.ConnectError(f"cannot connect to {host}:{port} ({', '.join(failures)})")


_pool_instance: httpcore.ConnectionPool | None = None
_pool_lock = threading.Lock()


def _pool() -> httpcore.ConnectionPool:
    """One connection pool for the process: thread-safe, keeps a few idle connections per origin for
    reuse, and never limits how many calls run at once (the serving threads already do)."""
    global _pool_instance
    with _pool_lock:
        if _pool_instance is None:
            _pool_instance = httpcore.ConnectionPool(
                ssl_context=ssl.create_default_context(),  # the system's trust store, as operators manage it
                max_connections=None,
                max_keepalive_connections=64,
                keepalive_expiry=4.0,  # under the 5 s idle timeout common in servers (Node), so we close first
                network_backend=_BoundedBackend(),
            )
        return _pool_instance
