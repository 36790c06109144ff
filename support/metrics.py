"""The server's Prometheus metrics, read from its admin endpoint."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from support.processes import http_get

MetricKey = tuple[str, frozenset[tuple[str, str]]]


def scrape_metrics(admin_url: str) -> dict[MetricKey, float]:
    """Every sample of the server's /metrics as {(sample name, labels): value}."""
    status, text = http_get(f"{admin_url}/metrics")
    if status != 200:
        raise RuntimeError(f"{admin_url}/metrics answered {status}: {text}")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(samples: dict[MetricKey, float], name: str, **labels: str) -> float:
    """One sample's value; 0 when absent (counters that never moved are not exported)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
