"""The admin HTTP endpoint: metrics, liveness, readiness, the loaded plugins, and config reload.

It runs on its own port (loopback unless the config allows otherwise) in a few threads of its own, so a
scrape never waits behind ext_proc streams. What it reports comes from a backend: the server itself,
or, with several workers, the supervisor that asks each worker.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from extproc import metrics
from extproc.config import Config, ListenAddress
from extproc.plugins.loader import POINT_OF_EXPORT
from extproc.plugins.registry import PluginSet
from extproc.reload import ReloadResult

log = logging.getLogger("extproc.admin")


ReloadHook = Callable[[], ReloadResult]


class AdminBackend(Protocol):
    def metrics_text(self) -> bytes: ...

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): ready means plugins are loaded and the gRPC listener takes new streams."""
        ...

    def plugin_report(self) -> list[dict[str, Any]]: ...


def describe_plugins(config: Config, loaded: PluginSet) -> list[dict[str, Any]]:
    """Every configured plugin, in config order: what it is, what it runs, and its state."""
    by_name = {plugin.name: plugin for plugin in loaded.plugins}
    breakers = metrics.breaker_states()
    described: list[dict[str, Any]] = []
    for spec in config.plugins:
        plugin = by_name.get(spec.name)
        entry: dict[str, Any] = {"name": spec.name, "path": str(spec.path)}
        if plugin is None:
            entry["state"] = "disabled"
        else:
            entry |= {
                "sha256": plugin.sha256,
                "exports": sorted(export.value for export in plugin.module_exports),
                "execution_points": sorted(POINT_OF_EXPORT[export].value for export in plugin.exports),
                "state": breakers.get(spec.name, "closed"),
            }
        described.append(entry)
    return described


def registry_text() -> bytes:
    return generate_latest(metrics.REGISTRY)


class AdminServer:
    """`/metrics`, `/healthz`, `/readyz`, `/plugins` (GET) and `/reload` (POST) on its own listener."""

    def __init__(self, address: ListenAddress, backend: AdminBackend, reload: ReloadHook | None = None) -> None:
        self.backend = backend
        self.reload: ReloadHook | None = reload
        handler = type("Handler", (_Handler,), {"admin": self})
        family = _Server6 if ":" in address.host else ThreadingHTTPServer
        self._http = family((address.host, address.port), handler)
        self.port: int = self._http.server_address[1]
        self.address = ListenAddress(address.host, self.port)
        self._thread = threading.Thread(target=self._http.serve_forever, name="extproc-admin", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("admin endpoint on http://%s", self.address)

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    admin: AdminServer
    server_version = "extproc-admin"

    def do_GET(self) -> None:
        backend = self.admin.backend
        path = self.path.partition("?")[0]
        if path == "/metrics":
            self._send(HTTPStatus.OK, backend.metrics_text(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            # Answering at all is the proof of life; readiness is the separate question.
            self._text(HTTPStatus.OK, "alive")
        elif path == "/readyz":
            ready, why = backend.readiness()
            self._text(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, why)
        elif path == "/plugins":
            self._json(HTTPStatus.OK, {"plugins": backend.plugin_report()})
        elif path == "/reload":
            self._text(HTTPStatus.METHOD_NOT_ALLOWED, "use POST /reload", allow="POST")
        else:
            self._text(HTTPStatus.NOT_FOUND, "not found; try /metrics, /healthz, /readyz, /plugins, POST /reload")

    def do_POST(self) -> None:
        if self.path.partition("?")[0] != "/reload":
            self._text(HTTPStatus.NOT_FOUND, "not found; only /reload takes POST")
            return
        reload = self.admin.reload
        if reload is None:
            self._text(HTTPStatus.NOT_IMPLEMENTED, "reload is not available in this server")
            return
        result = reload()
        # 422: the new config or a plugin in it is bad; the previous one stays in force.
        status = HTTPStatus.OK if result.ok else HTTPStatus.UNPROCESSABLE_ENTITY
        self._json(status, {"ok": result.ok, "message": result.message, "config_hash": result.config_hash})

    def _text(self, status: HTTPStatus, text: str, **headers: str) -> None:
        self._send(status, (text + "\n").encode(), "text/plain; charset=utf-8", **headers)

    def _json(self, status: HTTPStatus, value: object) -> None:
        self._send(status, json.dumps(value, indent=2).encode() + b"\n", "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-").title(), value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Scrapes and probes every few seconds would drown the log; keep them at debug.
        log.debug("%s " + format, self.address_string(), *args)
