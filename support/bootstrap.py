"""Renders the Envoy bootstrap used by the end-to-end tests.

The bootstrap is built as a plain dict (dumped to YAML by the harness) so tests can
tweak the few knobs that matter for ext_proc without keeping YAML templates in sync.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from extproc.deploy.envoy_config import HCM_STAT_PREFIX, access_log, connection_manager, runtime_layer
from extproc.wire import METADATA_NAMESPACE, ROUTE_METADATA_ATTRIBUTE

EXT_PROC_FILTER_NAME = "envoy.filters.http.ext_proc"
# Stats of the ext_proc filter live under http.<HCM stat_prefix>.ext_proc.<filter stat_prefix>.
EXT_PROC_STAT_PREFIX = "e2e"
EXT_PROC_STATS = f"http.{HCM_STAT_PREFIX}.ext_proc.{EXT_PROC_STAT_PREFIX}"

# 8 MiB: buffered body modes hold the whole body in Envoy's filter buffer, whose
# limit is the connection buffer limit (1 MiB by default); tests send 1 MiB bodies.
BUFFER_LIMIT_BYTES = 8 * 1024 * 1024

HEADER_MODES = frozenset({"DEFAULT", "SEND", "SKIP"})
BODY_MODES = frozenset({"NONE", "STREAMED", "BUFFERED", "BUFFERED_PARTIAL", "FULL_DUPLEX_STREAMED"})
TRAILER_MODES = HEADER_MODES

_TYPE = "type.googleapis.com/"
_PER_ROUTE = "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
_DOWNSTREAM_CONNECTIONS_CONFIG = (
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"
)


def _socket_address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _duration(ms: int) -> str:
    # The proto JSON mapping of google.protobuf.Duration is seconds with an "s" suffix.
    return f"{ms // 1000}.{ms % 1000:03d}s"


def _static_cluster(
    name: str, port: int, protocol_options: dict[str, Any], buffer_limit: int = BUFFER_LIMIT_BYTES
) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "per_connection_buffer_limit_bytes": buffer_limit,
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": protocol_options,
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(port)}}]}],
        },
    }


def _check_mode(kind: str, value: str, allowed: frozenset[str]) -> str:
    # Fail in Python with the valid choices rather than with Envoy's terser proto error.
    if value not in allowed:
        raise ValueError(f"{kind} must be one of {sorted(allowed)}, got {value!r}")
    return value


def _trailer_mode(direction: str, body_mode: str, trailer_mode: str | None) -> str:
    # Envoy's config validation rejects FULL_DUPLEX_STREAMED unless that direction's
    # trailer mode is SEND, so derive it instead of making every caller repeat it.
    duplex = body_mode == "FULL_DUPLEX_STREAMED"
    if trailer_mode is None:
        return "SEND" if duplex else "SKIP"
    _check_mode(f"{direction}_trailer_mode", trailer_mode, TRAILER_MODES)
    if duplex and trailer_mode != "SEND":
        raise ValueError(f"{direction}_body_mode FULL_DUPLEX_STREAMED requires {direction}_trailer_mode SEND")
    return trailer_mode


def render_ext_proc_filter(
    *,
    request_header_mode: str = "SEND",
    response_header_mode: str = "SEND",
    request_body_mode: str = "NONE",
    response_body_mode: str = "NONE",
    request_trailer_mode: str | None = None,
    response_trailer_mode: str | None = None,
    allow_mode_override: bool = True,
    failure_mode_allow: bool = False,
    message_timeout_ms: int = 5000,
    allow_all_routing: bool = True,
) -> dict[str, Any]:
    """The ``envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor`` typed config.

    A trailer mode of None means SEND for FULL_DUPLEX_STREAMED bodies and SKIP otherwise.
    ``allow_all_routing`` False leaves out ``mutation_rules``, as Envoy Gateway's generated filter does.
    """
    config = {
        "@type": _TYPE + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": "extproc"}},
        "stat_prefix": EXT_PROC_STAT_PREFIX,
        "failure_mode_allow": failure_mode_allow,
        "allow_mode_override": allow_mode_override,
        "message_timeout": _duration(message_timeout_ms),
        "processing_mode": {
            "request_header_mode": _check_mode("request_header_mode", request_header_mode, HEADER_MODES),
            "response_header_mode": _check_mode("response_header_mode", response_header_mode, HEADER_MODES),
            "request_body_mode": _check_mode("request_body_mode", request_body_mode, BODY_MODES),
            "response_body_mode": _check_mode("response_body_mode", response_body_mode, BODY_MODES),
            "request_trailer_mode": _trailer_mode("request", request_body_mode, request_trailer_mode),
            "response_trailer_mode": _trailer_mode("response", response_body_mode, response_trailer_mode),
        },
        "request_attributes": ["source.address", "request.id"],
        # Unset receiving_namespaces means Envoy drops all dynamic metadata the server returns.
        "metadata_options": {"receiving_namespaces": {"untyped": [METADATA_NAMESPACE]}},
    }
    if allow_all_routing:
        # Without this Envoy silently ignores mutations of :authority, host, :scheme and :method.
        config["mutation_rules"] = {"allow_all_routing": True}
    return config


def render_bootstrap(
    *,
    listen_port: int,
    admin_port: int,
    upstream_port: int,
    extproc_port: int,
    request_header_mode: str = "SEND",
    response_header_mode: str = "SEND",
    request_body_mode: str = "NONE",
    response_body_mode: str = "NONE",
    request_trailer_mode: str | None = None,
    response_trailer_mode: str | None = None,
    allow_mode_override: bool = True,
    failure_mode_allow: bool = False,
    message_timeout_ms: int = 5000,
    per_route_disabled_prefixes: Sequence[str] = (),
    extproc_cluster: Mapping[str, Any] | None = None,
    allow_all_routing: bool = True,
    otlp_collector_port: int | None = None,
    upstream_http2: bool = False,
    route_metadata: Mapping[str, Any] | None = None,
    buffer_limit_bytes: int = BUFFER_LIMIT_BYTES,
    send_body_without_waiting: bool = False,
    plugin_outcomes: bool = False,
) -> dict[str, Any]:
    """An Envoy v3 bootstrap: listener -> ext_proc -> router -> the echo upstream.

    ``upstream_http2`` speaks HTTP/2 to the upstream (a gRPC server). ``route_metadata`` becomes the catch-all
    route's ``filter_metadata``, which the filter sends as the ``xds.route_metadata`` attribute.
    ``buffer_limit_bytes`` bounds Envoy's buffers of the listener and the upstream, and so the size of
    a streamed body's chunks.

    Trailer modes default as in :func:`render_ext_proc_filter`. ``extproc_cluster`` keys replace or add
    to those of the ext_proc cluster (health checks, TLS, several endpoints). ``allow_all_routing`` False
    leaves the filter's ``mutation_rules`` out. With ``otlp_collector_port``, Envoy traces every request
    with its OpenTelemetry tracer and exports the spans over OTLP/gRPC to that loopback port. With
    ``plugin_outcomes``, the access log shows each plugin call's outcome (server.outcome_metadata).
    """
    if isinstance(per_route_disabled_prefixes, str):
        # A bare string would otherwise be iterated character by character.
        raise TypeError("per_route_disabled_prefixes must be a sequence of prefixes, not a string")

    # With bypassed prefixes the filter is off by default and switched on for the catch-all route,
    # so requests on a bypassed route never even instantiate it. They come first: Envoy picks the
    # first matching route and "/" matches everything.
    routes: list[dict[str, Any]] = [
        *({"match": {"prefix": prefix}, "route": {"cluster": "upstream"}} for prefix in per_route_disabled_prefixes),
        {"match": {"prefix": "/"}, "route": {"cluster": "upstream"}},
    ]
    if route_metadata is not None:
        routes[-1]["metadata"] = {"filter_metadata": dict(route_metadata)}
    if per_route_disabled_prefixes:
        # Any per-route config of the filter switches a default-disabled filter on; empty overrides change nothing else.
        routes[-1]["typed_per_filter_config"] = {EXT_PROC_FILTER_NAME: {"@type": _TYPE + _PER_ROUTE, "overrides": {}}}

    ext_proc: dict[str, Any] = {
        "name": EXT_PROC_FILTER_NAME,
        "typed_config": render_ext_proc_filter(
            request_header_mode=request_header_mode,
            response_header_mode=response_header_mode,
            request_body_mode=request_body_mode,
            response_body_mode=response_body_mode,
            request_trailer_mode=request_trailer_mode,
            response_trailer_mode=response_trailer_mode,
            allow_mode_override=allow_mode_override,
            failure_mode_allow=failure_mode_allow,
            message_timeout_ms=message_timeout_ms,
            allow_all_routing=allow_all_routing,
        ),
    }
    if route_metadata is not None:
        ext_proc["typed_config"]["request_attributes"].append(ROUTE_METADATA_ATTRIBUTE)
    if send_body_without_waiting:
        ext_proc["typed_config"]["send_body_without_waiting_for_header_response"] = True
    if per_route_disabled_prefixes:
        ext_proc["disabled"] = True
    manager = connection_manager("e2e", routes, [ext_proc], access_log(plugin_outcomes=plugin_outcomes))
    clusters = [
        _static_cluster(
            "upstream",
            upstream_port,
            {"http2_protocol_options": {}} if upstream_http2 else {"http_protocol_options": {}},
            buffer_limit_bytes,
        ),
        # gRPC needs HTTP/2 to the ext_proc server.
        {
            **_static_cluster("extproc", extproc_port, {"http2_protocol_options": {}}),
            **(extproc_cluster or {}),
        },
    ]
    if otlp_collector_port is not None:
        manager["tracing"] = {
            "random_sampling": {"value": 100},
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": _TYPE + "envoy.config.trace.v3.OpenTelemetryConfig",
                    "grpc_service": {"envoy_grpc": {"cluster_name": "otel"}, "timeout": "1s"},
                    "service_name": "envoy",
                },
            },
        }
        clusters.append(_static_cluster("otel", otlp_collector_port, {"http2_protocol_options": {}}))

    bootstrap: dict[str, Any] = {
        "admin": {"address": _socket_address(admin_port)},
        # Envoy warns on every start when no downstream connection limit is set; a
        # generous limit keeps that line out of the logs printed for failed tests.
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _TYPE + _DOWNSTREAM_CONNECTIONS_CONFIG,
                        "max_active_downstream_connections": 10000,
                    },
                }
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "main",
                    "address": _socket_address(listen_port),
                    "per_connection_buffer_limit_bytes": buffer_limit_bytes,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }
    # The runtime `extproc envoy-config` gives every Envoy, so tests and the bench run what users run.
    layers = [runtime_layer()]
    if otlp_collector_port is not None:
        # Envoy sends its spans every 5 s or per 5 spans; a test should not wait that long.
        flush = {"tracing.opentelemetry.flush_interval_ms": 50, "tracing.opentelemetry.min_flush_spans": 1}
        layers.append({"name": "tracing", "static_layer": flush})
    bootstrap["layered_runtime"] = {"layers": layers}
    return bootstrap
