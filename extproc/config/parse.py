"""Load the server's YAML configuration and validate it into the values of model.py.

Everything is checked up front so the request path never has to second-guess a setting, and every
problem becomes a ConfigError naming the file, the key path and what is wrong with the value.
An explicit ``null`` for an optional key means "use the default", so a section whose entries are all
commented out still loads.

Each section is a table at the end of this module, from key to the parser of its value (the parsers of
plain values are in extproc/validation.py): the table's keys are the ones the section allows, in the order
an error lists them, and a key left out takes the default of the dataclass field it fills.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
import urllib.parse
from collections.abc import Hashable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Final

import yaml

from extproc.config.model import (
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_RETRIES,
    OTLP_HTTP_TRACES_PATH,
    TRACING_PROTOCOLS,
    BreakerConfig,
    CandidateConfig,
    Config,
    Encoding,
    FailurePolicy,
    ListenAddress,
    PluginConfig,
    RolloutMode,
    ServerConfig,
    StateBackend,
    StateConfig,
    TlsConfig,
    TracingConfig,
)
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
)

# Far above any real configuration; it only stops a wrong path (a log file, a device) from being slurped.
MAX_CONFIG_BYTES: Final = 1024 * 1024

# What each protocol needs installed: the `otel` extra (pip install 'extism-extproc[otel]').
_TRACING_MODULES: Final = {
    "grpc": ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"),
    "http/protobuf": ("opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http.trace_exporter"),
}
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


def parse_listen_address(text: str, *, source: Path, key: str = "server.listen") -> ListenAddress:
    """A `host:port` given outside the file (a command-line flag), checked as server.listen is."""
    try:
        return _listen_address(text, key)
    except Invalid as e:
        raise ConfigError(source, e.key, e.reason) from None


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
