"""The admin HTTP endpoint: metrics, liveness, readiness, the loaded plugins, and config reload.

It runs on its own port (loopback unless the config allows otherwise) in a few threads of its own, so a
scrape never waits behind ext_proc streams. What it reports comes from a backend: the server itself,
or, with several workers, the supervisor that asks each worker.

A loopback listener is still reachable from every web page the machine's browsers open: a page can post
a form to it (CSRF) or point a DNS name of its own at 127.0.0.1 and read the answers (DNS rebinding). So
every request must name this endpoint in `Host`, must not come from another `Origin`, and, when
`server.admin_token_file` is set, POST /reload needs that token.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from extproc import metrics
from extproc.config import Config, ListenAddress
from extproc.plugins.registry import PluginSet
from extproc.reload import ReloadResult
from extproc.tls import is_loopback

log = logging.getLogger("extproc.admin")

_WILDCARDS: Final = ("0.0.0.0", "::")


ReloadHook = Callable[[], ReloadResult]


class AdminBackend(Protocol):
    def metrics_text(self) -> bytes: ...

    def readiness(self) -> tuple[bool, str]:
        """(ready, why): ready means plugins are loaded and the gRPC listener takes new streams."""
        ...

    def plugin_report(self) -> list[dict[str, Any]]: ...


def describe_plugins(config: Config, loaded: PluginSet) -> list[dict[str, Any]]:
    """Every configured plugin, in config order: what it is, what it runs, and its state (that of its
    breaker in `loaded`, the set in force), with its candidate version if it has one."""
    by_name = {plugin.name: plugin for plugin in loaded.plugins}
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
                "execution_points": sorted(phase.config_name for phase in plugin.exports),
                "phases_from": plugin.phase_source.value,
                "state": plugin.breaker.state.value,
            }
            candidate = None if loaded.rollout is None else loaded.rollout.describe(spec.name)
            if candidate is not None:
                entry["candidate"] = candidate
        described.append(entry)
    return described


def registry_text() -> bytes:
    return generate_latest(metrics.REGISTRY)


def auth_headers(token: str | None) -> dict[str, str]:
    """Headers that carry the admin token, for a client of an admin endpoint (the workers' supervisor)."""
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def accepts_host(header: str, address: ListenAddress) -> bool:
    """Whether a request's `Host` names the admin endpoint listening on `address` (host and bound port).

    Besides the configured host, a loopback listener answers to `localhost` and loopback addresses, and a
    wildcard listener (0.0.0.0, ::) to any IP address: an address in `Host` cannot be re-pointed by DNS,
    which is what a rebinding page needs. Any other name is refused.
    """
    if header.startswith("["):
        host, bracket, rest = header[1:].partition("]")
        if not bracket or rest[:1] not in ("", ":"):
            return False
        port = rest[1:]
    else:
        host, _, port = header.partition(":")
    port = port or "80"  # no port: HTTP's default
    host = host.lower()
    if not (port.isascii() and port.isdigit()) or int(port) != address.port:
        return False
    listen = address.host.lower()
    if host == listen:
        return True
    wildcard = listen in _WILDCARDS
    if (wildcard or is_loopback(listen)) and is_loopback(host):
        return True
    return wildcard and _is_ip(host)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class AdminServer:
    """`/metrics`, `/healthz`, `/readyz`, `/plugins` (GET) and `/reload` (POST) on its own listener."""

    def __init__(
        self,
        address: ListenAddress,
        backend: AdminBackend,
        reload: ReloadHook | None = None,
        *,
        token: str | None = None,
    ) -> None:
        self.backend = backend
        self.reload: ReloadHook | None = reload
        self.token = None if token is None else token.encode()
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
        if not self._admitted():
            return
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
        if not self._admitted():
            return
        if self.path.partition("?")[0] != "/reload":
            self._text(HTTPStatus.NOT_FOUND, "not found; only /reload takes POST")
            return
        if not self._authorized():
            return
        reload = self.admin.reload
        if reload is None:
            self._text(HTTPStatus.NOT_IMPLEMENTED, "reload is not available in this server")
            return
        result = reload()
        # 422: the new config or a plugin in it is bad; the previous one stays in force.
        status = HTTPStatus.OK if result.ok else HTTPStatus.UNPROCESSABLE_ENTITY
        self._json(status, {"ok": result.ok, "message": result.message, "config_hash": result.config_hash})

    def _admitted(self) -> bool:
        """Refuse what a web page can make a browser send: a `Host` naming another site, or an `Origin`."""
        address = self.admin.address
        hosts = self.headers.get_all("Host") or []
        if len(hosts) != 1 or not accepts_host(hosts[0], address):
            shown = "no Host header" if not hosts else f"Host {', '.join(map(repr, hosts))}"
            return self._refuse(HTTPStatus.FORBIDDEN, f"{shown} does not name this admin endpoint ({address})")
        origins = self.headers.get_all("Origin") or []
        # Browsers send Origin with cross-site POSTs and fetches; one that is not this endpoint's own marks a
        # request another site's page made.
        if origins and (len(origins) > 1 or origins[0].lower() != f"http://{hosts[0].lower()}"):
            return self._refuse(HTTPStatus.FORBIDDEN, f"requests from Origin {origins[0]!r} are refused")
        return True

    def _authorized(self) -> bool:
        token = self.admin.token
        if token is None:
            return True
        scheme, _, given = (self.headers.get("Authorization") or "").partition(" ")
        # compare_digest: the time taken must not tell how much of a guess was right.
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token):
            return True
        return self._refuse(
            HTTPStatus.UNAUTHORIZED,
            "this endpoint needs the admin token (server.admin_token_file): Authorization: Bearer TOKEN",
            www_authenticate='Bearer realm="extproc-admin"',
        )

    def _refuse(self, status: HTTPStatus, why: str, **headers: str) -> bool:
        log.warning("admin endpoint refused %s %s from %s: %s", self.command, self.path, self.address_string(), why)
        self._text(status, why, **headers)
        return False

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
