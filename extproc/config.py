"""Load the server's YAML configuration and validate it into immutable dataclasses.

Everything is checked up front so the request path never has to second-guess a setting, and every
problem becomes a ConfigError naming the file, the key path and what is wrong with the value.
An explicit ``null`` for an optional key means "use the default", so a section whose entries are all
commented out still loads.

Each section is a table at the end of this module, from key to the parser of its value (the parsers of
plain values are in validation.py): the table's keys are the ones the section allows, in the order an error
lists them, and a key left out takes the default of the dataclass field it fills.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import ipaddress
import json
import math
import re
import urllib.parse
from collections.abc import Hashable, Mapping
from contextvars import ContextVar
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import yaml

from extproc.errors import ConfigError
from extproc.phases import CONFIG_NAMES as PHASE_NAMES
from extproc.phases import Phase
from extproc.plugins.match import HeaderRule, MatchRules
from extproc.redaction import redact_url
from extproc.tls import PlaintextRefused, check_plaintext
from extproc.validation import (
    Invalid,
    Table,
    as_list,
    boolean,
    child,
    choice,
    describe,
    enum_choice,
    json_mapping,
    mapping,
    non_empty_string,
    non_negative_int,
    optional,
    parse_keys,
    positive_int,
    section,
    string,
    string_list,
    thaw,
)

# The config format's API; MatchRules, HeaderRule and ConfigError live where they are used and are
# named here too, as types of this module's dataclasses and of its errors.
__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_CONFIG_BYTES",
    "MAX_RETRIES",
    "OTLP_HTTP_TRACES_PATH",
    "TRACING_PROTOCOLS",
    "BreakerConfig",
    "CandidateConfig",
    "Config",
    "ConfigError",
    "Encoding",
    "FailurePolicy",
    "HeaderRule",
    "ListenAddress",
    "MatchRules",
    "PluginConfig",
    "RolloutMode",
    "ServerConfig",
    "StateBackend",
    "StateConfig",
    "TlsConfig",
    "TracingConfig",
    "default_memory_limit_mb",
    "load_config",
    "parse_config",
]

# Far above any real configuration; it only stops a wrong path (a log file, a device) from being slurped.
MAX_CONFIG_BYTES: Final = 1024 * 1024

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("text", "json")
TRACING_PROTOCOLS: Final = ("grpc", "http/protobuf")
# What each protocol needs installed: the `otel` extra (pip install 'extism-extproc[otel]').
_TRACING_MODULES: Final = {
    "grpc": ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"),
    "http/protobuf": ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter"),
}
# The OTLP/HTTP path for traces, added to an endpoint given without one.
OTLP_HTTP_TRACES_PATH: Final = "/v1/traces"
MAX_RETRIES: Final = 5
_REDIS_SCHEMES: Final = ("redis", "rediss", "unix")
# A shorter token could be guessed over the network; the upper bound only catches a wrong file.
_MIN_ADMIN_TOKEN_CHARS: Final = 16
_MAX_ADMIN_TOKEN_BYTES: Final = 4096
# It travels in an Authorization header.
_ADMIN_TOKEN_RE: Final = re.compile(rb"[\x21-\x7e]+")

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_DNS_NAME: Final = r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*"
_LISTEN_HOST_RE: Final = re.compile(_DNS_NAME, re.IGNORECASE)
_HOST_PATTERN_RE: Final = re.compile(rf"(?:\*\.)?{_DNS_NAME}|\[[0-9a-f:.]+\]")
# RFC 9110 token: the syntax of both method names and header field names.
_TOKEN_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

# The folder of the file parse_config is reading: relative file names in it resolve against it. A context
# variable rather than a parameter of every parser, as only the file keys need it.
_FOLDER: ContextVar[Path] = ContextVar("config_folder")


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

    @classmethod
    def parse(cls, text: str, *, source: Path, key: str = "server.listen") -> ListenAddress:
        try:
            return _listen_address(text, key)
        except Invalid as e:
            raise ConfigError(source, e.key, e.reason) from None

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


def load_config(path: Path) -> Config:
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(path, "", "config file not found") from None
    except OSError as e:
        raise ConfigError(path, "", f"cannot read config file: {e.strerror or e}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(path, "", f"config file is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = yaml.load(raw, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        reason = f"invalid YAML: {e.problem or e.context}"
        if mark is None:
            raise ConfigError(path, "", reason) from None
        raise ConfigError(path, "", reason, line=mark.line + 1, column=mark.column + 1) from None
    except yaml.YAMLError as e:  # e.g. bytes that are not UTF-8, which carry no line
        raise ConfigError(path, "", f"invalid YAML: {e}") from None
    return parse_config(data, path)


def parse_config(data: object, source: Path) -> Config:
    # Not resolve(): a Kubernetes ConfigMap is a symlink into a directory that is swapped on update, so
    # a reload must go through the path as given to see the new version.
    absolute = source.absolute()
    token = _FOLDER.set(absolute.parent)
    try:
        top = section(data, "", _TOP_KEYS, required=("plugins",))
        # Config.server has no default, for code that builds a Config; the file may leave the section out.
        return Config(server=top.pop("server", ServerConfig()), source=absolute, **top)
    except Invalid as e:
        raise ConfigError(source, e.key, e.reason) from None
    finally:
        _FOLDER.reset(token)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which plain YAML loading silently resolves to the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # "<<" is a merge instruction, not a key
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key; the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _existing_file(value: object, key: str) -> Path:
    text = non_empty_string(value, key)
    try:
        path = (_FOLDER.get() / text).resolve()  # an absolute text replaces the folder
    except (OSError, RuntimeError) as e:  # RuntimeError: symlink loop
        raise Invalid(key, f"cannot resolve {text!r}: {e}") from None
    if not path.is_file():
        raise Invalid(key, f"not a file: {path}" if path.exists() else f"file not found: {path}")
    return path


# --- the sections -----------------------------------------------------------------------------------------


def _listen_address(value: object, key: str) -> ListenAddress:
    text = string(value, key)
    host, sep, port = text.rpartition(":")
    if not sep:
        raise Invalid(key, f"must be 'host:port' (IPv6 as '[::1]:50051'), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid(key, f"{host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise Invalid(key, f"IPv6 addresses must be bracketed, as in '[::1]:50051', got {text!r}")
    elif not _LISTEN_HOST_RE.fullmatch(host):
        raise Invalid(key, f"invalid host {host!r} in {text!r}")
    # Port 0 is allowed: it asks the OS for a free port, which tests need.
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise Invalid(key, f"port must be a number from 0 to 65535, got {port!r}")
    return ListenAddress(host, int(port))


def _server(value: object, key: str) -> ServerConfig:
    if isinstance(value, Mapping) and "grpc_threads" in value:
        raise Invalid(
            child(key, "grpc_threads"),
            "no longer used: streams hold no thread since the server runs on asyncio; limit open streams "
            "with server.max_concurrent_streams, and size the threads for slow plugin calls with "
            "server.plugin_threads",
        )
    values = section(value, key, _SERVER_KEYS)
    # The two keys that fill fields of other names.
    if "listen" in values:
        address = values.pop("listen")
        values.update(listen_host=address.host, listen_port=address.port)
    if "admin_token_file" in values:
        values["admin_token"] = values.pop("admin_token_file")
    server = ServerConfig(**values)
    try:
        check_plaintext(server, ListenAddress(server.listen_host, server.listen_port), tls_applies=True)
        if server.admin_listen is not None:
            check_plaintext(server, server.admin_listen, tls_applies=False)
    except PlaintextRefused as e:
        raise Invalid(child(key, "admin_listen" if e.admin else "listen"), str(e)) from None
    return server


def _admin_token(value: object, key: str) -> str:
    path = _existing_file(value, key)
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_ADMIN_TOKEN_BYTES + 1)
    except OSError as e:
        raise Invalid(key, f"cannot read {path}: {e.strerror or e}") from None
    # No message quotes the file's content: it is the secret.
    if len(raw) > _MAX_ADMIN_TOKEN_BYTES:
        raise Invalid(key, f"{path} is larger than {_MAX_ADMIN_TOKEN_BYTES} bytes; it should hold one token")
    token = raw.strip()  # a trailing newline is how editors and `echo` leave it
    if not _ADMIN_TOKEN_RE.fullmatch(token):
        raise Invalid(key, f"{path} must hold one token of printable ASCII characters without spaces")
    if len(token) < _MIN_ADMIN_TOKEN_CHARS:
        raise Invalid(
            key,
            f"the token in {path} has {len(token)} characters, fewer than {_MIN_ADMIN_TOKEN_CHARS}; "
            "make one with `openssl rand -hex 32`",
        )
    return token.decode("ascii")


def _tls(value: object, key: str) -> TlsConfig:
    return TlsConfig(**section(value, key, _TLS_KEYS, required=("cert_file", "key_file")))


def _plugins(value: object, key: str) -> tuple[PluginConfig, ...]:
    plugins: list[PluginConfig] = []
    first_use: dict[str, int] = {}
    for i, item in enumerate(as_list(value, key)):
        plugin = _plugin(item, f"{key}[{i}]")
        if plugin.name in first_use:
            raise Invalid(
                f"{key}[{i}].name",
                f"duplicate plugin name {plugin.name!r} (already used by {key}[{first_use[plugin.name]}])",
            )
        first_use[plugin.name] = i
        plugins.append(plugin)
    return tuple(plugins)


def _plugin(value: object, key: str) -> PluginConfig:
    return PluginConfig(**section(value, key, _PLUGIN_KEYS, required=("name", "path")))


def _candidate(value: object, key: str) -> CandidateConfig:
    required = ("path", "fraction")
    m = mapping(value, key, _CANDIDATE_KEYS, required)
    mode = optional(m, key, "mode", enum_choice(RolloutMode), CandidateConfig.mode)
    if mode is RolloutMode.SHADOW:
        for name in _CANARY_ONLY_KEYS:
            if m.get(name) is not None:
                raise Invalid(child(key, name), "applies only to mode 'canary': a shadow never serves a request")
    return CandidateConfig(mode=mode, **parse_keys(m, key, _CANDIDATE_KEYS, required))


def _state(value: object, key: str) -> StateConfig:
    m = mapping(value, key, _STATE_KEYS)
    backend = optional(m, key, "backend", enum_choice(StateBackend), StateConfig.backend)
    if backend is StateBackend.MEMORY:
        for name in _STATE_KEYS:
            if name != "backend" and m.get(name) is not None:
                raise Invalid(child(key, name), "applies only to backend 'redis'")
        return StateConfig()
    if m.get("url") is None:
        raise Invalid(child(key, "url"), "required when backend is 'redis', e.g. 'redis://127.0.0.1:6379/0'")
    return StateConfig(backend=backend, **parse_keys(m, key, _STATE_KEYS))


def _redis_url(value: object, key: str) -> str:
    text = non_empty_string(value, key)
    # Errors quote the URL, and a config error is printed, logged and answered to POST /reload.
    shown = repr(redact_url(text))
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port  # raises ValueError when not a number from 0 to 65535
    except ValueError as e:
        raise Invalid(key, f"invalid URL {shown}: {e}") from None
    if parts.scheme not in _REDIS_SCHEMES:
        raise Invalid(key, f"must start with {', '.join(s + '://' for s in _REDIS_SCHEMES)}, got {shown}")
    if parts.scheme == "unix" and not parts.path:
        raise Invalid(key, f"a unix:// URL needs a socket path, got {shown}")
    if parts.scheme != "unix" and not parts.hostname:
        raise Invalid(key, f"needs a host, as in 'redis://127.0.0.1:6379/0', got {shown}")
    if port == 0:
        raise Invalid(key, f"port must be from 1 to 65535, got {shown}")
    return text


def _tracing(value: object, key: str) -> TracingConfig:
    m = mapping(value, key, _TRACING_KEYS, required=("endpoint",))
    protocol = optional(m, key, "protocol", choice(TRACING_PROTOCOLS), TracingConfig.protocol)
    missing = [name for name in _TRACING_MODULES[protocol] if not _importable(name)]
    if missing:
        raise Invalid(
            key,
            f"needs OpenTelemetry ({', '.join(missing)} is not installed): pip install 'extism-extproc[otel]'",
        )
    if not _otlp_protos_current():
        raise Invalid(
            key,
            "OpenTelemetry's OTLP protobuf modules were overwritten by an older copy that xds-protos (Envoy's API, "
            "which the server needs) also installs: pip install --force-reinstall --no-deps opentelemetry-proto",
        )
    endpoint = _otlp_endpoint(m["endpoint"], child(key, "endpoint"), protocol)
    return TracingConfig(endpoint=endpoint, protocol=protocol, **parse_keys(m, key, _TRACING_KEYS))


def _otlp_protos_current() -> bool:
    """xds-protos ships its own, older opentelemetry/proto/ files, and whichever package pip installs last
    wins; the exporters need opentelemetry-proto's (InstrumentationScope is missing from the old ones)."""
    from opentelemetry.proto.common.v1 import common_pb2

    return hasattr(common_pb2, "InstrumentationScope")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _otlp_endpoint(value: object, key: str, protocol: str) -> str:
    text = non_empty_string(value, key)
    shown = repr(redact_url(text))  # errors are printed and logged; a URL may carry a password
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port  # raises ValueError when not a number from 0 to 65535
    except ValueError as e:
        raise Invalid(key, f"invalid URL {shown}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(key, f"must be an http:// or https:// URL with a host, e.g. 'http://otel:4317', got {shown}")
    if port == 0:
        raise Invalid(key, f"port must be from 1 to 65535, got {shown}")
    if parts.query or parts.fragment:
        raise Invalid(key, f"must not have a query or fragment, got {shown}")
    if protocol == "grpc":
        if parts.path not in ("", "/"):
            raise Invalid(key, f"an OTLP/gRPC endpoint has no path (protocol grpc), got {shown}")
        return text
    if parts.path in ("", "/"):
        return urllib.parse.urlunsplit(parts._replace(path=OTLP_HTTP_TRACES_PATH))
    return text


def _ratio(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise Invalid(key, f"must be a number from 0 to 1, got {describe(value)}")
    return float(value)


def _http_status(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
        raise Invalid(key, f"must be an HTTP status from 200 to 599, got {describe(value)}")
    return value


def _retries(value: object, key: str) -> int:
    retries = non_negative_int(value, key)
    if retries > MAX_RETRIES:
        raise Invalid(key, f"must be at most {MAX_RETRIES}, got {retries}")
    return retries


def _breaker(value: object, key: str) -> BreakerConfig:
    return BreakerConfig(**section(value, key, _BREAKER_KEYS))


def _plugin_name(value: object, key: str) -> str:
    name = string(value, key)
    if not _NAME_RE.fullmatch(name):
        raise Invalid(
            key,
            f"must start with a letter or digit and contain only letters, digits, '_', '.' and '-', got {name!r}",
        )
    return name


def _execution_points(value: object, key: str) -> frozenset[Phase]:
    points = string_list(
        value,
        key,
        choice(PHASE_NAMES),
        empty_hint="omit it to run at every execution point the plugin declares or exports",
    )
    return frozenset(Phase.named(p) for p in points)


def _match(value: object, key: str) -> MatchRules:
    return MatchRules(**section(value, key, _MATCH_KEYS))


def _path_prefix(value: object, key: str) -> str:
    prefix = string(value, key)
    if not prefix.startswith("/"):
        raise Invalid(key, f"must start with '/', got {prefix!r}")
    return prefix


def _regex(value: object, key: str) -> re.Pattern[str]:
    text = string(value, key)
    try:
        return re.compile(text)
    except re.error as e:
        raise Invalid(key, f"invalid regular expression {text!r}: {e}") from None


def _hosts(value: object, key: str) -> tuple[str, ...]:
    return string_list(value, key, _host_pattern, empty_hint="omit it to match any host")


def _allowed_hosts(value: object, key: str) -> tuple[str, ...]:
    return string_list(value, key, _host_pattern, empty_hint="omit it to keep the plugin off the network")


def _host_pattern(value: object, key: str) -> str:
    host = string(value, key).lower()
    if not _HOST_PATTERN_RE.fullmatch(host):
        raise Invalid(key, f"must be a host name without a port, optionally starting with '*.', got {host!r}")
    return host


def _methods(value: object, key: str) -> frozenset[str]:
    return frozenset(string_list(value, key, _method, empty_hint="omit it to match any method"))


def _method(value: object, key: str) -> str:
    method = string(value, key)
    if not _TOKEN_RE.fullmatch(method):
        raise Invalid(key, f"must be an HTTP method name, got {method!r}")
    return method.upper()


def _header_rules(value: object, key: str) -> tuple[HeaderRule, ...]:
    return tuple(_header_rule(item, f"{key}[{i}]") for i, item in enumerate(as_list(value, key)))


def _header_rule(value: object, key: str) -> HeaderRule:
    values = section(value, key, _HEADER_RULE_KEYS, required=("name",))
    if ("present" in values) == ("equals" in values):
        raise Invalid(key, "needs exactly one of 'present' and 'equals'")
    return HeaderRule(**values)


def _header_name(value: object, key: str) -> str:
    """Lower case, as the server holds header names."""
    name = string(value, key)
    if not _TOKEN_RE.fullmatch(name):
        raise Invalid(key, f"must be an HTTP header name, got {name!r}")
    return name.lower()


# --- the tables: each section's keys and their parsers (docs/configuration.md documents every key) -------

_TOP_KEYS: Final[Table] = {"server": _server, "plugins": _plugins, "state": _state, "tracing": _tracing}
_SERVER_KEYS: Final[Table] = {
    "listen": _listen_address,  # fills listen_host and listen_port
    "plugin_threads": positive_int,
    "max_concurrent_streams": positive_int,
    "stream_idle_timeout_ms": non_negative_int,
    "inline_call_budget_us": non_negative_int,
    "log_level": choice(LOG_LEVELS),
    "max_body_bytes": positive_int,
    "shutdown_grace_ms": non_negative_int,
    "reload_poll_ms": non_negative_int,
    "drain_ms": non_negative_int,
    "admin_listen": _listen_address,
    "admin_token_file": _admin_token,  # fills admin_token
    "log_format": choice(LOG_FORMATS),
    "tls": _tls,
    "allow_plaintext_off_loopback": boolean,
    "outcome_metadata": boolean,
}
_TLS_KEYS: Final[Table] = {"cert_file": _existing_file, "key_file": _existing_file, "client_ca_file": _existing_file}
_PLUGIN_KEYS: Final[Table] = {
    "name": _plugin_name,
    "path": _existing_file,
    "config": json_mapping,
    "enabled": boolean,
    "execution_points": _execution_points,
    "timeout_ms": positive_int,
    "memory_limit_mb": positive_int,
    "encoding": enum_choice(Encoding),
    "pool_size": positive_int,
    "match": _match,
    "on_error": enum_choice(FailurePolicy),
    "error_status": _http_status,
    "retries": _retries,
    "circuit_breaker": _breaker,
    "allowed_hosts": _allowed_hosts,
    "max_http_response_bytes": positive_int,
    "state_failure": enum_choice(FailurePolicy),
    "max_output_bytes": positive_int,
    "candidate": _candidate,
}
_BREAKER_KEYS: Final[Table] = {"failures": non_negative_int, "cooldown_ms": positive_int}
# The mode decides which other keys apply (_candidate).
_CANDIDATE_KEYS: Final[Table] = {
    "path": _existing_file,
    "mode": None,
    "fraction": _ratio,
    "config": json_mapping,
    "key_header": _header_name,
    "on_error": enum_choice(FailurePolicy),
    "error_status": _http_status,
    "timeout_ms": positive_int,
    "memory_limit_mb": positive_int,
    "pool_size": positive_int,
    "circuit_breaker": _breaker,
}
_CANARY_ONLY_KEYS: Final = ("key_header", "on_error", "error_status")
_MATCH_KEYS: Final[Table] = {
    "path_prefix": _path_prefix,
    "path_regex": _regex,
    "hosts": _hosts,
    "methods": _methods,
    "headers": _header_rules,
}
_HEADER_RULE_KEYS: Final[Table] = {"name": _header_name, "present": boolean, "equals": string}
# Every key but backend applies to backend redis only (_state).
_STATE_KEYS: Final[Table] = {"backend": None, "url": _redis_url, "key_prefix": string, "timeout_ms": positive_int}
# The endpoint's form depends on the protocol (_tracing).
_TRACING_KEYS: Final[Table] = {
    "endpoint": None,
    "protocol": None,
    "service_name": non_empty_string,
    "sample_ratio": _ratio,
}
