import json
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.config import (
    MAX_CONFIG_BYTES,
    CandidateConfig,
    Config,
    ConfigError,
    Encoding,
    FailurePolicy,
    HeaderRule,
    ListenAddress,
    MatchRules,
    PluginConfig,
    RolloutMode,
    ServerConfig,
    TlsConfig,
    load_config,
    parse_config,
    parse_listen_address,
)
from extproc.phases import Phase
from extproc.tls import PlaintextRefused, check_plaintext, is_loopback

FULL = """\
server:
  listen: "[::1]:6000"
  plugin_threads: 4
  max_concurrent_streams: 500
  stream_idle_timeout_ms: 60000
  inline_call_budget_us: 0
  log_level: debug
  max_body_bytes: 1024
plugins:
  - name: add-header
    path: plugins/add_header.wasm
    config: {header: x-a, nested: {list: [1, 2.5, true, null]}}
    enabled: false
    execution_points: [request_headers, response_headers]
    timeout_ms: 250
    memory_limit_mb: 32
    encoding: protobuf
    pool_size: 2
    match:
      path_prefix: /api
      path_regex: "^/v[0-9]+/"
      hosts: [Example.com, "*.example.org"]
      methods: [get, POST]
      headers:
        - {name: X-Debug, present: true}
        - {name: x-env, equals: prod}
  - name: minimal
    path: plugins/minimal.wasm
"""


def write(folder: Path, text: str, name: str = "extproc.yaml") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def wasm_dir(tmp_path: Path) -> Path:
    """Dummy modules: only their existence is checked while loading the config."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for name in ("add_header.wasm", "minimal.wasm", "a.wasm", "b.wasm"):
        (plugins / name).write_bytes(b"\0asm\1\0\0\0")
    return plugins


def test_full_config(tmp_path: Path, wasm_dir: Path) -> None:
    config = load_config(write(tmp_path, FULL))

    assert config == Config(
        server=ServerConfig(
            listen_host="::1",
            listen_port=6000,
            plugin_threads=4,
            max_concurrent_streams=500,
            stream_idle_timeout_ms=60_000,
            inline_call_budget_us=0,
            log_level="debug",
            max_body_bytes=1024,
        ),
        plugins=(
            PluginConfig(
                name="add-header",
                path=wasm_dir / "add_header.wasm",
                config={"header": "x-a", "nested": {"list": (1, 2.5, True, None)}},
                enabled=False,
                execution_points=frozenset({Phase.REQUEST_HEADERS, Phase.RESPONSE_HEADERS}),
                timeout_ms=250,
                memory_limit_mb=32,
                encoding=Encoding.PROTOBUF,
                pool_size=2,
                match=MatchRules(
                    path_prefix="/api",
                    path_regex=re.compile("^/v[0-9]+/"),
                    hosts=("example.com", "*.example.org"),
                    methods=frozenset({"GET", "POST"}),
                    headers=(
                        HeaderRule(name="x-debug", present=True),
                        HeaderRule(name="x-env", equals="prod"),
                    ),
                ),
            ),
            PluginConfig(name="minimal", path=wasm_dir / "minimal.wasm"),
        ),
        source=tmp_path / "extproc.yaml",
    )
    assert config.server.listen_address == "[::1]:6000"


def test_defaults(tmp_path: Path, wasm_dir: Path) -> None:
    config = load_config(write(tmp_path, "plugins:\n  - {name: a, path: plugins/a.wasm}\n"))

    assert config.server == ServerConfig("127.0.0.1", 50051)
    assert (config.server.plugin_threads, config.server.max_concurrent_streams) == (32, 10_000)
    assert (config.server.stream_idle_timeout_ms, config.server.inline_call_budget_us) == (300_000, 1000)
    assert (config.server.log_level, config.server.max_body_bytes) == ("info", 8 * 1024 * 1024)
    assert config.server.listen_address == "127.0.0.1:50051"
    [plugin] = config.plugins
    assert plugin.config == {}
    assert plugin.enabled is True
    assert plugin.execution_points is None
    assert (plugin.timeout_ms, plugin.memory_limit_mb, plugin.pool_size) == (100, None, None)
    assert plugin.memory_limit(config.server.max_body_bytes) == 40
    assert plugin.encoding is Encoding.JSON
    assert plugin.match.is_empty


@pytest.mark.parametrize(
    ("max_body_bytes", "memory_limit_mb", "limit"),
    [
        (8 * 1024 * 1024, None, 40),  # the defaults: four times the body plus 8 MiB
        (1, None, 12),  # a body under a MiB counts as one
        (1024 * 1024 + 1, None, 16),
        (64 * 1024 * 1024, None, 264),
        (64 * 1024 * 1024, 16, 16),  # what the plugin's entry says wins, even when it is too small
    ],
)
def test_memory_limit_defaults_to_room_for_the_largest_body(
    tmp_path: Path, wasm_dir: Path, max_body_bytes: int, memory_limit_mb: int | None, limit: int
) -> None:
    entry = "{name: a, path: plugins/a.wasm" + (
        "" if memory_limit_mb is None else f", memory_limit_mb: {memory_limit_mb}"
    )
    text = f"server: {{max_body_bytes: {max_body_bytes}}}\nplugins:\n  - {entry}}}\n"
    config = load_config(write(tmp_path, text))
    assert config.plugins[0].memory_limit(config.server.max_body_bytes) == limit


def test_null_means_default(tmp_path: Path, wasm_dir: Path) -> None:
    text = "server:\nplugins:\n  - {name: a, path: plugins/a.wasm, config: null, timeout_ms: ~, match:}\n"
    config = load_config(write(tmp_path, text))

    assert config.server == ServerConfig()
    assert config.plugins == (PluginConfig(name="a", path=wasm_dir / "a.wasm"),)


def test_empty_plugin_list(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "plugins: []\n")).plugins == ()


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, wasm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = write(tmp_path / "etc", "plugins:\n  - {name: a, path: ../plugins/./a.wasm}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    config = load_config(config_file)

    assert config.plugins[0].path == wasm_dir / "a.wasm"
    assert config.plugins[0].path.is_absolute()


def test_relative_config_path_is_made_absolute(tmp_path: Path, wasm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "plugins:\n  - {name: a, path: plugins/a.wasm}\n")
    monkeypatch.chdir(tmp_path)

    config = load_config(Path("extproc.yaml"))

    assert config.source == tmp_path / "extproc.yaml"
    assert config.plugins[0].path == wasm_dir / "a.wasm"


def test_absolute_plugin_path(tmp_path: Path, wasm_dir: Path) -> None:
    config_file = write(tmp_path / "etc", f"plugins:\n  - {{name: a, path: '{wasm_dir / 'a.wasm'}'}}\n")

    assert load_config(config_file).plugins[0].path == wasm_dir / "a.wasm"


def test_plugin_config_is_read_only_and_json_serialisable(tmp_path: Path, wasm_dir: Path) -> None:
    plugin = load_config(write(tmp_path, FULL)).plugins[0]

    with pytest.raises(TypeError):
        plugin.config["header"] = "changed"  # type: ignore[index]
    assert json.loads(plugin.config_json()) == {"header": "x-a", "nested": {"list": [1, 2.5, True, None]}}
    assert PluginConfig(name="m", path=wasm_dir / "minimal.wasm").config_json() == "{}"
    assert len({plugin, plugin}) == 1  # hashable despite the mapping


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), JSON, max_size=5))
def test_any_json_plugin_config_round_trips(data: dict[str, object]) -> None:
    # parse_config checks the wasm file, so point at a file that always exists.
    plugin_data = {"name": "p", "path": __file__, "config": data}
    plugin = parse_config({"plugins": [plugin_data]}, Path("/config.yaml")).plugins[0]

    assert json.loads(plugin.config_json()) == data


def test_error_str_and_attributes(tmp_path: Path) -> None:
    path = write(tmp_path, "plugins: []\nserver: {plugin_threads: -5}\n")

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert (info.value.file, info.value.key) == (path, "server.plugin_threads")
    assert info.value.reason == "must be a positive integer, got -5"
    assert str(info.value) == f"{path}: server.plugin_threads: must be a positive integer, got -5"
    assert isinstance(info.value, ValueError)


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "plugins:\n  - name: a\n    path: a.wasm\n      timeout_ms: 5\n")

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert (info.value.line, info.value.column) == (4, 17)
    assert str(info.value) == f"{path}:4:17: invalid YAML: mapping values are not allowed here"


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "plugins: []\nserver: {plugin_threads: 1}\nserver: {plugin_threads: 2}\n")

    with pytest.raises(ConfigError, match=r":3:1: invalid YAML: duplicate key 'server'"):
        load_config(path)


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path, wasm_dir: Path) -> None:
    text = "plugins:\n  - &a {name: a, path: plugins/a.wasm, timeout_ms: 5}\n  - {<<: *a, name: b}\n"

    plugins = load_config(write(tmp_path, text)).plugins

    assert [(p.name, p.timeout_ms) for p in plugins] == [("a", 5), ("b", 5)]


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_config(tmp_path / "nope.yaml")
    assert info.value.key == ""


def test_config_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path)


def test_oversized_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "plugins: []\n" + "#" * MAX_CONFIG_BYTES)

    with pytest.raises(ConfigError, match="larger than"):
        load_config(path)


def plugin(extra: str = "", name: str = "a") -> str:
    return f"plugins:\n  - name: {name}\n    path: plugins/a.wasm\n" + textwrap.indent(extra, "    ")


BAD = [
    ("top level is a list", "- plugins\n", "", "must be a mapping, got a list"),
    ("empty file", "", "", "must be a mapping, got null"),
    ("plugins missing", "server: {}\n", "plugins", "required key is missing"),
    ("plugins not a list", "plugins: {}\n", "plugins", "must be a list, got a mapping"),
    ("unknown top-level key", "plugins: []\nserverr: {}\n", "serverr", "did you mean 'server'?"),
    ("unknown key, no suggestion", "plugins: []\nzzz: 1\n", "zzz", "unknown key 'zzz'. Allowed keys: server"),
    (
        "unknown plugin key",
        plugin("timeout: 5\n"),
        "plugins[0].timeout",
        "unknown key 'timeout'; did you mean 'timeout_ms'? Allowed keys: name, path, config,",
    ),
    ("plugin not a mapping", "plugins: [a.wasm]\n", "plugins[0]", "must be a mapping, got 'a.wasm'"),
    ("string timeout", plugin("timeout_ms: '100'\n"), "plugins[0].timeout_ms", "positive integer, got '100'"),
    ("bool timeout", plugin("timeout_ms: true\n"), "plugins[0].timeout_ms", "got true (boolean)"),
    ("float timeout", plugin("timeout_ms: 1.5\n"), "plugins[0].timeout_ms", "positive integer, got 1.5"),
    ("negative timeout", plugin("timeout_ms: -5\n"), "plugins[0].timeout_ms", "positive integer, got -5"),
    ("zero timeout", plugin("timeout_ms: 0\n"), "plugins[0].timeout_ms", "positive integer, got 0"),
    ("negative memory", plugin("memory_limit_mb: -1\n"), "plugins[0].memory_limit_mb", "got -1"),
    ("bad on_error", plugin("on_error: ignore\n"), "plugins[0].on_error", "must be one of fail_open, fail_closed"),
    ("status too high", plugin("error_status: 700\n"), "plugins[0].error_status", "from 200 to 599, got 700"),
    ("too many retries", plugin("retries: 9\n"), "plugins[0].retries", "at most 5, got 9"),
    ("negative retries", plugin("retries: -1\n"), "plugins[0].retries", "non-negative integer"),
    (
        "unknown breaker key",
        plugin("circuit_breaker: {failure: 3}\n"),
        "plugins[0].circuit_breaker.failure",
        "did you mean 'failures'",
    ),
    (
        "zero cooldown",
        plugin("circuit_breaker: {cooldown_ms: 0}\n"),
        "plugins[0].circuit_breaker.cooldown_ms",
        "positive",
    ),
    ("negative grace", "server: {shutdown_grace_ms: -1}\nplugins: []\n", "server.shutdown_grace_ms", "non-negative"),
    ("zero memory", plugin("memory_limit_mb: 0\n"), "plugins[0].memory_limit_mb", "got 0"),
    ("zero pool", plugin("pool_size: 0\n"), "plugins[0].pool_size", "got 0"),
    ("zero output cap", plugin("max_output_bytes: 0\n"), "plugins[0].max_output_bytes", "got 0"),
    ("text output cap", plugin("max_output_bytes: 1MiB\n"), "plugins[0].max_output_bytes", "'1MiB'"),
    ("float output cap", plugin("max_output_bytes: 1.5\n"), "plugins[0].max_output_bytes", "1.5"),
    ("zero threads", "server: {plugin_threads: 0}\nplugins: []\n", "server.plugin_threads", "got 0"),
    ("zero streams", "server: {max_concurrent_streams: 0}\nplugins: []\n", "server.max_concurrent_streams", "got 0"),
    (
        "negative idle limit",
        "server: {stream_idle_timeout_ms: -1}\nplugins: []\n",
        "server.stream_idle_timeout_ms",
        "non-negative",
    ),
    ("float budget", "server: {inline_call_budget_us: 0.5}\nplugins: []\n", "server.inline_call_budget_us", "0.5"),
    (
        "thread per stream is gone",
        "server: {grpc_threads: 16}\nplugins: []\n",
        "server.grpc_threads",
        "no longer used: streams hold no thread",
    ),
    ("bool body limit", "server: {max_body_bytes: no}\nplugins: []\n", "server.max_body_bytes", "false"),
    ("string enabled", plugin("enabled: 'yes'\n"), "plugins[0].enabled", "must be true or false, got 'yes'"),
    ("list for config", plugin("config: [1]\n"), "plugins[0].config", "must be a mapping, got a list"),
    ("non-string config key", plugin("config: {1: a}\n"), "plugins[0].config", "keys must be strings, got 1"),
    ("date in config", plugin("config: {a: [2024-01-01]}\n"), "plugins[0].config.a[0]", "quote it"),
    ("nan in config", plugin("config: {a: .nan}\n"), "plugins[0].config.a", "must be a finite number"),
    ("missing name", "plugins:\n  - path: plugins/a.wasm\n", "plugins[0].name", "required key is missing"),
    ("missing path", "plugins:\n  - name: a\n", "plugins[0].path", "required key is missing"),
    (
        "number name",
        "plugins:\n  - {name: 7, path: a}\n",
        "plugins[0].name",
        "must be a string, got 7; quote it",
    ),
    ("empty path", "plugins:\n  - {name: a, path: ''}\n", "plugins[0].path", "must not be empty"),
    # null stands for the default, and a required key has none.
    ("null path", "plugins:\n  - {name: a, path: null}\n", "plugins[0].path", "must be a string, got null"),
    (
        "null header name",
        plugin("match: {headers: [{name: ~, present: true}]}\n"),
        "plugins[0].match.headers[0].name",
        "must be a string, got null",
    ),
    (
        "missing wasm",
        "plugins:\n  - {name: a, path: nope.wasm}\n",
        "plugins[0].path",
        "file not found: {tmp}/nope.wasm",
    ),
    (
        "wasm is a folder",
        "plugins:\n  - {name: a, path: plugins}\n",
        "plugins[0].path",
        "not a file: {tmp}/plugins",
    ),
    (
        "duplicate name",
        "plugins:\n" + "".join(f"  - {{name: {n}, path: plugins/a.wasm}}\n" for n in "aba"),
        "plugins[2].name",
        "duplicate plugin name 'a' (already used by plugins[0])",
    ),
    ("name with space", plugin(name="'a b'"), "plugins[0].name", "got 'a b'"),
    ("name starting with dash", plugin(name="'-a'"), "plugins[0].name", "must start with a letter or digit"),
    (
        "unknown execution point",
        plugin("execution_points: [request_headers, request_header]\n"),
        "plugins[0].execution_points[1]",
        "got 'request_header'; did you mean 'request_headers'?",
    ),
    (
        "duplicate execution point",
        plugin("execution_points: [request_headers, request_headers]\n"),
        "plugins[0].execution_points[1]",
        "duplicate value 'request_headers' (same as plugins[0].execution_points[0])",
    ),
    (
        "no execution points",
        plugin("execution_points: []\n"),
        "plugins[0].execution_points",
        "must not be empty",
    ),
    (
        "bad encoding",
        plugin("encoding: xml\n"),
        "plugins[0].encoding",
        "must be one of json, protobuf, got 'xml'",
    ),
    (
        "unknown match key",
        plugin("match: {method: [GET]}\n"),
        "plugins[0].match.method",
        "did you mean 'methods'?",
    ),
    (
        "relative prefix",
        plugin("match: {path_prefix: api}\n"),
        "plugins[0].match.path_prefix",
        "start with '/'",
    ),
    (
        "bad regex",
        plugin("match: {path_regex: '(['}\n"),
        "plugins[0].match.path_regex",
        "invalid regular expression '([': unterminated character set at position 1",
    ),
    (
        "host with port",
        plugin("match: {hosts: ['a.com:80']}\n"),
        "plugins[0].match.hosts[0]",
        "without a port",
    ),
    ("inner wildcard", plugin("match: {hosts: ['a.*.com']}\n"), "plugins[0].match.hosts[0]", "got 'a.*.com'"),
    ("empty hosts", plugin("match: {hosts: []}\n"), "plugins[0].match.hosts", "omit it to match any host"),
    ("bad method", plugin("match: {methods: ['GE T']}\n"), "plugins[0].match.methods[0]", "HTTP method"),
    ("duplicate method", plugin("match: {methods: [get, GET]}\n"), "plugins[0].match.methods[1]", "'GET'"),
    (
        "header rule with present and equals",
        plugin("match: {headers: [{name: x, present: true, equals: v}]}\n"),
        "plugins[0].match.headers[0]",
        "needs exactly one of 'present' and 'equals'",
    ),
    (
        "header rule with neither",
        plugin("match: {headers: [{name: x}]}\n"),
        "plugins[0].match.headers[0]",
        "needs exactly one of",
    ),
    (
        "header rule with number",
        plugin("match: {headers: [{name: x, equals: 1}]}\n"),
        "plugins[0].match.headers[0].equals",
        "must be a string, got 1; quote it",
    ),
    (
        "bad header name",
        plugin("match: {headers: [{name: 'x y', present: true}]}\n"),
        "plugins[0].match.headers[0].name",
        "header name",
    ),
    (
        "listen without port",
        "server: {listen: localhost}\nplugins: []\n",
        "server.listen",
        "must be 'host:port'",
    ),
    (
        "listen as number",
        "server: {listen: 50051}\nplugins: []\n",
        "server.listen",
        "must be a string, got 50051",
    ),
    (
        "listen bare IPv6",
        "server: {listen: '::1:50051'}\nplugins: []\n",
        "server.listen",
        "must be bracketed",
    ),
    (
        "listen bad IPv6",
        "server: {listen: '[zz]:1'}\nplugins: []\n",
        "server.listen",
        "'zz' is not an IPv6 address",
    ),
    ("listen port too big", "server: {listen: 'h:65536'}\nplugins: []\n", "server.listen", "got '65536'"),
    ("listen empty port", "server: {listen: 'h:'}\nplugins: []\n", "server.listen", "0 to 65535, got ''"),
    ("listen bad host", "server: {listen: 'a b:1'}\nplugins: []\n", "server.listen", "invalid host 'a b'"),
    (
        "bad log level",
        "server: {log_level: verbose}\nplugins: []\n",
        "server.log_level",
        "must be one of debug, info, warning, error, got 'verbose'",
    ),
    ("bad log format", "server: {log_format: yaml}\nplugins: []\n", "server.log_format", "one of text, json"),
    ("negative drain", "server: {drain_ms: -1}\nplugins: []\n", "server.drain_ms", "non-negative integer"),
    (
        "plaintext off loopback",
        "server: {listen: '0.0.0.0:50051'}\nplugins: []\n",
        "server.listen",
        "plaintext gRPC (no server.tls) would listen on 0.0.0.0:50051, which is not loopback",
    ),
    (
        "admin off loopback",
        "server: {admin_listen: '[::]:9000'}\nplugins: []\n",
        "server.admin_listen",
        "the admin endpoint (plain HTTP) would listen on [::]:9000",
    ),
    ("bad admin address", "server: {admin_listen: 9000}\nplugins: []\n", "server.admin_listen", "must be a string"),
    (
        "plaintext permission not boolean",
        "server: {allow_plaintext_off_loopback: 'yes'}\nplugins: []\n",
        "server.allow_plaintext_off_loopback",
        "must be true or false",
    ),
    ("tls without key", "server: {tls: {cert_file: plugins/a.wasm}}\nplugins: []\n", "server.tls.key_file", "missing"),
    (
        "tls cert not found",
        "server: {tls: {cert_file: cert.pem, key_file: plugins/a.wasm}}\nplugins: []\n",
        "server.tls.cert_file",
        "file not found: {tmp}/cert.pem",
    ),
    (
        "tls unknown key",
        "server: {tls: {cert: a, key_file: b}}\nplugins: []\n",
        "server.tls.cert",
        "did you mean 'cert_file'",
    ),
    ("state not a mapping", "state: redis\nplugins: []\n", "state", "must be a mapping, got 'redis'"),
    ("state unknown key", "state: {backend: redis, uri: x}\nplugins: []\n", "state.uri", "did you mean 'url'"),
    ("state bad backend", "state: {backend: mysql}\nplugins: []\n", "state.backend", "must be one of memory, redis"),
    ("redis without url", "state: {backend: redis}\nplugins: []\n", "state.url", "required when backend is 'redis'"),
    (
        "url with the memory backend",
        "state: {url: 'redis://127.0.0.1'}\nplugins: []\n",
        "state.url",
        "applies only to backend 'redis'",
    ),
    (
        "redis url scheme",
        "state: {backend: redis, url: 'http://127.0.0.1:6379'}\nplugins: []\n",
        "state.url",
        "must start with redis://, rediss://, unix://",
    ),
    ("redis url no host", "state: {backend: redis, url: 'redis://'}\nplugins: []\n", "state.url", "needs a host"),
    ("redis url bad port", "state: {backend: redis, url: 'redis://h:99999'}\nplugins: []\n", "state.url", "range"),
    (
        "redis timeout zero",
        "state: {backend: redis, url: 'redis://h', timeout_ms: 0}\nplugins: []\n",
        "state.timeout_ms",
        "must be a positive integer, got 0",
    ),
    (
        "key prefix not a string",
        "state: {backend: redis, url: 'redis://h', key_prefix: 7}\nplugins: []\n",
        "state.key_prefix",
        "must be a string, got 7; quote it",
    ),
    (
        "state_failure value",
        plugin("state_failure: ignore\n"),
        "plugins[0].state_failure",
        "must be one of fail_open, fail_closed, got 'ignore'",
    ),
    (
        "http response limit",
        plugin("max_http_response_bytes: -1\n"),
        "plugins[0].max_http_response_bytes",
        "must be a positive integer",
    ),
    ("candidate not a mapping", plugin("candidate: b.wasm\n"), "plugins[0].candidate", "must be a mapping"),
    ("candidate without path", plugin("candidate: {fraction: 0.1}\n"), "plugins[0].candidate.path", "required"),
    (
        "candidate without fraction",
        plugin("candidate: {path: plugins/b.wasm}\n"),
        "plugins[0].candidate.fraction",
        "required key is missing",
    ),
    (
        "candidate file missing",
        plugin("candidate: {path: plugins/v2.wasm, fraction: 0.1}\n"),
        "plugins[0].candidate.path",
        "file not found",
    ),
    (
        "candidate fraction above 1",
        plugin("candidate: {path: plugins/b.wasm, fraction: 10}\n"),
        "plugins[0].candidate.fraction",
        "must be a number from 0 to 1, got 10",
    ),
    (
        "candidate fraction as percent string",
        plugin("candidate: {path: plugins/b.wasm, fraction: '10%'}\n"),
        "plugins[0].candidate.fraction",
        "must be a number from 0 to 1, got '10%'",
    ),
    (
        "candidate mode misspelt",
        plugin("candidate: {path: plugins/b.wasm, fraction: 0.1, mode: canery}\n"),
        "plugins[0].candidate.mode",
        "must be one of shadow, canary, got 'canery'; did you mean 'canary'?",
    ),
    (
        "candidate key misspelt",
        plugin("candidate: {path: plugins/b.wasm, fraction: 0.1, key_heder: x-user}\n"),
        "plugins[0].candidate.key_heder",
        "did you mean 'key_header'?",
    ),
    (
        "shadow with a failure policy",
        plugin("candidate: {path: plugins/b.wasm, fraction: 0.1, on_error: fail_open}\n"),
        "plugins[0].candidate.on_error",
        "applies only to mode 'canary': a shadow never serves a request",
    ),
    (
        "shadow with a key header",
        plugin("candidate: {path: plugins/b.wasm, fraction: 0.1, mode: shadow, key_header: x-user}\n"),
        "plugins[0].candidate.key_header",
        "applies only to mode 'canary'",
    ),
    (
        "canary key header not a name",
        plugin("candidate: {path: plugins/b.wasm, fraction: 0.1, mode: canary, key_header: 'x user'}\n"),
        "plugins[0].candidate.key_header",
        "must be an HTTP header name, got 'x user'",
    ),
    (
        "candidate zero timeout",
        plugin("candidate: {path: plugins/b.wasm, fraction: 0.1, timeout_ms: 0}\n"),
        "plugins[0].candidate.timeout_ms",
        "must be a positive integer, got 0",
    ),
    (
        "candidate breaker key misspelt",
        plugin("candidate: {path: plugins/b.wasm, fraction: 0.1, circuit_breaker: {failure: 1}}\n"),
        "plugins[0].candidate.circuit_breaker.failure",
        "did you mean 'failures'",
    ),
    (
        "outcome metadata not a boolean",
        "server: {outcome_metadata: 'yes'}\nplugins: []\n",
        "server.outcome_metadata",
        "must be true or false, got 'yes'",
    ),
]


def test_a_candidate_takes_the_live_settings_it_does_not_set(tmp_path: Path, wasm_dir: Path) -> None:
    text = plugin(
        "candidate:\n"
        "  path: plugins/b.wasm\n"
        "  mode: canary\n"
        "  fraction: 0.25\n"
        "  key_header: X-User\n"
        "  on_error: fail_open\n"
        "  config: {greeting: hi}\n"
    )
    candidate = load_config(write(tmp_path, text)).plugins[0].candidate
    assert candidate == CandidateConfig(
        path=wasm_dir / "b.wasm",
        fraction=0.25,
        mode=RolloutMode.CANARY,
        config={"greeting": "hi"},
        key_header="x-user",
        on_error=FailurePolicy.FAIL_OPEN,
    )
    assert load_config(write(tmp_path, plugin())).plugins[0].candidate is None


@pytest.mark.parametrize(("text", "key", "fragment"), [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_config(tmp_path: Path, wasm_dir: Path, text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))

    assert info.value.key == key
    assert fragment.format(tmp=tmp_path) in info.value.reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:50051", ListenAddress("127.0.0.1", 50051)),
        ("localhost:0", ListenAddress("localhost", 0)),
        ("[::]:8080", ListenAddress("::", 8080)),
        ("[fe80::1%eth0]:1", ListenAddress("fe80::1%eth0", 1)),
    ],
    ids=["ipv4", "localhost-port-0", "v6-any", "v6-zone"],
)
def test_listen_address_parse(text: str, expected: ListenAddress) -> None:
    address = parse_listen_address(text, source=Path("cli"))

    assert address == expected
    assert str(address) == text


def test_listen_address_parse_error_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^--listen: --listen: port must be"):
        parse_listen_address("host:port", source=Path("--listen"), key="--listen")


def test_tls_and_off_loopback_permission(tmp_path: Path, wasm_dir: Path) -> None:
    text = """\
server:
  listen: "0.0.0.0:50051"
  admin_listen: "127.0.0.1:9000"
  log_format: json
  drain_ms: 500
  tls: {cert_file: plugins/a.wasm, key_file: plugins/b.wasm, client_ca_file: plugins/minimal.wasm}
plugins: []
"""
    server = load_config(write(tmp_path, text)).server

    assert server.tls == TlsConfig(wasm_dir / "a.wasm", wasm_dir / "b.wasm", wasm_dir / "minimal.wasm")
    assert (server.admin_listen, server.log_format, server.drain_ms) == (ListenAddress("127.0.0.1", 9000), "json", 500)
    # TLS covers gRPC, not the admin endpoint, which stays plain HTTP.
    with pytest.raises(PlaintextRefused):
        check_plaintext(server, ListenAddress("10.0.0.1", 9000), tls_applies=False)
    allowed = "server: {listen: '10.1.2.3:1', admin_listen: '[::]:2', allow_plaintext_off_loopback: true}\nplugins: []"
    assert load_config(write(tmp_path, allowed)).server.admin_listen == ListenAddress("::", 2)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


GOOD_TOKEN = b"0123456789abcdef0123"


def test_admin_token_file_is_read_and_kept_out_of_repr(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_bytes(GOOD_TOKEN + b"\n")
    config = load_config(write(tmp_path, "server: {admin_token_file: admin.token}\nplugins: []\n"))
    assert config.server.admin_token == GOOD_TOKEN.decode()
    assert GOOD_TOKEN.decode() not in repr(config)
    assert load_config(write(tmp_path, "plugins: []\n")).server.admin_token is None


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "file not found"),
        (b"", "printable ASCII"),
        (b"\n\n", "printable ASCII"),
        (b"0123456789abcdef 0123456789abcdef", "without spaces"),
        (b"0123456789abcdef\n0123456789abcdef", "without spaces"),
        ("0123456789abcdefé".encode(), "printable ASCII"),
        (b"short-token", "11 characters, fewer than 16"),
        (b"x" * 5000, "larger than 4096 bytes"),
        (7, "must be a string"),
    ],
    ids=["missing", "empty", "blank", "space", "two-lines", "non-ascii", "short", "huge", "not-a-path"],
)
def test_bad_admin_token_file(tmp_path: Path, content: bytes | int | None, fragment: str) -> None:
    value = content if isinstance(content, int) else "admin.token"
    if isinstance(content, bytes):
        (tmp_path / "admin.token").write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"server: {{admin_token_file: {value}}}\nplugins: []\n"))
    assert info.value.key == "server.admin_token_file"
    assert fragment in info.value.reason
    assert "0123456789abcdef" not in str(info.value)  # the file's content is the secret
