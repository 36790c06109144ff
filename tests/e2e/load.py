"""Bounded load on loopback: N requests at concurrency C over keep-alive connections."""

from __future__ import annotations

import http.client
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .harness import Response


@dataclass(frozen=True)
class Outcome:
    """A response, or the transport error that replaced it."""

    response: Response | None
    error: str | None = None


RequestFor = Callable[[int], tuple[str, Sequence[tuple[str, str]]]]


def run_load(base_url: str, total: int, concurrency: int, request_for: RequestFor) -> list[Outcome]:
    """Send `total` GETs; `request_for(i)` gives the path and headers of request i."""
    parts = urllib.parse.urlsplit(base_url)
    local = threading.local()

    def connection() -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
            local.conn = conn
        return conn

    def one(index: int) -> Outcome:
        path, headers = request_for(index)
        conn = connection()
        try:
            conn.putrequest("GET", path, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders()
            raw = conn.getresponse()
            body = raw.read()
            if raw.will_close:
                conn.close()
                local.conn = None
            return Outcome(Response(raw.status, [(k.lower(), v) for k, v in raw.getheaders()], body))
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            local.conn = None
            return Outcome(None, f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, range(total)))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
