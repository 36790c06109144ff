"""`extproc envoy-config`: processing mode, route plan, cluster; generated configs pass `envoy --mode validate`."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from google.protobuf import json_format

from extproc import cli
from extproc.config import Config, ConfigError, parse_config
from extproc.deploy import envoy_config as ec
from extproc.deploy.demo import DemoPorts, demo_bootstrap
from support.bootstrap import render_bootstrap
from support.envoy import envoy_argv, envoy_validate
from support.processes import ManagedProcess, free_port, wait_for_http_ready, wait_for_port
from tests.e2e.harness import request, start_upstream

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "envoy" / "demo"
GENERATED = sorted(REPO.glob("envoy/*/envoy-*.yaml"))


def make_config(tmp_path: Path, *plugins: dict[str, Any], server: dict[str, Any] | None = None) -> Config:
    data: dict[str, Any] = {"plugins": list(plugins)}
    if server is not None:
        data["server"] = server
    return parse_config(data, tmp_path / "extproc.yaml")


def plugin(wasm: Path, name: str = "p", **fields: Any) -> dict[str, Any]:
    return {"name": name, "path": str(wasm), **fields}


def options(**overrides: Any) -> ec.Options:
    return ec.Options(servers=(ec.Endpoint("127.0.0.1", 50051),), **overrides)


PROXY = ec.Proxy(
    listen=ec.Endpoint("127.0.0.1", 10000),
    admin=ec.Endpoint("127.0.0.1", 9901),
    upstream=ec.Endpoint("127.0.0.1", 8080),
)


def validate_document(tmp_path: Path, document: dict[str, Any], fmt: str = "yaml") -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"bootstrap.{fmt}"
    path.write_text(ec.render(document, fmt))
    return envoy_validate(path)


def assert_valid(tmp_path: Path, document: dict[str, Any], fmt: str = "yaml") -> None:
    result = validate_document(tmp_path, document, fmt)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def ext_proc_typed_config(document: dict[str, Any]) -> dict[str, Any]:
    hcm = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    filters: list[dict[str, Any]] = hcm["http_filters"]
    typed: dict[str, Any] = next(f["typed_config"] for f in filters if f["name"] == ec.EXT_PROC_FILTER)
    return typed


def vhost_routes(document: dict[str, Any]) -> list[dict[str, Any]]:
    hcm = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    found: list[dict[str, Any]] = hcm["route_config"]["virtual_hosts"][0]["routes"]
    return found


def parse_message(typed: dict[str, Any], message: Any) -> Any:
    # Parsing with the xds-protos message catches misspelled fields without an Envoy.
    fields = {k: v for k, v in typed.items() if k != "@type"}
    return json_format.ParseDict(fields, message)


# --- route plan ---------------------------------------------------------------------------------------


def test_plugin_without_path_rule_sends_everything(plugin_dir: Path, tmp_path: Path) -> None:
    wasm = plugin_dir / "transform.wasm"
    config = make_config(
        tmp_path,
        plugin(wasm, "a", match={"path_prefix": "/a"}),
        plugin(wasm, "b", match={"hosts": ["api.example.org"], "methods": ["POST"]}),
    )
    plan = ec.plan_routes(config.plugins)
    assert plan.everything
    assert "'b'" in plan.reason
    routes = ec.routes(plan, "up")
    assert routes == [{"name": "extproc", "match": {"prefix": "/"}, "route": {"cluster": "up"}}]


def test_prefixes_route_through_and_catch_all_bypasses(plugin_dir: Path, tmp_path: Path) -> None:
    wasm = plugin_dir / "transform.wasm"
    config = make_config(
        tmp_path,
        plugin(wasm, "a", match={"path_prefix": "/api/v1"}),
        plugin(wasm, "b", match={"path_prefix": "/api", "methods": ["GET"]}),
        plugin(wasm, "c", match={"path_prefix": "/static/", "path_regex": r"\.js$"}),
        plugin(wasm, "off", enabled=False),  # matches everything, but is not running
    )
    plan = ec.plan_routes(config.plugins)
    assert plan == ec.RoutePlan(everything=False, prefixes=("/api", "/static/"))
    routes = ec.routes(plan, "up")
    assert [r["match"] for r in routes] == [{"prefix": "/api"}, {"prefix": "/static/"}, {"prefix": "/"}]
    # The filter is off by default; the plugins' routes switch it on, the catch-all does not.
    for route in routes[:-1]:
        per_route = route["typed_per_filter_config"][ec.EXT_PROC_FILTER]
        assert not parse_message(per_route, ext_proc_pb2.ExtProcPerRoute()).disabled
    assert "typed_per_filter_config" not in routes[-1]
    [http_filter] = ec.fragment(config, ec.phase_needs(config), options())["http_filters"]
    assert http_filter["disabled"] is True


def test_regex_plugins_become_safe_regex_routes(plugin_dir: Path, tmp_path: Path) -> None:
    wasm = plugin_dir / "transform.wasm"
    config = make_config(tmp_path, plugin(wasm, "r", match={"path_regex": r"^/items/\d+$"}))
    plan = ec.plan_routes(config.plugins)
    assert plan == ec.RoutePlan(everything=False, regexes=(r".*(?:^/items/\d+$).*",))
    assert ec.routes(plan, "up")[0]["match"] == {"safe_regex": {"regex": r".*(?:^/items/\d+$).*"}}


def test_regex_re2_cannot_express_sends_everything(plugin_dir: Path, tmp_path: Path) -> None:
    config = make_config(tmp_path, plugin(plugin_dir / "transform.wasm", "r", match={"path_regex": "^/a(?!b)"}))
    plan = ec.plan_routes(config.plugins)
    assert plan.everything
    assert "negative lookahead" in plan.reason


def test_no_enabled_plugin_bypasses_everything(plugin_dir: Path, tmp_path: Path) -> None:
    config = make_config(tmp_path, plugin(plugin_dir / "transform.wasm", enabled=False))
    routes = ec.routes(ec.plan_routes(config.plugins), "up")
    assert [r["name"] for r in routes] == ["bypass"]


RE2_COMPATIBLE = [r"^/a/[0-9]+$", r"(?i)^/api", r"[(?=]x", r"\(?=", r"(?P<id>\d+)", r"(?:a|b)+", r"[]a]x", r"(?i:x)\\"]


@pytest.mark.parametrize("pattern", RE2_COMPATIBLE)
def test_re2_compatible_patterns(pattern: str) -> None:
    assert ec.re2_incompatibility(pattern) is None


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("(?=x)", "lookahead"),
        ("(?<!x)y", "lookbehind"),
        (r"(a)\1", "backreference"),
        ("(?P<n>a)(?P=n)", "backreference"),
        ("a*+", "possessive"),
        ("a{2}+", "possessive"),
        (r"/x\Z", r"\Z"),
        ("(?x) a b", "flags"),
        ("(?a)x", "flags"),
        ("(?>a)", "atomic"),
        ("(?#note)a", "comment"),
    ],
)
def test_re2_incompatible_patterns(pattern: str, problem: str) -> None:
    found = ec.re2_incompatibility(pattern)
    assert found is not None and problem in found


# --- filter and cluster -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wasm", "fields", "mode"),
    [
        (
            "scripted.wasm",
            {"execution_points": ["request_headers"]},
            ("SEND", "SKIP", "NONE", "NONE"),
        ),
        (
            "scripted.wasm",
            {"execution_points": ["response_headers"]},
            ("SEND", "SEND", "NONE", "NONE"),
        ),
        ("transform.wasm", {}, ("SEND", "SEND", "BUFFERED", "BUFFERED")),
        ("echo.wasm", {}, ("SEND", "SKIP", "NONE", "NONE")),
        # generate_response that wants the whole request body
        (
            "echo.wasm",
            {"execution_points": ["request_body", "generate_response"]},
            ("SEND", "SKIP", "BUFFERED", "NONE"),
        ),
    ],
    ids=["request-headers", "response-headers", "transform-bodies", "generate", "generate-after-body"],
)
def test_processing_mode_is_what_the_plugins_export(
    plugin_dir: Path, tmp_path: Path, wasm: str, fields: dict[str, Any], mode: tuple[str, ...]
) -> None:
    config = make_config(tmp_path, plugin(plugin_dir / wasm, **fields))
    typed = ec.ext_proc_filter(config, ec.phase_needs(config), options())["typed_config"]
    got = typed["processing_mode"]
    keys = ("request_header_mode", "response_header_mode", "request_body_mode", "response_body_mode")
    assert tuple(got[k] for k in keys) == mode
    assert (got["request_trailer_mode"], got["response_trailer_mode"]) == ("SKIP", "SKIP")


@pytest.mark.parametrize(
    ("plugins", "modes"),
    [
        # Chunk plugins only: the bodies stream, trailers are sent for the plugin that reads them.
        ([{}], ("STREAMED", "STREAMED", "SEND", "SEND")),
        # A whole-body plugin beside them buffers that direction (chunk plugins then see one last chunk).
        (
            [{"execution_points": ["response_body_chunk"]}, {"wasm": "transform.wasm", "name": "t"}],
            ("BUFFERED", "BUFFERED", "SKIP", "SKIP"),
        ),
        ([{"execution_points": ["request_body_chunk"]}], ("STREAMED", "NONE", "SKIP", "SKIP")),
    ],
    ids=["chunks-and-trailers", "whole-beside-chunks", "request-chunks-only"],
)
def test_streaming_plugins_get_streamed_bodies_and_trailers(
    plugin_dir: Path, tmp_path: Path, plugins: list[dict[str, Any]], modes: tuple[str, ...]
) -> None:
    entries = [
        plugin(plugin_dir / fields.pop("wasm", "stream.wasm"), **{"name": f"p{i}", **fields})
        for i, fields in enumerate(dict(p) for p in plugins)
    ]
    config = make_config(tmp_path, *entries)
    got = ec.ext_proc_filter(config, ec.phase_needs(config), options())["typed_config"]["processing_mode"]
    keys = ("request_body_mode", "response_body_mode", "request_trailer_mode", "response_trailer_mode")
    assert tuple(got[k] for k in keys) == modes


def test_route_values_become_route_metadata_ahead_of_the_plan(plugin_dir: Path, tmp_path: Path) -> None:
    config = make_config(tmp_path, plugin(plugin_dir / "echo.wasm", name="echo", match={"path_prefix": "/api"}))
    values = (
        ec.RouteValues.parse('/api/gold={"echo": {"tier": "gold"}}', ["echo"]),
        ec.RouteValues.parse('/api/gold/vip={"echo": {"tier": "vip"}}', ["echo"]),
    )
    document = ec.bootstrap(config, ec.phase_needs(config), options(route_values=values), PROXY)
    assert_valid(tmp_path, document)
    routes = vhost_routes(document)
    # The longest prefix first, then the plan's routes.
    assert [r["match"].get("prefix") for r in routes] == ["/api/gold/vip", "/api/gold", "/api", "/"]
    assert routes[0]["metadata"] == {"filter_metadata": {"extproc": {"echo": {"tier": "vip"}}}}
    assert "xds.route_metadata" in ext_proc_typed_config(document)["request_attributes"]


@pytest.mark.parametrize(
    "text",
    ["api={}", "/api", "/api=[1]", '/api={"echo": 1}', '/api={"nobody": {}}', "/api={not json"],
    ids=["no-slash", "no-json", "not-object", "value-not-object", "unknown-plugin", "bad-json"],
)
def test_bad_route_values_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--route-values"):
        ec.RouteValues.parse(text, ["echo"])


def test_filter_matches_the_proto_and_carries_the_options(plugin_dir: Path, tmp_path: Path) -> None:
    wasm = plugin_dir / "transform.wasm"
    config = make_config(tmp_path, plugin(wasm, "a", timeout_ms=100), plugin(wasm, "b", timeout_ms=50))
    needs = ec.phase_needs(config)
    derived = parse_message(
        ec.ext_proc_filter(config, needs, options())["typed_config"], ext_proc_pb2.ExternalProcessor()
    )
    assert derived.grpc_service.envoy_grpc.cluster_name == ec.EXTPROC_CLUSTER
    assert derived.allow_mode_override and not derived.failure_mode_allow
    # Each message runs one export of each plugin: a wait for an instance plus the run, and the gRPC overhead.
    assert derived.message_timeout.ToMilliseconds() == 250 + 2 * (100 + 50)
    assert list(derived.metadata_options.receiving_namespaces.untyped) == ["extproc"]
    assert derived.mutation_rules.allow_all_routing.value
    custom = options(failure_mode_allow=True, allow_mode_override=False, message_timeout_ms=750)
    message = parse_message(ec.ext_proc_filter(config, needs, custom)["typed_config"], ext_proc_pb2.ExternalProcessor())
    assert message.failure_mode_allow and not message.allow_mode_override
    assert message.message_timeout.ToMilliseconds() == 750


WORST_MESSAGE: dict[str, tuple[list[dict[str, Any]], ec.MessageBudget]] = {
    "retries-multiply": (
        [
            {"name": "a", "wasm": "transform.wasm", "timeout_ms": 100},
            {"name": "b", "wasm": "transform.wasm", "timeout_ms": 50, "retries": 1},
        ],
        ec.MessageBudget(2 * 100 + 2 * 50 * 2, "request headers", ("a", "b")),
    ),
    "disjoint-prefixes-never-add-up": (
        [
            {"name": "a", "wasm": "transform.wasm", "timeout_ms": 100, "match": {"path_prefix": "/a/"}},
            {"name": "b", "wasm": "transform.wasm", "timeout_ms": 300, "match": {"path_prefix": "/b/"}},
        ],
        ec.MessageBudget(2 * 300, "request headers", ("b",)),
    ),
    "nested-prefixes-and-no-prefix-add-up": (
        [
            {"name": "api", "wasm": "transform.wasm", "timeout_ms": 100, "match": {"path_prefix": "/api"}},
            {"name": "v1", "wasm": "transform.wasm", "timeout_ms": 100, "match": {"path_prefix": "/api/v1"}},
            {"name": "other", "wasm": "transform.wasm", "timeout_ms": 140, "match": {"path_prefix": "/other"}},
            {"name": "all", "wasm": "transform.wasm", "timeout_ms": 100, "match": {"methods": ["GET"]}},
        ],
        ec.MessageBudget(2 * 100 * 3, "request headers", ("api", "v1", "all")),
    ),
    "generate-response-follows-request-headers": (
        [{"name": "s", "wasm": "scripted.wasm", "timeout_ms": 100}],
        ec.MessageBudget(2 * 100 * 2, "request headers", ("s",)),
    ),
    "response-phase-only": (
        [
            {"name": "t", "wasm": "transform.wasm", "timeout_ms": 100, "execution_points": ["response_body"]},
            {"name": "e", "wasm": "echo.wasm", "timeout_ms": 50},
            {"name": "off", "wasm": "transform.wasm", "timeout_ms": 5000, "enabled": False},
        ],
        ec.MessageBudget(2 * 100, "response body", ("t",)),
    ),
    "no-plugins": ([], ec.MessageBudget(0, "request headers", ())),
}


@pytest.mark.parametrize("name", sorted(WORST_MESSAGE))
def test_worst_message(plugin_dir: Path, tmp_path: Path, name: str) -> None:
    specs, expected = WORST_MESSAGE[name]
    plugins = [plugin(plugin_dir / s["wasm"], **{k: v for k, v in s.items() if k != "wasm"}) for s in specs]
    config = make_config(tmp_path, *plugins)
    needs = ec.phase_needs(config)
    assert ec.worst_message(needs.plugins) == expected
    typed = ec.ext_proc_filter(config, needs, options())["typed_config"]
    message = parse_message(typed, ext_proc_pb2.ExternalProcessor())
    assert message.message_timeout.ToMilliseconds() == 250 + expected.ms


def test_generated_message_timeout_outlasts_every_retry(plugin_dir: Path, tmp_path: Path) -> None:
    config = make_config(tmp_path, plugin(plugin_dir / "transform.wasm", timeout_ms=100, retries=3))
    typed = ec.ext_proc_filter(config, ec.phase_needs(config), options())["typed_config"]
    # Four attempts, each of which may wait 100 ms for an instance and run 100 ms.
    assert parse_message(typed, ext_proc_pb2.ExternalProcessor()).message_timeout.ToMilliseconds() > 4 * 2 * 100


def test_cluster_is_http2_health_checked_and_lists_every_server(plugin_dir: Path, tmp_path: Path) -> None:
    config = make_config(tmp_path, plugin(plugin_dir / "echo.wasm"), server={"max_body_bytes": 1024})
    servers = (ec.Endpoint("10.0.0.1", 50051), ec.Endpoint("extproc-2", 50051))
    cluster = ec.extproc_cluster(config, ec.Options(servers=servers))
    assert cluster["type"] == "STRICT_DNS"  # a DNS name among them
    protocol = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in protocol["explicit_http_config"]
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["address"] for e in endpoints] == ["10.0.0.1", "extproc-2"]
    assert cluster["health_checks"][0]["grpc_health_check"] == {}
    assert cluster["per_connection_buffer_limit_bytes"] == 1024
    assert "health_checks" not in ec.extproc_cluster(config, ec.Options(servers=servers, health_check=False))
    assert ec.extproc_cluster(config, options())["type"] == "STATIC"


@pytest.mark.parametrize("path", GENERATED, ids=lambda p: p.name)
def test_every_envoy_we_write_closes_ext_proc_streams_gracefully(plugin_dir: Path, tmp_path: Path, path: Path) -> None:
    # Without it Envoy resets each stream as the server ends it, and grpc.aio leaks per request
    # (docs/operations.md, "Memory"); the e2e and bench Envoys carry it as well.
    config = make_config(tmp_path, plugin(plugin_dir / "transform.wasm"))
    generated = ec.bootstrap(config, ec.phase_needs(config), options(), PROXY)
    checked_in = yaml.safe_load(path.read_text())
    tests_envoy = render_bootstrap(listen_port=1, admin_port=2, upstream_port=3, extproc_port=4)
    for document in (generated, checked_in, tests_envoy):
        layers = document["layered_runtime"]["layers"]
        runtime = {key: value for layer in layers for key, value in layer["static_layer"].items()}
        assert runtime["envoy.reloadable_features.ext_proc_graceful_grpc_close"] is True


def test_fragment_is_what_the_bootstrap_contains(plugin_dir: Path, tmp_path: Path) -> None:
    config = make_config(tmp_path, plugin(plugin_dir / "transform.wasm", match={"path_prefix": "/t"}))
    needs = ec.phase_needs(config)
    pieces = ec.fragment(config, needs, options())
    document = ec.bootstrap(config, needs, options(), PROXY)
    assert ext_proc_typed_config(document) == pieces["http_filters"][0]["typed_config"]
    assert vhost_routes(document) == pieces["routes"]
    assert document["static_resources"]["clusters"][1] == pieces["clusters"][0]


# --- real Envoy ---------------------------------------------------------------------------------------

VARIANTS: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "everything": ([{"name": "t", "wasm": "transform.wasm"}], {}),
    "prefixes": (
        [
            {"name": "t", "wasm": "transform.wasm", "match": {"path_prefix": "/t"}},
            {"name": "e", "wasm": "echo.wasm", "match": {"path_prefix": "/e/"}},
        ],
        {},
    ),
    "regex": ([{"name": "t", "wasm": "transform.wasm", "match": {"path_regex": r"(?i)^/items/[0-9]+(/|$)"}}], {}),
    "headers-only": ([{"name": "s", "wasm": "scripted.wasm", "execution_points": ["request_headers"]}], {}),
    "options": (
        [{"name": "t", "wasm": "transform.wasm"}],
        {"failure_mode_allow": True, "allow_mode_override": False, "message_timeout_ms": 30, "health_check": False},
    ),
    "dns-servers": (
        [{"name": "t", "wasm": "transform.wasm"}],
        {"servers": (ec.Endpoint("extproc", 50051), ec.Endpoint("::1", 50052))},
    ),
    "no-plugins": ([{"name": "t", "wasm": "transform.wasm", "enabled": False}], {}),
}


def variant(plugin_dir: Path, tmp_path: Path, name: str) -> dict[str, Any]:
    specs, overrides = VARIANTS[name]
    plugins = [plugin(plugin_dir / s["wasm"], **{k: v for k, v in s.items() if k != "wasm"}) for s in specs]
    config = make_config(tmp_path, *plugins)
    opts = ec.Options(**{"servers": (ec.Endpoint("127.0.0.1", 50051),), **overrides})
    return ec.bootstrap(config, ec.phase_needs(config), opts, PROXY)


@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("fmt", ec.FORMATS)
def test_envoy_accepts_generated_bootstrap(plugin_dir: Path, tmp_path: Path, name: str, fmt: str) -> None:
    assert_valid(tmp_path, variant(plugin_dir, tmp_path, name), fmt)


@pytest.mark.e2e
def test_envoy_validation_is_not_vacuous(plugin_dir: Path, tmp_path: Path) -> None:
    # A lookahead is what re2_incompatibility keeps out of routes; Envoy indeed refuses it.
    document = variant(plugin_dir, tmp_path, "regex")
    vhost_routes(document)[0]["match"]["safe_regex"]["regex"] = "^/items(?=/)"
    result = validate_document(tmp_path, document)
    assert result.returncode != 0
    assert "invalid perl operator: (?=" in result.stdout + result.stderr


@pytest.mark.e2e
def test_envoy_accepts_every_pattern_called_compatible(plugin_dir: Path, tmp_path: Path) -> None:
    document = variant(plugin_dir, tmp_path, "regex")
    template = vhost_routes(document)[0]
    vhost_routes(document)[:1] = [
        {**template, "name": f"r{i}", "match": {"safe_regex": {"regex": ec.re2_full_match(pattern)}}}
        for i, pattern in enumerate(RE2_COMPATIBLE)
    ]
    assert_valid(tmp_path, document)


@pytest.mark.e2e
@pytest.mark.parametrize("path", GENERATED, ids=lambda p: p.name)
def test_checked_in_configs_are_valid_and_in_sync(
    plugin_dir: Path, tmp_path: Path, path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = path.read_text()
    first = text.splitlines()[0]
    assert first.startswith("# Generated by: extproc "), f"{path}: first line must say how it was generated"
    argv = shlex.split(first.removeprefix("# Generated by: extproc "))
    monkeypatch.chdir(REPO)
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == text, f"{path} is stale; regenerate it with the command on its first line"
    assert_valid(tmp_path, yaml.safe_load(text))


def test_demo_runs_the_checked_in_local_config(plugin_dir: Path) -> None:
    from extproc.config import load_config

    config = load_config(DEMO_DIR / "extproc.yaml")
    local = yaml.safe_load((DEMO_DIR / "envoy-local.yaml").read_text())
    assert demo_bootstrap(config, ec.phase_needs(config), DemoPorts()) == local


def test_route_cluster_names_where_the_fragment_routes_go(
    plugin_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    assert cli.main(["envoy-config", "--config", "envoy/demo/extproc.yaml", "--route-cluster", "mine"]) == 0
    text = capsys.readouterr().out
    assert {route["route"]["cluster"] for route in yaml.safe_load(text)["routes"]} == {"mine"}
    assert "server_header_transformation: PASS_THROUGH" in text  # said in a comment: the HCM is the user's


def test_json_format(plugin_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    assert cli.main(["envoy-config", "--config", "envoy/demo/extproc.yaml", "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert set(document) == {"http_filters", "routes", "clusters"}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--bootstrap"], 2, "--bootstrap needs --upstream"),
        (["--server", "extproc"], 1, "--server"),
        (["--bootstrap", "--upstream", "u:80", "--listen", "envoy:10000"], 1, "--listen: Envoy binds IP addresses"),
        (["--message-timeout-ms", "0"], 1, "--message-timeout-ms"),
        # Options that would be ignored are refused.
        (
            ["--bootstrap", "--upstream", "u:80", "--route-cluster", "mine"],
            2,
            "--route-cluster does not apply with --bootstrap",
        ),
        (["--upstream", "u:80"], 2, "--upstream applies only with --bootstrap"),
        (["--listen", "127.0.0.1:1", "--admin", "127.0.0.1:2"], 2, "--listen, --admin applies only with --bootstrap"),
    ],
    ids=[
        "bootstrap-without-upstream",
        "server-without-port",
        "listen-name",
        "zero-timeout",
        "route-cluster-with-bootstrap",
        "upstream-without-bootstrap",
        "listen-admin-without-bootstrap",
    ],
)
def test_bad_options_are_reported(
    plugin_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    code: int,
    message: str,
) -> None:
    monkeypatch.chdir(REPO)
    assert cli.main(["envoy-config", "--config", "envoy/demo/extproc.yaml", *args]) == code
    assert message in capsys.readouterr().err


# --- traffic through a generated bootstrap ------------------------------------------------------------


@pytest.mark.e2e
def test_unmatched_routes_never_open_a_stream(plugin_dir: Path, tmp_path: Path) -> None:
    # The plugin also sets `server`, which Envoy's default server_header_transformation would overwrite.
    tagged = '{"headers": {"set": [{"name": "x-tagged", "value": "yes"}, {"name": "server", "value": "plugin"}]}}'
    scripted = plugin_dir / "scripted.wasm"
    server_port, listen_port, admin_port = free_port(), free_port(), free_port()
    config_path = tmp_path / "extproc.yaml"
    config_path.write_text(
        json.dumps(
            {
                "server": {"listen": f"127.0.0.1:{server_port}"},
                "plugins": [
                    plugin(
                        scripted,
                        "prefix",
                        execution_points=["response_headers"],
                        match={"path_prefix": "/p/"},
                        config={"process_response_headers": tagged},
                    ),
                    plugin(
                        scripted,
                        "regex",
                        execution_points=["response_headers"],
                        match={"path_regex": r"^/items/\d+$"},
                        config={"process_response_headers": tagged},
                    ),
                ],
            }
        )
    )
    with start_upstream(tmp_path) as upstream:
        bootstrap = tmp_path / "envoy.yaml"
        with bootstrap.open("w") as out:
            rc = subprocess.run(
                [
                    *(sys.executable, "-m", "extproc", "envoy-config", "--config", str(config_path), "--bootstrap"),
                    *("--upstream", f"127.0.0.1:{upstream.port}"),
                    *("--listen", f"127.0.0.1:{listen_port}", "--admin", f"127.0.0.1:{admin_port}"),
                ],
                stdout=out,
                cwd=REPO,
                check=False,
            ).returncode
        assert rc == 0
        server_argv = [sys.executable, "-m", "extproc", "serve", "--config", str(config_path)]
        with (
            ManagedProcess("server", server_argv, tmp_path / "server.log", cwd=REPO) as server,
            ManagedProcess("envoy", envoy_argv(bootstrap), tmp_path / "envoy.log") as envoy,
        ):
            wait_for_port("127.0.0.1", server_port, 30, process=server)
            wait_for_http_ready(f"http://127.0.0.1:{admin_port}/ready", 30, process=envoy)
            wait_for_port("127.0.0.1", listen_port, 30, process=envoy)

            def streams() -> int:
                query = urllib.parse.urlencode({"format": "json", "filter": f"{ec.EXT_PROC_STATS}.streams_started$"})
                stats = request("GET", f"http://127.0.0.1:{admin_port}/stats?{query}").json()["stats"]
                return sum(int(s["value"]) for s in stats)

            base = f"http://127.0.0.1:{listen_port}"
            for path, through in [
                ("/p/x", True),
                ("/items/42", True),
                ("/items/42?q=1", True),
                ("/items/x", False),
                ("/q/p/", False),
                ("/", False),
            ]:
                before = streams()
                response = request("GET", base + path)
                assert response.status == 200, (path, server.log_text(), envoy.log_text())
                assert (response.header("x-tagged") == "yes") is through, path
                assert (response.header("server") == "plugin") is through, path
                assert streams() - before == (1 if through else 0), path


# --- plugin outcomes and candidates -------------------------------------------------------------------


def access_log_format(document: dict[str, Any]) -> str:
    hcm = document["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    text: str = hcm["access_log"][0]["typed_config"]["log_format"]["text_format_source"]["inline_string"]
    return text


@pytest.mark.e2e
def test_the_access_log_shows_plugin_outcomes_when_the_server_sends_them(plugin_dir: Path, tmp_path: Path) -> None:
    wasm = plugin_dir / "transform.wasm"
    quiet = make_config(tmp_path, plugin(wasm))
    telling = make_config(tmp_path, plugin(wasm), server={"outcome_metadata": True})
    shown = 'plugins="%DYNAMIC_METADATA(extproc:_outcomes)%"'
    assert shown not in access_log_format(ec.bootstrap(quiet, ec.phase_needs(quiet), options(), PROXY))
    document = ec.bootstrap(telling, ec.phase_needs(telling), options(), PROXY)
    assert shown in access_log_format(document)
    assert_valid(tmp_path, document)
    # A fragment brings the access log along for the user's own connection manager.
    assert ec.fragment(telling, ec.phase_needs(telling), options())["access_log"] == ec.access_log(plugin_outcomes=True)
    assert "access_log" not in ec.fragment(quiet, ec.phase_needs(quiet), options())


def test_envoy_is_asked_for_the_phases_a_canary_needs(plugin_dir: Path, tmp_path: Path) -> None:
    live = plugin(plugin_dir / "flaky.wasm")  # request headers only
    canary = dict(live, candidate={"path": str(plugin_dir / "transform.wasm"), "mode": "canary", "fraction": 0.1})
    shadow = dict(live, candidate={"path": str(plugin_dir / "transform.wasm"), "fraction": 0.1})
    with_canary = ec.phase_needs(make_config(tmp_path, canary))
    assert (with_canary.request_body, with_canary.response_headers, with_canary.response_body) == (True, True, True)
    # A shadow runs only in the phases of the live version, so it needs nothing more from Envoy.
    with_shadow = ec.phase_needs(make_config(tmp_path, shadow))
    assert (with_shadow.request_body, with_shadow.response_headers, with_shadow.response_body) == (False, False, False)
