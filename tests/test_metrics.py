"""The metrics module: what a scrape shows after recorded calls, streams and state changes."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from extproc import __version__, metrics
from extproc.config import BreakerConfig
from extproc.errors import FailureKind
from extproc.metrics import StreamEnd
from extproc.phases import Phase
from extproc.plugins.breaker import BreakerState, CircuitBreaker
from extproc.workers import _MergedMetrics


def sample(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


def test_plugin_calls_become_a_histogram_and_failure_counts() -> None:
    plugin = metrics.plugin_metrics("unit-histogram")
    assert metrics.plugin_metrics("unit-histogram") is plugin  # one object per name: reloads keep counting
    plugin.record(Phase.REQUEST_HEADERS, 0.00005)  # exactly on a bound: counted in that bucket ("le")
    plugin.record(Phase.REQUEST_HEADERS, 0.0003)
    plugin.record(Phase.REQUEST_HEADERS, 7.0, FailureKind.TIMEOUT)

    labels = {"plugin": "unit-histogram", "phase": "process_request_headers"}
    assert sample("extproc_plugin_calls_total", **labels) == 3
    assert sample("extproc_plugin_failures_total", **labels, kind="timeout") == 1
    assert sample("extproc_plugin_failures_total", **labels, kind="trap") is None
    assert sample("extproc_plugin_call_duration_seconds_bucket", **labels, le="5e-05") == 1
    assert sample("extproc_plugin_call_duration_seconds_bucket", **labels, le="0.0005") == 2
    assert sample("extproc_plugin_call_duration_seconds_bucket", **labels, le="2.5") == 2
    assert sample("extproc_plugin_call_duration_seconds_bucket", **labels, le="+Inf") == 3
    assert sample("extproc_plugin_call_duration_seconds_sum", **labels) == pytest.approx(7.00035)
    # Phases never called are left out rather than exported as zeros.
    assert sample("extproc_plugin_calls_total", plugin="unit-histogram", phase="process_response_body") is None


def test_concurrent_records_are_not_lost() -> None:
    plugin = metrics.plugin_metrics("unit-threads")

    def work() -> None:
        for _ in range(5000):
            plugin.record(Phase.RESPONSE_BODY, 0.001)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sample("extproc_plugin_calls_total", plugin="unit-threads", phase="process_response_body") == 20000


def test_streams_and_immediate_responses() -> None:
    before = sample("extproc_streams_total") or 0
    active = sample("extproc_active_streams") or 0
    teapots = sample("extproc_immediate_responses_total", status="418") or 0
    ended = {how: sample("extproc_streams_ended_total", how=how.value) or 0 for how in StreamEnd}
    metrics.STREAMS.started()
    metrics.STREAMS.started()
    metrics.STREAMS.ended(StreamEnd.CANCELLED)
    metrics.STREAMS.ended(StreamEnd.REFUSED)  # a refused stream never started
    metrics.STREAMS.immediate_response(418)
    assert sample("extproc_streams_total") == before + 2
    assert sample("extproc_active_streams") == active + 1
    assert sample("extproc_immediate_responses_total", status="418") == teapots + 1
    assert sample("extproc_streams_ended_total", how="cancelled") == ended[StreamEnd.CANCELLED] + 1
    assert sample("extproc_streams_ended_total", how="refused") == ended[StreamEnd.REFUSED] + 1
    metrics.STREAMS.ended(StreamEnd.DONE)
    assert sample("extproc_active_streams") == active


def test_the_gauge_shows_the_breakers_in_force_one_hot() -> None:
    one_failure = BreakerConfig(failures=1)
    opened, closed = CircuitBreaker("unit-opened", one_failure), CircuitBreaker("unit-closed", one_failure)
    opened.record_failure()
    metrics.breakers_in_force([opened, closed])

    def shown(plugin: str) -> dict[str, float | None]:
        return {
            state: sample("extproc_plugin_circuit_breaker_state", plugin=plugin, state=state) for state in BreakerState
        }

    assert shown("unit-opened") == {"closed": 0, "open": 1, "half_open": 0}
    assert shown("unit-closed") == {"closed": 1, "open": 0, "half_open": 0}
    metrics.breakers_in_force([closed])
    assert shown("unit-opened") == {"closed": None, "open": None, "half_open": None}


def test_config_hash_and_reloads() -> None:
    failures = sample("extproc_config_reloads_total", result="failure")
    metrics.config_loaded("a" * 64)
    metrics.config_loaded("b" * 64)
    metrics.config_reloaded(ok=False)
    assert sample("extproc_config_info", sha256="a" * 64) is None
    assert sample("extproc_config_info", sha256="b" * 64) == 1
    assert sample("extproc_config_reloads_total", result="failure") == (failures or 0) + 1


def test_build_info() -> None:
    text = generate_latest(metrics.REGISTRY).decode()
    [build] = [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == "extproc_build_info"]
    assert build.labels["version"] == __version__
    assert set(build.labels) == {"version", "python", "extism", "grpcio", "compiled"}
    assert build.labels["compiled"] == ("mypyc" if metrics.REQUEST_PATH_COMPILED else "no")


def test_merged_worker_metrics_get_a_worker_label() -> None:
    worker = b'# HELP x_total things\n# TYPE x_total counter\nx_total{a="1"} 3.0\n'
    merged = _MergedMetrics()
    merged.add("0", worker)
    merged.add("1", worker.replace(b"3.0", b"4.0"))
    [family] = list(merged.collect())
    assert [(s.name, s.labels, s.value) for s in family.samples] == [
        ("x_total", {"a": "1", "worker": "0"}, 3.0),
        ("x_total", {"a": "1", "worker": "1"}, 4.0),
    ]
