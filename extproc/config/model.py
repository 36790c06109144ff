"""The server's configuration as immutable values: what each setting means and its default.

parse.py builds them from a file, checking everything; code that builds them directly (tests, tools)
gets the same defaults.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

from extproc.phases import Phase
from extproc.plugins.match import MatchRules
from extproc.validation import thaw

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")
TRACING_PROTOCOLS: Final = ("grpc", "http/protobuf")
# The OTLP/HTTP path for traces, added to an endpoint given without one.
OTLP_HTTP_TRACES_PATH: Final = "/v1/traces"
MAX_RETRIES: Final = 5


class Encoding(enum.StrEnum):
    JSON = "json"
    PROTOBUF = "protobuf"


class FailurePolicy(enum.StrEnum):
    """What a plugin failure does to the request."""

    FAIL_OPEN = "fail_open"  # skip this plugin's changes for this request and carry on
    FAIL_CLOSED = "fail_closed"  # answer the client with `error_status` at once


class StateBackend(enum.StrEnum):
    """Where the key-value host functions keep their data."""

    MEMORY = "memory"  # in this process: every worker and replica counts alone
    REDIS = "redis"  # shared by every process that uses the same Redis and key_prefix


@dataclasses.dataclass(frozen=True)
class ListenAddress:
    host: str  # IPv6 literals are kept without brackets
    port: int

    def __str__(self) -> str:
        # The form gRPC's add_insecure_port expects, which needs IPv6 literals bracketed.
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class TlsConfig:
    """Server certificate and key (PEM); with client_ca_file, clients must present a certificate it signed."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 50051
    # Threads for the plugin calls that do not run on the event loop (see plugins/runner.py): calls
    # that wait on the network or were once slow. Streams themselves hold no thread.
    plugin_threads: int = 32
    # Open streams per worker process; beyond it a new stream is refused at once (RESOURCE_EXHAUSTED),
    # so Envoy applies its failure mode instead of waiting.
    max_concurrent_streams: int = 10_000
    # A stream that gets no message from Envoy for this long is closed (0: never). An exchange with a
    # response phase waits for the upstream's response between two messages, hence the generous default.
    stream_idle_timeout_ms: int = 300_000
    # A plugin call expected to take less runs on the event loop (cheaper than a thread handoff); a
    # call that took more moves its plugin to the threads for good. 0: every call runs on a thread.
    inline_call_budget_us: int = 1_000
    log_level: str = "info"
    max_body_bytes: int = 8 * 1024 * 1024
    # How long SIGTERM waits for in-flight streams before cancelling them.
    shutdown_grace_ms: int = 10_000
    # How often the config file and plugin files are checked for changes; 0 turns watching off.
    reload_poll_ms: int = 1_000
    # After SIGTERM the gRPC health service says NOT_SERVING this long before the listener closes, so
    # that health checkers (Envoy, Kubernetes) stop sending new streams first.
    drain_ms: int = 0
    admin_listen: ListenAddress | None = None  # None: no admin HTTP endpoint
    # From server.admin_token_file: POST /reload needs it as a bearer token. Kept out of repr, which ends up
    # in logs and tracebacks.
    admin_token: str | None = dataclasses.field(default=None, repr=False)
    log_format: str = "text"
    tls: TlsConfig | None = None
    # Plaintext gRPC and the admin endpoint listen on loopback only, unless this says otherwise.
    allow_plaintext_off_loopback: bool = False
    # Each plugin call's outcome and time go to Envoy as dynamic metadata, for the access log (rollout.py).
    outcome_metadata: bool = False

    @property
    def listen_address(self) -> str:
        return str(ListenAddress(self.listen_host, self.listen_port))


@dataclasses.dataclass(frozen=True)
class BreakerConfig:
    """After `failures` consecutive failures the plugin is skipped for `cooldown_ms`; 0 failures = never."""

    failures: int = 5
    cooldown_ms: int = 10_000


class RolloutMode(enum.StrEnum):
    """How a plugin's candidate version meets traffic."""

    SHADOW = "shadow"  # runs on the live version's input, its output compared and never applied
    CANARY = "canary"  # serves a share of the clients in place of the live version


@dataclasses.dataclass(frozen=True)
class CandidateConfig:
    """A plugin's candidate version. Settings left None are the live version's."""

    path: Path  # absolute and resolved
    fraction: float  # of exchanges (shadow) or of canary keys (canary)
    mode: RolloutMode = RolloutMode.SHADOW
    config: Mapping[str, object] | None = dataclasses.field(default=None, hash=False)
    # Canary: the request header whose value picks the version, so one client keeps one version.
    key_header: str = "x-request-id"
    on_error: FailurePolicy | None = None  # canary only: a shadow's failures never reach the client
    error_status: int | None = None  # canary only
    timeout_ms: int | None = None
    memory_limit_mb: int | None = None
    pool_size: int | None = None
    circuit_breaker: BreakerConfig | None = None


@dataclasses.dataclass(frozen=True)
class PluginConfig:
    name: str
    path: Path  # absolute and resolved
    # Read-only all the way down (mappings are MappingProxyType, lists are tuples). Left out of the hash
    # because mapping proxies are unhashable; equal configs still hash equal.
    config: Mapping[str, object] = dataclasses.field(default_factory=lambda: MappingProxyType({}), hash=False)
    enabled: bool = True
    execution_points: frozenset[Phase] | None = None  # None: what the plugin declares, or every export it has
    timeout_ms: int = 100
    memory_limit_mb: int | None = None  # None: derived from server.max_body_bytes (see memory_limit)
    encoding: Encoding = Encoding.JSON
    pool_size: int | None = None  # None: twice the cores, at most server.plugin_threads (see loader)
    match: MatchRules = MatchRules()  # noqa: RUF009 (frozen: one shared default is safe)
    # Closed by default: a failed redaction or auth plugin must not let the request through unchanged.
    on_error: FailurePolicy = FailurePolicy.FAIL_CLOSED
    error_status: int = 503
    retries: int = 0
    circuit_breaker: BreakerConfig = BreakerConfig()
    # Hosts the plugin may reach with extproc_http_request (exact or "*.suffix"); empty: no network.
    allowed_hosts: tuple[str, ...] = ()
    # A larger HTTP response body is refused: the plugin gets the error kind too_large.
    max_http_response_bytes: int = 1024 * 1024
    # When the state backend is down or slow: fail_open = the host functions act as if the store were empty
    # and every write succeeded; fail_closed = the call fails and `on_error` applies.
    state_failure: FailurePolicy = FailurePolicy.FAIL_OPEN
    # A larger output (what the plugin returns, before decoding) is a bad_output failure. None: derived
    # from server.max_body_bytes (see loader.default_max_output_bytes).
    max_output_bytes: int | None = None
    # A new version of the module tried beside this one (extproc/rollout.py); None: none.
    candidate: CandidateConfig | None = None

    def config_json(self) -> str:
        return json.dumps(self.config, default=thaw, ensure_ascii=False, allow_nan=False)

    def memory_limit(self, max_body_bytes: int) -> int:
        """The plugin's memory limit in MiB: its `memory_limit_mb`, else the default for `max_body_bytes`."""
        return self.memory_limit_mb or default_memory_limit_mb(max_body_bytes)


def default_memory_limit_mb(max_body_bytes: int) -> int:
    """What an SDK body plugin needs for a body of `max_body_bytes` (docs/writing-plugins.md, "Limits"): four
    times the body (Extism's copy of the input, which the output reuses; the plugin's own copy; the rewritten
    body; room to spare) and 8 MiB for everything else. The limit only caps growth, so header plugins lose
    nothing by it."""
    return 4 * math.ceil(max_body_bytes / (1024 * 1024)) + 8


@dataclasses.dataclass(frozen=True)
class StateConfig:
    """The store behind the key-value host functions (docs/shared-state.md)."""

    backend: StateBackend = StateBackend.MEMORY
    url: str | None = None  # redis://, rediss:// or unix://; required for redis, refused for memory
    key_prefix: str = "extproc:"
    # Bound on one Redis command; a command starts only if this much of the plugin's timeout is left.
    timeout_ms: int = 20


@dataclasses.dataclass(frozen=True)
class TracingConfig:
    """OpenTelemetry spans per ext_proc stream and per plugin call, sent over OTLP (docs/operations.md)."""

    endpoint: str  # grpc: http(s)://host:port; http/protobuf: the traces URL (path /v1/traces unless given)
    protocol: str = "grpc"
    service_name: str = "extproc"
    # Share of the traces that start here (no sampled traceparent from Envoy) that are recorded; a request
    # that comes with a traceparent follows its sampled flag.
    sample_ratio: float = 1.0


@dataclasses.dataclass(frozen=True)
class Config:
    server: ServerConfig
    plugins: tuple[PluginConfig, ...]
    source: Path  # absolute but not resolved, see parse_config
    state: StateConfig = StateConfig()
    tracing: TracingConfig | None = None  # None: no tracing
