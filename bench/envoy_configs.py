"""Envoy bootstraps for the bench: the proxy under test and a fast direct_response upstream.

The proxy starts from the e2e tests' bootstrap (support/bootstrap.py) so the ext_proc
filter is configured exactly as the tests configure it; the bench then drops the access log
(writing a log line per request would be measured too) and, for the reference cases, swaps
the ext_proc filter for nothing or for a Lua filter making the same header change.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.bootstrap import EXT_PROC_FILTER_NAME, render_bootstrap

_TYPE = "type.googleapis.com/"
_HCM_NAME = "envoy.filters.network.http_connection_manager"
_HCM_TYPE = _TYPE + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"},
}

# The header change every header case makes; the scripted plugin and the Lua filter both set it.
BENCH_HEADER = ("x-bench", "1")

# Paths of the upstream: /body/<n> answers n bytes, everything else a short body.
RESPONSE_BODY_SIZES = (1024, 64 * 1024)
# /slow answers after this long (a fault filter delay): an upstream whose latency, not its CPU, bounds it.
SLOW_PATH = "/slow"
SLOW_UPSTREAM_MS = 100
_FAULT = "envoy.filters.http.fault"
_FAULT_TYPE = _TYPE + "envoy.extensions.filters.http.fault.v3.HTTPFault"
# Envoy refuses direct_response bodies above 4 KiB unless the route config raises the limit.
_MAX_DIRECT_BODY = 1024 * 1024


class ProxyFilter(enum.Enum):
    NONE = "none"
    LUA = "lua"
    EXT_PROC = "ext_proc"


def _lua_filter() -> dict[str, Any]:
    name, value = BENCH_HEADER
    code = f'function envoy_on_request(handle)\n  handle:headers():replace("{name}", "{value}")\nend\n'
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": code},
        },
    }


def _connection_manager(bootstrap: dict[str, Any]) -> dict[str, Any]:
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                if network_filter["name"] == _HCM_NAME:
                    hcm: dict[str, Any] = network_filter["typed_config"]
                    return hcm
    raise ValueError("the e2e bootstrap has no http_connection_manager: bench/envoy_configs.py needs updating")


def proxy_bootstrap(
    *,
    proxy_filter: ProxyFilter,
    listen_port: int,
    admin_port: int,
    upstream_port: int,
    extproc_port: int,
    extproc_workers: int = 1,
    per_route_disabled_prefixes: Sequence[str] = (),
    message_timeout_ms: int | None = None,
    call_log: Path | None = None,
) -> dict[str, Any]:
    """The Envoy under test. ``extproc_port`` is unused (but must be given) without the ext_proc filter.

    With ``extproc_workers`` > 1 the ext_proc cluster lists one endpoint per worker (worker i of
    ``extproc serve --workers N`` listens on the port + i) and spreads streams round robin.
    ``message_timeout_ms`` replaces the e2e bootstrap's ext_proc message timeout (for a server slowed
    down on purpose, e.g. under valgrind). ``call_log``: a file access log of how long each
    request's ext_proc call took, as Envoy saw it (see ``parse_call_log``).
    """
    # Only when given: the e2e bootstrap's default stays the single source of the timeout.
    timeout: dict[str, Any] = {} if message_timeout_ms is None else {"message_timeout_ms": message_timeout_ms}
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": extproc_port + i}}}}
        for i in range(extproc_workers)
    ]
    bootstrap = render_bootstrap(
        listen_port=listen_port,
        admin_port=admin_port,
        upstream_port=upstream_port,
        extproc_port=extproc_port,
        per_route_disabled_prefixes=per_route_disabled_prefixes,
        **timeout,
        extproc_cluster={
            "lb_policy": "ROUND_ROBIN",
            "load_assignment": {"cluster_name": "extproc", "endpoints": [{"lb_endpoints": endpoints}]},
        },
    )
    hcm = _connection_manager(bootstrap)
    hcm.pop("access_log", None)
    if call_log is not None:
        hcm["access_log"] = [_call_log(call_log)]
    if proxy_filter is ProxyFilter.NONE:
        hcm["http_filters"] = [_ROUTER]
    elif proxy_filter is ProxyFilter.LUA:
        hcm["http_filters"] = [_lua_filter(), _ROUTER]
    return bootstrap


# Envoy's ext_proc filter state: the time from sending the request headers to the server's answer.
_CALL_LATENCY = f"%FILTER_STATE({EXT_PROC_FILTER_NAME}:FIELD:request_header_latency_us)%"
_CALL_LOG_LINE = f"%START_TIME(%s.%6f)% {_CALL_LATENCY} %REQ(X-REQUEST-ID)%\n"


def _call_log(path: Path) -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(path),
            "log_format": {"text_format_source": {"inline_string": _CALL_LOG_LINE}},
        },
    }


@dataclass(frozen=True)
class CallRecord:
    """One request in the call log: when Envoy began it (Unix s), how long its ext_proc call took
    (us; None when the filter did not call the server: Envoy logs "-"), and its x-request-id."""

    started_s: float
    latency_us: int | None
    request_id: str


def parse_call_log(text: str, start: float, end: float) -> list[CallRecord]:
    """The requests that started in [start, end) (Unix seconds), from the complete lines of ``text``
    (Envoy may be writing the last one as it is read)."""
    records = []
    for line in text[: text.rfind("\n") + 1].splitlines():
        started, latency, request_id = line.split(" ")
        if start <= float(started) < end:
            records.append(CallRecord(float(started), int(latency) if latency.isdigit() else None, request_id))
    return records


def upstream_bootstrap(*, listen_port: int, admin_port: int) -> dict[str, Any]:
    """An Envoy answering every request itself (direct_response): an upstream that costs little CPU;
    /slow answers after SLOW_UPSTREAM_MS.

    The buffer filter makes it read the whole request body before answering; answering early
    would make Envoy close the connection, and the proxy would reconnect per request.
    """
    routes: list[dict[str, Any]] = [
        {
            "match": {"prefix": f"/body/{size}"},
            "direct_response": {"status": 200, "body": {"inline_string": "a" * size}},
        }
        for size in RESPONSE_BODY_SIZES
    ]
    ok = {"status": 200, "body": {"inline_string": "ok\n"}}
    slow = {"fixed_delay": f"{SLOW_UPSTREAM_MS / 1000}s", "percentage": {"numerator": 100}}
    routes.append(
        {
            "match": {"prefix": SLOW_PATH},
            "direct_response": ok,
            "typed_per_filter_config": {_FAULT: {"@type": _FAULT_TYPE, "delay": slow}},
        }
    )
    routes.append({"match": {"prefix": "/"}, "direct_response": ok})
    hcm = {
        "@type": _HCM_TYPE,
        "stat_prefix": "upstream",
        "codec_type": "AUTO",
        "route_config": {
            "name": "upstream",
            "max_direct_response_body_size_bytes": _MAX_DIRECT_BODY,
            "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}],
        },
        "http_filters": [
            # No fault of its own: only the /slow route's override delays anything.
            {"name": _FAULT, "typed_config": {"@type": _FAULT_TYPE}},
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {
                    "@type": _TYPE + "envoy.extensions.filters.http.buffer.v3.Buffer",
                    "max_request_bytes": _MAX_DIRECT_BODY,
                },
            },
            _ROUTER,
        ],
    }
    address = {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "upstream",
                    "address": address,
                    "per_connection_buffer_limit_bytes": _MAX_DIRECT_BODY,
                    "filter_chains": [{"filters": [{"name": _HCM_NAME, "typed_config": hcm}]}],
                }
            ]
        },
    }
