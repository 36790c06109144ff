"""deploy/grafana/extproc.json queries only what the server exports (issue 19).

A real server with plugins that pass, fail (and so open their breaker) and get cancelled mid-call serves
traffic until every metric family the dashboard reads has samples; then every metric name and label in
every query is checked against its /metrics, and every extproc_ family it exports has a panel.
PromQL is read with a small lexer below, enough for the expressions a dashboard holds.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from prometheus_client.parser import text_string_to_metric_families

from support.plugins import scripted
from support.processes import ManagedProcess, default_server_cmd, free_port, server_env, wait_for_http_ready, wait_until
from tests.test_grpc_stream import REQUEST, body, exchange, headers

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "extproc.json"
# Added by Prometheus to every scraped sample, or by the supervisor with --workers.
TARGET_LABELS = {"job", "instance", "worker"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Aggregation operators may take their by/without clause before the parenthesis: `sum by (x) (...)`.
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk"}
_AGGREGATIONS |= {"quantile", "limitk", "limit_ratio"}
_TOKEN = re.compile(
    r'(?P<string>"(?:[^"\\]|\\.)*")|(?P<range>\[[^\]]*\])|(?P<variable>\$\w+|\$\{\w+\})'
    r"|(?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?)|(?P<name>[A-Za-z_:][\w:]*)|(?P<punct>=~|!~|!=|==|[(){},=*/+<>-])"
)


@dataclass
class Query:
    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)


def read_promql(expr: str) -> Query:
    """Metric names and label names (in matchers and in by/without/on/ignoring lists) of an expression."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    assert "".join(text for _, text in tokens) == re.sub(r"\s+", "", expr), f"cannot read: {expr}"
    query = Query()
    in_matchers = False
    grouping_depth: int | None = None
    depth = 0
    for i, (kind, text) in enumerate(tokens):
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if text == "{":
            in_matchers = True
        elif text == "}":
            in_matchers = False
        elif text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
            if grouping_depth is not None and depth < grouping_depth:
                grouping_depth = None
        elif kind != "name":
            continue
        elif in_matchers or grouping_depth is not None:
            query.labels.add(text)
        elif text in _GROUPING:
            if following == "(":  # group_left and group_right may come without a label list
                grouping_depth = depth + 1
        elif following != "(" and text not in _AGGREGATIONS and text not in _KEYWORDS:
            query.metrics.add(text)
    return query


def label_values_query(text: str) -> Query:
    """A Grafana `label_values(SELECTOR, LABEL)` variable query."""
    found = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", text)
    assert found is not None, text
    query = read_promql(found.group(1))
    query.labels.add(found.group(2))
    return query


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from panels(item.get("panels", []))


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries() -> dict[str, Query]:
    """Where (panel title / variable name) -> what it reads."""
    board = dashboard()
    found = {}
    for panel in panels(board["panels"]):
        for target in panel.get("targets", []):
            found[f"panel {panel['title']!r} {target['refId']}"] = read_promql(target["expr"])
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            found[f"variable ${variable['name']}"] = label_values_query(variable["query"]["query"])
    return found


# --- a server with traffic --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, plugin_dir: Path) -> dict[str, set[str]]:
    """Sample name -> its label names, from `extproc serve`'s /metrics after traffic of every kind."""
    plugins = [
        scripted(plugin_dir, process_request_headers={}) | {"name": "ok", "match": {"path_prefix": "/ok"}},
        {
            "name": "trap",
            "path": str(plugin_dir / "trap.wasm"),
            "match": {"path_prefix": "/trap"},
            "circuit_breaker": {"failures": 1},
        },
        # A call whose input and output add up to over 1 MiB gets its instance recycled.
        {
            "name": "big",
            "path": str(plugin_dir / "transform.wasm"),
            "match": {"path_prefix": "/big"},
            "execution_points": ["request_body"],
            "memory_limit_mb": 64,
        },
        # Long enough to be cancelled mid-call; calls on threads (inline_call_budget_us 0) can be.
        {"name": "slow", "path": str(plugin_dir / "loop.wasm"), "match": {"path_prefix": "/slow"}, "timeout_ms": 3000},
        # A shadow that fails, which opens its breaker: the next shadow call is skipped.
        scripted(plugin_dir, process_request_headers={})
        | {
            "name": "shadowed",
            "match": {"path_prefix": "/shadow"},
            "candidate": {
                "path": str(plugin_dir / "trap.wasm"),
                "mode": "shadow",
                "fraction": 1,
                "circuit_breaker": {"failures": 1},
            },
        },
        scripted(plugin_dir, process_request_headers={})
        | {
            "name": "canaried",
            "match": {"path_prefix": "/canary"},
            "candidate": {"path": str(plugin_dir / "scripted.wasm"), "mode": "canary", "fraction": 1},
        },
    ]
    workdir = tmp_path_factory.mktemp("dashboard")
    config = workdir / "extproc.yaml"
    config.write_text(json.dumps({"server": {"inline_call_budget_us": 0}, "plugins": plugins}))
    port, admin = free_port(), free_port()
    argv = [*default_server_cmd(config, port), "--admin-listen", f"127.0.0.1:{admin}"]
    with ManagedProcess("extproc server", argv, workdir / "server.log", env=server_env()) as server:
        url = f"http://127.0.0.1:{admin}"
        wait_for_http_ready(f"{url}/readyz", 30, process=server)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ep_grpc.ExternalProcessorStub(channel)
            # The second trap call meets the open breaker, and so does the second shadow call.
            for prefix in ("/ok", "/trap", "/trap", "/shadow", "/shadow", "/canary"):
                exchange(stub, request_to(prefix))
            exchange(stub, request_to("/big"), body(b"x" * 600 * 1024, end_of_stream=True))
            cancel_a_call_mid_flight(stub, f"{url}/metrics")
        return scrape(f"{url}/metrics")


def request_to(path: str) -> Any:
    return headers(*[(name, path if name == ":path" else value) for name, value in REQUEST])


def scrape(url: str) -> dict[str, set[str]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def cancel_a_call_mid_flight(stub: Any, url: str) -> None:
    hold = threading.Event()  # keeps the request stream open, as Envoy does while it waits

    def requests() -> Iterator[Any]:
        yield request_to("/slow")
        hold.wait()

    call = stub.Process(requests(), timeout=30)
    try:
        busy = 'extproc_plugin_pool_instances{plugin="slow",state="busy"} 1.0'
        wait_until(lambda: busy in urllib.request.urlopen(url, timeout=5).read().decode(), 10, "the slow call")
        call.cancel()
        wait_until(lambda: "extproc_plugin_calls_cancelled_total" in scrape(url), 10, "the cancelled call counted")
    finally:
        hold.set()


# --- the checks -------------------------------------------------------------------------------------


def test_every_metric_a_query_uses_is_exported(exported: dict[str, set[str]]) -> None:
    missing = {where: sorted(q.metrics - set(exported)) for where, q in queries().items() if q.metrics - set(exported)}
    assert not missing, f"not in the server's /metrics: {missing}"


def test_every_label_a_query_uses_exists_on_its_metrics(exported: dict[str, set[str]]) -> None:
    wrong = {}
    for where, query in queries().items():
        available = TARGET_LABELS.union(*(exported.get(name, set()) for name in query.metrics))
        if query.labels - available:
            wrong[where] = sorted(query.labels - available)
    assert not wrong, f"labels the queried metrics do not have: {wrong}"


def test_every_extproc_family_has_a_panel(exported: dict[str, set[str]]) -> None:
    family = re.compile(r"_(bucket|sum|count|total|created)$")
    used = {family.sub("", name) for query in queries().values() for name in query.metrics}
    exported_families = {family.sub("", name) for name in exported if name.startswith("extproc_")}
    assert exported_families - used == set(), "exported but on no panel"


def test_the_pool_gauges_count_instances(exported: dict[str, set[str]]) -> None:
    assert exported["extproc_plugin_pool_instances"] == {"plugin", "state"}
    assert exported["extproc_plugin_pool_max_instances"] == {"plugin"}


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    ids = [panel["id"] for panel in panels(board["panels"])]
    assert len(ids) == len(set(ids))
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert variables == {"datasource", "job", "instance", "plugin"}
    for panel in panels(board["panels"]):
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            # Every query honours the dashboard's selectors.
            assert 'job=~"$job"' in target["expr"] and 'instance=~"$instance"' in target["expr"], panel["title"]


def test_the_lexer_reads_what_it_must() -> None:
    query = read_promql(
        'histogram_quantile(0.99, sum by (plugin, le) (rate(a_bucket{job=~"$job", x="y"}[$__rate_interval])))'
        " / on (plugin) group_left sum without (phase) (b_total) * 2"
    )
    assert query.metrics == {"a_bucket", "b_total"}
    assert query.labels == {"plugin", "le", "job", "x", "phase"}
