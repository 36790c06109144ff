"""Envoy configuration for a plugin set: the ext_proc filter, the routes and the cluster of this server.

The generated config asks Envoy for no more than the plugins can use:

* the filter's static processing mode is the union of what the enabled plugins export, so it is right even
  when mode overrides are off; with ``allow_mode_override`` the server narrows it per request;
* routes that no plugin can match carry ``ExtProcPerRoute {disabled: true}``, so that traffic never opens a
  gRPC stream. A route may only be disabled when *no* plugin could match any request on it (see
  :func:`plan_routes`).

Everything is built as plain dicts in the proto3 JSON shape, which dumps to YAML or JSON unchanged.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from extproc.config import Config, ConfigError, ListenAddress, PluginConfig, parse_listen_address
from extproc.phases import Phase
from extproc.plugins.loader import LoadedPlugin
from extproc.plugins.registry import PluginSet, Selection
from extproc.plugins.runner import PluginThreads
from extproc.rollout import OUTCOMES_KEY
from extproc.wire import METADATA_NAMESPACE, ROUTE_METADATA_ATTRIBUTE

EXT_PROC_FILTER: Final = "envoy.filters.http.ext_proc"
EXTPROC_CLUSTER: Final = "extproc"
UPSTREAM_CLUSTER: Final = "upstream"
HCM_STAT_PREFIX: Final = "ingress_http"
EXT_PROC_STAT_PREFIX: Final = "extproc"
# Envoy's ext_proc counters (streams_started, ...) live under this prefix.
EXT_PROC_STATS: Final = f"http.{HCM_STAT_PREFIX}.ext_proc.{EXT_PROC_STAT_PREFIX}"
FORMATS: Final = ("yaml", "json")

_TYPE: Final = "type.googleapis.com/"
_PER_ROUTE_TYPE: Final = _TYPE + "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
_EXT_PROC_TYPE: Final = _TYPE + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
# What Envoy waits for each reply when the filter sets no message_timeout.
ENVOY_MESSAGE_TIMEOUT_MS: Final = 200
_DURATION_RE: Final = re.compile(r"[0-9]+(?:\.[0-9]{1,9})?s")
# Time for one gRPC round trip and scheduling, on top of what the plugins may take.
_MESSAGE_OVERHEAD_MS: Final = 250
# Each attempt of a call may wait up to timeout_ms for a pooled instance, then run up to timeout_ms.
_WAITS_PER_ATTEMPT: Final = 2
# The exports one Envoy message can run, as extproc/stream.py answers it: generate_response follows the
# request headers, or the request body when its plugin waits for the body.
_MESSAGE_EXPORTS: Final = {
    "request headers": frozenset({Phase.REQUEST_HEADERS, Phase.GENERATE_RESPONSE}),
    "request body": frozenset({Phase.REQUEST_BODY, Phase.REQUEST_BODY_CHUNK, Phase.GENERATE_RESPONSE}),
    "request trailers": frozenset({Phase.REQUEST_TRAILERS}),
    "response headers": frozenset({Phase.RESPONSE_HEADERS}),
    "response body": frozenset({Phase.RESPONSE_BODY, Phase.RESPONSE_BODY_CHUNK}),
    "response trailers": frozenset({Phase.RESPONSE_TRAILERS}),
}
_ACCESS_LOG_REQUEST: Final = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %BYTES_RECEIVED% %BYTES_SENT% "
    '%DURATION% "%REQ(X-REQUEST-ID)%" "%UPSTREAM_HOST%" route=%ROUTE_NAME% '
)
_ACCESS_LOG_METADATA: Final = f"extproc_md=%DYNAMIC_METADATA({METADATA_NAMESPACE})%\n"
# With server.outcome_metadata: each plugin call's outcome and time (rollout.py), e.g.
# plugins="auth:request_headers=applied/212us hdr:request_headers=no_change/48us".
_ACCESS_LOG_OUTCOMES: Final = f'plugins="%DYNAMIC_METADATA({METADATA_NAMESPACE}:{OUTCOMES_KEY})%" '


def access_log(*, plugin_outcomes: bool) -> list[dict[str, Any]]:
    """A stdout access log: one line per request; with `plugin_outcomes`, the outcomes the server sends
    (server.outcome_metadata)."""
    outcomes = _ACCESS_LOG_OUTCOMES if plugin_outcomes else ""
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": _TYPE + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": {
                    "text_format_source": {"inline_string": _ACCESS_LOG_REQUEST + outcomes + _ACCESS_LOG_METADATA}
                },
            },
        }
    ]


# Python regex syntax that RE2 (Envoy's safe_regex) rejects. A plugin using any of it keeps every path
# routed through ext_proc rather than risk a route Envoy refuses or that matches less than Python does.
_RE2_UNSUPPORTED_GROUPS: Final = {
    "(?=": "a lookahead",
    "(?!": "a negative lookahead",
    "(?<=": "a lookbehind",
    "(?<!": "a negative lookbehind",
    "(?P=": "a named backreference",
    "(?>": "an atomic group",
    "(?(": "a conditional group",
    "(?#": "a comment group",
}
_RE2_FLAGS: Final = frozenset("ims-")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A host (DNS name or IP literal, IPv6 without brackets) and port."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, option: str) -> Endpoint:
        address = parse_listen_address(text, source=Path("command line"), key=option)
        return cls(address.host, address.port)

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def dialable(self) -> Endpoint:
        """The address a client connects to when a server listens here (wildcards mean loopback)."""
        wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1"}
        return Endpoint(wildcard.get(self.host, self.host), self.port)

    def socket_address(self) -> dict[str, Any]:
        return {"socket_address": {"address": self.host, "port_value": self.port}}

    def __str__(self) -> str:
        return str(ListenAddress(self.host, self.port))


@dataclasses.dataclass(frozen=True)
class RoutePlan:
    """Which request paths must go through ext_proc.

    ``everything`` means some plugin may match any path, so no route can bypass the server; ``reason``
    then names that plugin. Otherwise only ``prefixes`` (Envoy prefix matches) and ``regexes`` (RE2,
    matched against the whole path without the query) go through, and every other path bypasses it.
    """

    everything: bool
    prefixes: tuple[str, ...] = ()
    regexes: tuple[str, ...] = ()
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class RouteValues:
    """Per-route plugin values: requests whose path starts with ``prefix`` give each plugin named in
    ``values`` its mapping there (the plugin input's ``route``), as Envoy route metadata."""

    prefix: str
    values: Mapping[str, Mapping[str, Any]]

    @classmethod
    def parse(cls, text: str, plugins: Iterable[str]) -> RouteValues:
        """``PREFIX=JSON``: a JSON object of plugin name -> object of values."""
        where = Path("command line")
        prefix, sep, raw = text.partition("=")
        if not sep or not prefix.startswith("/"):
            raise ConfigError(
                where, "--route-values", f"must be PREFIX=JSON with PREFIX starting with '/', got {text!r}"
            )
        try:
            values = json.loads(raw)
        except ValueError as e:
            raise ConfigError(where, "--route-values", f"{prefix}: not JSON: {e}") from None
        if not isinstance(values, dict) or not all(isinstance(v, dict) for v in values.values()):
            raise ConfigError(where, "--route-values", f"{prefix}: must be an object of plugin name -> object")
        known = set(plugins)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                where, "--route-values", f"{prefix}: no enabled plugin named {unknown[0]!r} (have: {sorted(known)})"
            )
        return cls(prefix, values)


@dataclasses.dataclass(frozen=True)
class Options:
    """Knobs of the generated config that do not come from the server's YAML."""

    servers: tuple[Endpoint, ...]  # where Envoy reaches the ext_proc server(s)
    failure_mode_allow: bool = False
    allow_mode_override: bool = True
    message_timeout_ms: int | None = None  # None: derived from the plugins' timeouts
    health_check: bool = True
    route_cluster: str = UPSTREAM_CLUSTER
    route_values: tuple[RouteValues, ...] = ()

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("Options.servers needs at least one ext_proc server address")
        if self.message_timeout_ms is not None and self.message_timeout_ms <= 0:
            raise ValueError(f"message_timeout_ms must be positive, got {self.message_timeout_ms}")


@dataclasses.dataclass(frozen=True)
class Proxy:
    """Envoy's own addresses and the upstream it forwards to, for a complete bootstrap."""

    listen: Endpoint
    admin: Endpoint
    upstream: Endpoint

    def __post_init__(self) -> None:
        for option, endpoint in (("--listen", self.listen), ("--admin", self.admin)):
            if not endpoint.is_ip:
                raise ConfigError(Path("command line"), option, f"Envoy binds IP addresses only, got {endpoint.host!r}")


# --- what the plugins need ------------------------------------------------------------------------


def phase_needs(config: Config) -> Selection:
    """The phases the enabled plugins and their canaries export, all together. Loads (compiles) every enabled plugin,
    because which exports a module has is only known from the module."""
    plugins = PluginSet.load(config, PluginThreads(config.server.plugin_threads))
    try:
        return Selection.of(serving(plugins))
    finally:
        plugins.close()


def serving(plugins: PluginSet) -> tuple[LoadedPlugin, ...]:
    """The versions that may answer Envoy: the plugins and their canaries (a shadow is never waited for)."""
    return plugins.plugins if plugins.rollout is None else (*plugins.plugins, *plugins.rollout.serving)


def plan_routes(specs: Iterable[PluginConfig]) -> RoutePlan:
    """Route plan for the enabled plugins among ``specs``.

    A plugin without ``path_prefix`` and ``path_regex`` matches every path (hosts, methods and headers
    say nothing about the path), so then everything goes through. A plugin with both is routed by its
    prefix, which admits a superset of what it matches.
    """
    prefixes: set[str] = set()
    regexes: list[str] = []
    for spec in specs:
        if not spec.enabled:
            continue
        match = spec.match
        if match.path_prefix is not None:
            prefixes.add(match.path_prefix)
            continue
        if match.path_regex is None:
            return RoutePlan(everything=True, reason=f"plugin {spec.name!r} has no path_prefix or path_regex")
        problem = re2_incompatibility(match.path_regex.pattern)
        if problem is not None:
            return RoutePlan(
                everything=True,
                reason=f"plugin {spec.name!r}: path_regex uses {problem}, which Envoy's RE2 cannot express",
            )
        regex = re2_full_match(match.path_regex.pattern)
        if regex not in regexes:
            regexes.append(regex)
    return RoutePlan(everything=False, prefixes=_minimal_prefixes(prefixes), regexes=tuple(regexes))


def _minimal_prefixes(prefixes: Iterable[str]) -> tuple[str, ...]:
    # "/api" already sends "/api/v1" through, so the longer one would be a dead route.
    kept: list[str] = []
    for prefix in sorted(prefixes):
        if not any(prefix.startswith(shorter) for shorter in kept):
            kept.append(prefix)
    return tuple(kept)


def re2_full_match(pattern: str) -> str:
    """RE2 for Envoy's route ``safe_regex``, which must match the whole path, from a Python pattern
    the server applies with ``re.search`` (anywhere in the path)."""
    return f".*(?:{pattern}).*"


def re2_incompatibility(pattern: str) -> str | None:
    """What in ``pattern`` RE2 does not support, or None. Errs on the side of reporting: a false alarm
    only costs a route that could have bypassed the server."""
    i = 0
    in_class = False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            escaped = pattern[i + 1 : i + 2]
            if escaped.isdigit() and escaped != "0":  # in a class Python reads it as octal, RE2 not at all
                return "a backreference"
            if escaped == "Z":
                return r"'\Z'"
            i += 2
            continue
        if in_class:
            in_class = char != "]"
            i += 1
            continue
        if char == "[":
            # A ']' right after '[' or '[^' is a literal member, not the end of the class.
            i += 2 if pattern.startswith("[^", i) else 1
            if pattern.startswith("]", i):
                i += 1
            in_class = True
            continue
        for opener, name in _RE2_UNSUPPORTED_GROUPS.items():
            if pattern.startswith(opener, i):
                return name
        if pattern.startswith("(?", i) and not pattern.startswith(("(?:", "(?P<"), i):
            flags = ""
            for flag in pattern[i + 2 :]:
                if flag in ":)":
                    break
                flags += flag
            if not set(flags) <= _RE2_FLAGS:
                return f"the inline flags '(?{flags})'"
        if char in "*+?}" and pattern.startswith("+", i + 1):
            return "a possessive quantifier"
        i += 1
    return None


@dataclasses.dataclass(frozen=True)
class MessageBudget:
    """The longest the server may take to answer one Envoy message, and the plugins that make it so."""

    ms: int
    message: str  # a key of _MESSAGE_EXPORTS
    plugins: tuple[str, ...]

    @property
    def envoy_timeout_ms(self) -> int:
        """A message timeout for Envoy above this, so that a slow plugin ends in the server's 503 (logged,
        attributed to the plugin) rather than in Envoy's timeout."""
        return _MESSAGE_OVERHEAD_MS + self.ms

    def __str__(self) -> str:
        return f"{self.message}, {self.ms} ms ({', '.join(self.plugins)})" if self.plugins else "no plugin runs"


def worst_message(plugins: Sequence[LoadedPlugin]) -> MessageBudget:
    """The slowest Envoy message the plugins can make, each call taking all its attempts at their limits.

    Plugins with path prefixes that exclude each other never run in one request: only those whose prefixes
    lie on one chain ("/", "/api", "/api/v1") add up, plus every plugin without a prefix.
    """
    prefixes = {p.spec.match.path_prefix for p in plugins if p.spec.match.path_prefix is not None}
    worst = MessageBudget(0, "request headers", ())
    for path in (None, *sorted(prefixes)):
        together = [p for p in plugins if _may_run_on(p.spec.match.path_prefix, path)]
        for message, exports in _MESSAGE_EXPORTS.items():
            costs = {p.spec.name: _call_ms(p.spec) * len(p.exports & exports) for p in together}
            ms = sum(costs.values())
            if ms > worst.ms:
                worst = MessageBudget(ms, message, tuple(name for name, cost in costs.items() if cost))
    return worst


def _may_run_on(prefix: str | None, path: str | None) -> bool:
    """Whether a plugin with path_prefix ``prefix`` may run on requests whose path starts with ``path``."""
    return prefix is None or (path is not None and path.startswith(prefix))


def _call_ms(spec: PluginConfig) -> int:
    return _WAITS_PER_ATTEMPT * spec.timeout_ms * (spec.retries + 1)


def derived_message_timeout_ms(plugins: Sequence[LoadedPlugin]) -> int:
    return worst_message(plugins).envoy_timeout_ms


# --- the pieces -----------------------------------------------------------------------------------


def _duration(ms: int) -> str:
    # The proto3 JSON form of google.protobuf.Duration.
    return f"{ms // 1000}.{ms % 1000:03d}s"


# --- reading an Envoy config back ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FilterTimeouts:
    """The message timeouts of one ext_proc filter in an Envoy config file."""

    key: str  # where the filter's typed_config sits in the file
    message_timeout_ms: int
    max_message_timeout_ms: int | None


def read_filter_timeouts(path: Path) -> list[FilterTimeouts]:
    """Every ext_proc filter in the Envoy config at ``path`` (YAML or JSON; a bootstrap, the output of
    `extproc envoy-config`, or Kubernetes documents that embed a filter, like Istio's EnvoyFilter)."""
    try:
        documents = [document for document in yaml.safe_load_all(path.read_bytes()) if document is not None]
    except OSError as e:
        raise ConfigError(path, "", f"cannot read the Envoy config: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(path, "", f"invalid YAML: {e}") from None
    found: list[FilterTimeouts] = []
    for index, document in enumerate(documents):
        where = f"(document {index + 1}) " if len(documents) > 1 else ""
        for key, typed in _typed_configs(document, ""):
            if typed.get("@type") != _EXT_PROC_TYPE:
                continue
            key = where + key
            message = _duration_ms(path, f"{key}.message_timeout", typed.get("message_timeout"))
            most = _duration_ms(path, f"{key}.max_message_timeout", typed.get("max_message_timeout"))
            found.append(FilterTimeouts(key, ENVOY_MESSAGE_TIMEOUT_MS if message is None else message, most))
    if not found:
        raise ConfigError(path, "", f"no ext_proc filter in it (a typed_config of type {_EXT_PROC_TYPE})")
    return found


def _typed_configs(node: object, key: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every mapping with an ``@type`` under ``node``, with its key path."""
    if isinstance(node, Mapping):
        if "@type" in node:
            yield key, node
        for name, value in node.items():
            yield from _typed_configs(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _typed_configs(value, f"{key}[{index}]")


def _duration_ms(path: Path, key: str, value: object) -> int | None:
    """A google.protobuf.Duration as Envoy reads it from YAML: "1.5s", or {seconds: 1, nanos: 500000000}."""
    if value is None:
        return None
    seconds: int | None = None
    nanos = 0
    if isinstance(value, str) and _DURATION_RE.fullmatch(value):
        whole, _, fraction = value[:-1].partition(".")
        seconds, nanos = int(whole), int(fraction.ljust(9, "0"))
    elif isinstance(value, Mapping) and set(value) <= {"seconds", "nanos"} and all(map(_is_count, value.values())):
        seconds, nanos = value.get("seconds", 0), value.get("nanos", 0)
    if seconds is None or nanos >= 1_000_000_000:
        raise ConfigError(path, key, f"must be a duration such as '0.250s' or {{seconds: 1}}, got {value!r}")
    # In integers: as a float, 2.007 s is 2007.0000000000002 ms, which would round up.
    return seconds * 1000 - (-nanos // 1_000_000)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def ext_proc_filter(config: Config, needs: Selection, options: Options) -> dict[str, Any]:
    """The ``envoy.filters.http.ext_proc`` HTTP filter entry."""
    timeout_ms = options.message_timeout_ms or derived_message_timeout_ms(needs.plugins)
    return {
        "name": EXT_PROC_FILTER,
        "typed_config": {
            "@type": _EXT_PROC_TYPE,
            "grpc_service": {"envoy_grpc": {"cluster_name": EXTPROC_CLUSTER}},
            "stat_prefix": EXT_PROC_STAT_PREFIX,
            "failure_mode_allow": options.failure_mode_allow,
            "allow_mode_override": options.allow_mode_override,
            "message_timeout": _duration(timeout_ms),
            "processing_mode": {
                # The server needs request headers to pick the plugins, whatever they export.
                "request_header_mode": "SEND",
                "response_header_mode": "SEND" if needs.response_headers else "SKIP",
                "request_body_mode": _body_mode(needs.request_body, needs.request_chunks),
                "response_body_mode": _body_mode(needs.response_body, needs.response_chunks),
                "request_trailer_mode": "SEND" if needs.request_trailers else "SKIP",
                "response_trailer_mode": "SEND" if needs.response_trailers else "SKIP",
            },
            # Without this Envoy drops plugin changes to :authority, host, :method and :scheme (it counts them in
            # rejected_header_mutations); :path changes go through either way.
            "mutation_rules": {"allow_all_routing": True},
            # The attributes the plugin contract promises (docs/plugin-abi.md), and the route's metadata
            # when routes give plugins values.
            "request_attributes": ["source.address", "request.id"]
            + ([ROUTE_METADATA_ATTRIBUTE] if options.route_values else []),
            # Unset, Envoy drops all dynamic metadata the server returns.
            "metadata_options": {"receiving_namespaces": {"untyped": [METADATA_NAMESPACE]}},
        },
    }


def _body_mode(whole: bool, chunks: bool) -> str:
    """BUFFERED when a plugin reads the body whole (chunk plugins then see it as one chunk), STREAMED when
    plugins only read chunks. Never FULL_DUPLEX_STREAMED: the server cannot narrow it per request (a
    request's mode may not switch into or out of it), so every body would pass through the server."""
    if whole:
        return "BUFFERED"
    return "STREAMED" if chunks else "NONE"


def routes(plan: RoutePlan, cluster: str, values: Sequence[RouteValues] = ()) -> list[dict[str, Any]]:
    """Virtual-host routes: prefixes with plugin values, the plugins' paths through ext_proc, then a
    catch-all that bypasses it (Envoy takes the first route that matches)."""

    def route(name: str, match: dict[str, Any]) -> dict[str, Any]:
        # A fresh action per route: a shared dict would come out as a YAML anchor and alias.
        return {"name": name, "match": match, "route": {"cluster": cluster}}

    def through(name: str, match: dict[str, Any]) -> dict[str, Any]:
        # Any per-route config of the filter switches it on where it is off by default (see
        # `bypasses_some_routes`); empty overrides change nothing else.
        return {
            **route(name, match),
            "typed_per_filter_config": {EXT_PROC_FILTER: {"@type": _PER_ROUTE_TYPE, "overrides": {}}},
        }

    # The longest prefix first, so each request meets the most specific values.
    valued = [
        {**through(f"extproc-values:{v.prefix}", {"prefix": v.prefix}), "metadata": _route_metadata(v)}
        for v in sorted(values, key=lambda v: len(v.prefix), reverse=True)
    ]
    if plan.everything:
        return [*valued, route("extproc", {"prefix": "/"})]
    routed = [through(f"extproc:{prefix}", {"prefix": prefix}) for prefix in plan.prefixes]
    routed += [through(f"extproc:regex{i}", {"safe_regex": {"regex": regex}}) for i, regex in enumerate(plan.regexes)]
    return [*valued, *routed, route("bypass", {"prefix": "/"})]


def _route_metadata(values: RouteValues) -> dict[str, Any]:
    # The server reads the route's metadata under this namespace (the ROUTE_METADATA_ATTRIBUTE attribute).
    return {"filter_metadata": {METADATA_NAMESPACE: {name: dict(value) for name, value in values.values.items()}}}


def _cluster(
    name: str, endpoints: Sequence[Endpoint], protocol: Mapping[str, Any], buffer_limit: int
) -> dict[str, Any]:
    return {
        "name": name,
        # STRICT_DNS for service names (compose, Kubernetes); it also validates without resolving.
        "type": "STATIC" if all(e.is_ip for e in endpoints) else "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "1s",
        "per_connection_buffer_limit_bytes": buffer_limit,
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": dict(protocol),
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": e.socket_address()}} for e in endpoints]}],
        },
    }


def extproc_cluster(config: Config, options: Options) -> dict[str, Any]:
    """The gRPC cluster of the ext_proc server(s): HTTP/2, health checked, least-request balanced."""
    # Each stream holds a server thread for the whole exchange, so new streams go to the least busy server.
    cluster = {
        **_cluster(EXTPROC_CLUSTER, options.servers, {"http2_protocol_options": {}}, _buffer_limit(config)),
        "lb_policy": "LEAST_REQUEST",
    }
    if options.health_check:
        # grpc.health.v1 with the empty service name: the server's overall health.
        cluster["health_checks"] = [
            {
                "timeout": "1s",
                "interval": "5s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {},
            }
        ]
    return cluster


def _buffer_limit(config: Config) -> int:
    # Buffered bodies live in Envoy's per-connection buffer; it must hold what the server accepts.
    return config.server.max_body_bytes


def fragment(config: Config, needs: Selection, options: Options) -> dict[str, Any]:
    """The pieces to add to an existing Envoy config."""
    plan = plan_routes(config.plugins)
    http_filter = ext_proc_filter(config, needs, options)
    if not plan.everything:
        # Off unless a route switches it on: on bypassed routes Envoy does not even create the
        # filter, which keeps them within a few microseconds of having no filter at all.
        http_filter["disabled"] = True
    pieces = {
        "http_filters": [http_filter],
        "routes": routes(plan, options.route_cluster, options.route_values),
        "clusters": [extproc_cluster(config, options)],
    }
    if config.server.outcome_metadata:
        pieces["access_log"] = access_log(plugin_outcomes=True)
    return pieces


def connection_manager(
    name: str, routes: list[dict[str, Any]], http_filters: list[dict[str, Any]], log: list[dict[str, Any]]
) -> dict[str, Any]:
    """The HTTP connection manager: request ids, the access `log`, `http_filters` then the router."""
    return {
        "@type": _TYPE + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": HCM_STAT_PREFIX,
        "codec_type": "AUTO",
        "generate_request_id": True,
        # Envoy's default (OVERWRITE) would replace a `server` header a plugin set or removed, and any
        # plugin can set one (every export may answer with an immediate response). The price: without a
        # plugin that sets or removes it, clients see the upstream's own `server` header, not "envoy".
        "server_header_transformation": "PASS_THROUGH",
        "access_log": log,
        "route_config": {"name": name, "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            *http_filters,
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _TYPE + "envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    }


# Envoy's runtime settings every ext_proc Envoy of ours needs. Without a graceful close, Envoy resets
# an ext_proc stream once it expects nothing more, just as the server ends it; grpc.aio then leaks the
# native memory of the operation that failed on the reset stream (measured: 55 bytes per request with a
# response body plugin, growing for good; none with it).
def runtime_layer() -> dict[str, Any]:
    """A `layered_runtime` layer with these settings, for the bootstrap's `layered_runtime.layers`."""
    return {"name": "extproc", "static_layer": {"envoy.reloadable_features.ext_proc_graceful_grpc_close": True}}


def bootstrap(config: Config, needs: Selection, options: Options, proxy: Proxy) -> dict[str, Any]:
    """A complete Envoy bootstrap: listener -> ext_proc -> router -> ``proxy.upstream``."""
    pieces = fragment(config, needs, dataclasses.replace(options, route_cluster=UPSTREAM_CLUSTER))
    buffer_limit = _buffer_limit(config)
    manager = connection_manager(
        "local", pieces["routes"], pieces["http_filters"], access_log(plugin_outcomes=config.server.outcome_metadata)
    )
    return {
        "admin": {"address": proxy.admin.socket_address()},
        "layered_runtime": {"layers": [runtime_layer()]},
        # Envoy warns on every start without a downstream connection limit.
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _TYPE
                        + "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 10000,
                    },
                }
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "main",
                    "address": proxy.listen.socket_address(),
                    "per_connection_buffer_limit_bytes": buffer_limit,
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
            "clusters": [
                _cluster(UPSTREAM_CLUSTER, [proxy.upstream], {"http_protocol_options": {}}, buffer_limit),
                *pieces["clusters"],
            ],
        },
    }


def render(document: Mapping[str, Any], fmt: str, header: Sequence[str] = ()) -> str:
    """``document`` as YAML (``header`` lines become leading comments) or JSON (which has no comments)."""
    if fmt == "json":
        return json.dumps(document, indent=2) + "\n"
    if fmt != "yaml":
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    comments = "".join(f"# {line}\n" if line else "#\n" for line in header)
    return comments + yaml.safe_dump(dict(document), sort_keys=False, width=120)
