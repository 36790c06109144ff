"""Echo upstream for the end-to-end tests.

Run as ``python tests/e2e/upstream.py --port P``.  Every request is answered with
a JSON description of what actually reached the upstream, so tests can assert on
the effect of plugins after Envoy applied the ext_proc mutations.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COUNT_PATH = "/__count"
RELEASE_PATH = "/__release"
# An event stream that sends its first event, then waits for RELEASE_PATH?id=<its id> before the rest.
HELD_EVENTS_PATH = "/events-held"
# An event stream of [any prefix]/events-bulk/<n> bytes, written in pieces as fast as the client takes them.
BULK_EVENTS_PREFIX = "/events-bulk/"
HELD_EVENTS = (b"data: first sk-abc123\n\n", b"data: second ghp_zz9\n\n")
_RELEASE_WAIT_S = 30.0
_BULK_EVENT = b"data: " + b"x" * 1000 + b" sk-key\n\n"


class _Counter:
    """Thread-safe request counter shared by all handler threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def increment(self) -> None:
        with self._lock:
            self._value += 1

    @property
    def value(self) -> int:
        with self._lock:
            return self._value


COUNTER = _Counter()


class _Releases:
    """One event per held stream id: the stream goes on once its id is released."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}

    def get(self, key: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(key, threading.Event())


RELEASES = _Releases()


class EchoHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 so Envoy's upstream connection pool can reuse connections; this
    # requires every response to carry an accurate Content-Length.
    protocol_version = "HTTP/1.1"
    server_version = "e2e-upstream/1"

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_OPTIONS(self) -> None:
        self._handle()

    def log_message(self, format: str, *args: Any) -> None:
        # One line per request on stderr ends up in the fixture's log file, which
        # is printed when a test fails.
        sys.stderr.write(f"upstream: {self.address_string()} {format % args}\n")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size_line = self.rfile.readline()
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                # Consume optional trailers up to the terminating empty line.
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline()  # CRLF after each chunk

    def _handle(self) -> None:
        body = self._read_body()
        parsed = urllib.parse.urlsplit(self.path)
        if parsed.path == COUNT_PATH:
            self._send(200, "application/json", json.dumps({"count": COUNTER.value}).encode())
            return
        COUNTER.increment()

        query = urllib.parse.parse_qs(parsed.query)
        if parsed.path == RELEASE_PATH:
            RELEASES.get(query.get("id", [""])[0]).set()
            self._send(200, "text/plain", b"released\n")
            return
        if parsed.path == HELD_EVENTS_PATH:
            self._held_events(query.get("id", [""])[0])
            return
        if BULK_EVENTS_PREFIX in parsed.path:  # under any prefix, so plugins can match a path of their own
            self._bulk_events(int(parsed.path.rsplit("/", 1)[1]))
            return
        if parsed.path.startswith("/bytes/"):
            try:
                n = int(parsed.path.removeprefix("/bytes/"))
            except ValueError:
                self._send(400, "text/plain", b"bad length\n")
                return
            # A deterministic, non-UTF-8-safe pattern so byte-exactness is checkable.
            payload = bytes(i % 256 for i in range(n))
            self._send(200, "application/octet-stream", payload)
            return
        if parsed.path == "/text":
            text = urllib.parse.parse_qs(parsed.query).get("body", [""])[0]
            self._send(200, "text/plain; charset=utf-8", text.encode())
            return

        extra: list[tuple[str, str]] = []
        if parsed.path == "/set-cookie":
            extra = [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
        self._send(200, "application/json", json.dumps(self._describe(body)).encode(), extra)

    def _start_chunked(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _held_events(self, key: str) -> None:
        first, second = HELD_EVENTS
        self._start_chunked("text/event-stream")
        self._write_chunk(first)
        # The rest of the response waits until the test has seen the first event arrive.
        if not RELEASES.get(key).wait(_RELEASE_WAIT_S):
            sys.stderr.write(f"upstream: {HELD_EVENTS_PATH} {key!r} was never released\n")
        self._write_chunk(second)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _bulk_events(self, size: int) -> None:
        self._start_chunked("text/event-stream")
        piece = _BULK_EVENT * (64 * 1024 // len(_BULK_EVENT))
        sent = 0
        while sent < size:
            data = piece[: size - sent]
            self._write_chunk(data)
            sent += len(data)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _describe(self, body: bytes) -> dict[str, Any]:
        description: dict[str, Any] = {
            "method": self.command,
            "path": self.path,
            # items() keeps order and repeated names, unlike a dict of headers.
            "headers": [[name.lower(), value] for name, value in self.headers.items()],
            "body": None,
            "body_length": len(body),
        }
        if body:
            try:
                description["body"] = body.decode("utf-8")
            except UnicodeDecodeError:
                description["body_base64"] = base64.b64encode(body).decode("ascii")
        return description

    def _send(
        self,
        status: int,
        content_type: str,
        payload: bytes,
        extra_headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in extra_headers or []:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)

    # The default listen backlog of 5 drops connections when load tests open many at once.
    ThreadingHTTPServer.request_queue_size = 256
    server = ThreadingHTTPServer((args.host, args.port), EchoHandler)
    server.daemon_threads = True
    # Printed only after bind() succeeded, so a reader of stdout knows the port is live.
    print(f"READY {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
