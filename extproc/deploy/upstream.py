"""The demo upstream: answers every request with JSON describing what reached it.

Seeing the request as the upstream got it is what makes request-side plugin effects visible from curl.
Runs in the demo's process (:func:`serve_upstream`) or alone, as the compose service:
``python -m extproc.deploy.upstream --listen 0.0.0.0:8080``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from extproc.config import ConfigError, parse_listen_address

# Sent on every answer so that a plugin rewriting it (the cache-control example) is plain to see.
UPSTREAM_CACHE_CONTROL = "no-store"
# Paths under this prefix get the same bytes every time, like a file would, and no ETag: the cache-control
# example computes one from the body, which only answers a later If-None-Match if the body is stable.
STATIC_PREFIX = "/static/"
STATIC_ASSET = b'console.log("a static asset of the extproc demo upstream");\n'


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so Envoy can reuse its upstream connections
    server_version = "extproc-demo-upstream/1"

    def do_GET(self) -> None:
        self._answer()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass  # Envoy's access log already has one line per request

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if self.path.startswith(STATIC_PREFIX):
            self._send("text/javascript", STATIC_ASSET)
            return
        described = {
            "upstream": "extproc demo upstream",
            "method": self.command,
            "path": self.path,
            "headers": {name.lower(): value for name, value in self.headers.items()},
            "body": _readable(body, self.headers.get("Content-Type") or ""),
        }
        self._send("application/json", json.dumps(described, indent=2).encode() + b"\n")

    def _send(self, content_type: str, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", UPSTREAM_CACHE_CONTROL)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def _readable(body: bytes, content_type: str) -> object:
    """A JSON body as its document, so that a plugin rewriting JSON (json-transform) can reach its fields in
    the echo on the way back; anything else as text."""
    text = body.decode("utf-8", errors="replace")
    if content_type.split(";")[0].strip().lower() == "application/json":
        try:
            document: object = json.loads(text)
        except ValueError:
            return text
        return document
    return text


def make_server(host: str, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    return server


@contextlib.contextmanager
def serve_upstream(host: str, port: int) -> Iterator[ThreadingHTTPServer]:
    """The upstream, serving on a thread until the block ends."""
    server = make_server(host, port)
    thread = threading.Thread(target=server.serve_forever, name="demo-upstream", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m extproc.deploy.upstream", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        address = parse_listen_address(args.listen, source=Path("command line"), key="--listen")
    except ConfigError as exc:
        parser.error(str(exc))
    server = make_server(address.host, address.port)
    print(f"demo upstream listening on {address}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
