"""Prometheus metrics of one server process.

The per-request metrics (plugin calls, streams, immediate responses) are plain counters behind one
lock each and are turned into Prometheus families only when scraped: prometheus-client's own
Histogram.observe costs about 2 us on the reference machine, this costs about a third of that, and a
request makes one observation per plugin call. Rare events (reloads, restarts, recycled instances)
use the library's metric types directly. Circuit breaker states are read from the serving plugin set
when scraped.

Everything lives in REGISTRY, not in prometheus-client's global default registry, so that embedding
code and tests can tell our metrics apart; the process and platform collectors are added to it.
"""

from __future__ import annotations

import enum
import importlib.util
import platform
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from importlib import metadata
from typing import Final, NamedTuple

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from extproc import __version__
from extproc.errors import FailureKind
from extproc.phases import Phase
from extproc.plugins.breaker import BreakerState, CircuitBreaker

# From 50 us (a trivial plugin) to the largest sensible timeout; a plugin call is rarely below 20 us.
LATENCY_BUCKETS: Final = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

REGISTRY: Final = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)


class PhaseSnapshot(NamedTuple):
    buckets: list[int]  # latency bucket counts; the last is +Inf
    seconds: float  # the latencies' sum
    failures: dict[FailureKind, int]  # calls that failed, by the kind of their last attempt
    cancelled: int
    attempt_failures: dict[FailureKind, int]  # every attempt that failed, retried or not


class PhaseMetrics:
    """Calls of one export of one plugin: latency buckets, their sum, failures by kind, calls abandoned
    because their stream ended first (neither a success nor a failure), and failed attempts by kind (a
    call with retries makes several; a retry that succeeds leaves a successful call)."""

    __slots__ = ("_attempt_failures", "_buckets", "_cancelled", "_failures", "_lock", "_sum")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self._sum = 0.0
        self._failures = dict.fromkeys(FailureKind, 0)
        self._cancelled = 0
        self._attempt_failures = dict.fromkeys(FailureKind, 0)

    def record(self, seconds: float, failure: FailureKind | None = None) -> None:
        index = bisect_left(LATENCY_BUCKETS, seconds)  # first bound >= seconds: Prometheus' "le"
        with self._lock:
            self._buckets[index] += 1
            self._sum += seconds
            if failure is not None:
                self._failures[failure] += 1

    def cancelled(self) -> None:
        with self._lock:
            self._cancelled += 1

    def attempt_failed(self, kind: FailureKind) -> None:
        with self._lock:
            self._attempt_failures[kind] += 1

    def snapshot(self) -> PhaseSnapshot:
        with self._lock:
            return PhaseSnapshot(
                list(self._buckets), self._sum, dict(self._failures), self._cancelled, dict(self._attempt_failures)
            )


class PluginMetrics:
    """Every export of one plugin, bound once so a call does no label lookup."""

    __slots__ = ("name", "phases")

    def __init__(self, name: str) -> None:
        self.name = name
        self.phases = {export: PhaseMetrics() for export in Phase}

    def record(self, export: Phase, seconds: float, failure: FailureKind | None = None) -> None:
        self.phases[export].record(seconds, failure)

    def cancelled(self, export: Phase) -> None:
        self.phases[export].cancelled()

    def attempt_failed(self, export: Phase, kind: FailureKind) -> None:
        self.phases[export].attempt_failed(kind)


class StreamEnd(enum.StrEnum):
    """Why an ext_proc stream ended."""

    DONE = "done"  # Envoy or the server closed it after the last phase
    CANCELLED = "cancelled"  # Envoy reset it (message timeout, client gone, ...) before that
    IDLE = "idle"  # no message from Envoy within server.stream_idle_timeout_ms
    ERROR = "error"  # a bug of ours; answered with 500
    REFUSED = "refused"  # server.max_concurrent_streams were open: RESOURCE_EXHAUSTED at once


class StreamMetrics:
    """ext_proc streams (one per HTTP exchange), how they ended, and the immediate responses sent on them."""

    __slots__ = ("_ended", "_immediate", "_lock", "_started")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = 0
        self._ended = dict.fromkeys(StreamEnd, 0)
        self._immediate: dict[int, int] = {}

    def started(self) -> None:
        with self._lock:
            self._started += 1

    def ended(self, how: StreamEnd) -> None:
        with self._lock:
            self._ended[how] += 1

    def immediate_response(self, status: int) -> None:
        with self._lock:
            self._immediate[status] = self._immediate.get(status, 0) + 1

    def snapshot(self) -> tuple[int, dict[StreamEnd, int], dict[int, int]]:
        with self._lock:
            return self._started, dict(self._ended), dict(self._immediate)


class _RequestCollector(Collector):
    """Builds the per-request families from the counters above at scrape time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._plugins: dict[str, PluginMetrics] = {}
        self.streams = StreamMetrics()

    def plugin(self, name: str) -> PluginMetrics:
        # One object per name for the life of the process, so counters survive a reload of the plugin.
        with self._lock:
            found = self._plugins.get(name)
            if found is None:
                found = self._plugins[name] = PluginMetrics(name)
            return found

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            plugins = list(self._plugins.values())
        calls = CounterMetricFamily("extproc_plugin_calls", "Plugin calls, failed or not", labels=("plugin", "phase"))
        failures = CounterMetricFamily(
            "extproc_plugin_failures", "Failed plugin calls by kind", labels=("plugin", "phase", "kind")
        )
        latency = HistogramMetricFamily(
            "extproc_plugin_call_duration_seconds",
            "Wall time of a plugin call: encode, instance, Wasm run, decode, retries",
            labels=("plugin", "phase"),
        )
        cancelled_calls = CounterMetricFamily(
            "extproc_plugin_calls_cancelled",
            "Plugin calls abandoned because Envoy ended their stream first (not failures)",
            labels=("plugin", "phase"),
        )
        attempt_failures = CounterMetricFamily(
            "extproc_plugin_attempt_failures",
            "Failed attempts of plugin calls by kind, retried or not (a call with retries makes several attempts)",
            labels=("plugin", "phase", "kind"),
        )
        for plugin in plugins:
            for export, phase in plugin.phases.items():
                buckets, total, failed, cancelled, attempts_failed = phase.snapshot()
                labels = [plugin.name, export.value]
                if cancelled:
                    cancelled_calls.add_metric(labels, cancelled)
                for kind, n in attempts_failed.items():
                    if n:
                        attempt_failures.add_metric([*labels, kind.value], n)
                count = sum(buckets)
                if count == 0:
                    continue  # exports the plugin lacks (or never ran) would be noise
                calls.add_metric(labels, count)
                cumulative = 0
                bounds: list[tuple[str, float]] = []
                for bound, n in zip((*map(repr, LATENCY_BUCKETS), "+Inf"), buckets, strict=True):
                    cumulative += n
                    bounds.append((bound, cumulative))
                latency.add_metric(labels, bounds, total)
                for kind, n in failed.items():
                    if n:
                        failures.add_metric([*labels, kind.value], n)
        started, ended, immediate = self.streams.snapshot()
        streams = CounterMetricFamily("extproc_streams", "ext_proc streams (HTTP exchanges) begun")
        streams.add_metric([], started)
        endings = CounterMetricFamily(
            "extproc_streams_ended",
            "ext_proc streams ended, by how: done, cancelled (by Envoy), idle, error, refused (over the limit)",
            labels=("how",),
        )
        for how, n in ended.items():
            endings.add_metric([how.value], n)
        active = GaugeMetricFamily("extproc_active_streams", "ext_proc streams in progress")
        active.add_metric([], started - sum(n for how, n in ended.items() if how is not StreamEnd.REFUSED))
        replies = CounterMetricFamily(
            "extproc_immediate_responses",
            "Exchanges answered by the server instead of the upstream, by HTTP status",
            labels=("status",),
        )
        for status, n in sorted(immediate.items()):
            replies.add_metric([str(status)], n)
        yield from (calls, failures, attempt_failures, cancelled_calls, latency, streams, endings, active, replies)

    def describe(self) -> Iterable[Metric]:
        # Returning nothing here keeps registration from calling collect() before any data exists.
        return ()


_REQUESTS: Final = _RequestCollector()
REGISTRY.register(_REQUESTS)
STREAMS: Final = _REQUESTS.streams

# One loaded plugin's instance pool: (plugin, instances in existence or being created, idle ones, most allowed).
PoolUse = tuple[str, int, int, int]


class _PoolCollector(Collector):
    """Reads the serving plugin set's pools when scraped, so the data path does no bookkeeping for it."""

    def __init__(self) -> None:
        self.source: Callable[[], Iterable[PoolUse]] | None = None

    def collect(self) -> Iterator[Metric]:
        source = self.source
        if source is None:
            return
        instances = GaugeMetricFamily(
            "extproc_plugin_pool_instances",
            "Instances of a plugin by state: busy (in a call, or being created) or idle",
            labels=("plugin", "state"),
        )
        most = GaugeMetricFamily(
            "extproc_plugin_pool_max_instances", "Most instances a plugin's pool may hold", labels=("plugin",)
        )
        for plugin, size, idle, max_size in source():
            # The loop thread moves instances while this reads: clamp a momentary inconsistency.
            instances.add_metric([plugin, "busy"], max(size - idle, 0))
            instances.add_metric([plugin, "idle"], idle)
            most.add_metric([plugin], max_size)
        yield from (instances, most)

    def describe(self) -> Iterable[Metric]:
        return ()


_POOLS: Final = _PoolCollector()
REGISTRY.register(_POOLS)

_RELOADS: Final = Counter(
    "extproc_config_reloads", "Config reloads by result", labelnames=("result",), registry=REGISTRY
)
_CONFIG: Final = Gauge(
    "extproc_config_info",
    "1 for the config in force: sha256 of the config file and the plugin modules",
    labelnames=("sha256",),
    registry=REGISTRY,
)
_BUILD: Final = Info("extproc_build", "Versions of this server and what it runs on", registry=REGISTRY)
_WORKER_RESTARTS: Final = Counter(
    "extproc_worker_restarts", "Worker processes restarted after they died", registry=REGISTRY
)
# Moves only while the state backend is down or slow, so the library's counter is cheap enough.
_STATE_FAILURES: Final = Counter(
    "extproc_state_failures",
    "Key-value host calls the state backend could not serve, by plugin, host function and the policy applied",
    labelnames=("plugin", "function", "policy"),
    registry=REGISTRY,
)
# Moves only after calls that moved over a MiB, which cost far more than the counter.
_RECYCLED: Final = Counter(
    "extproc_plugin_instances_recycled",
    "Plugin instances dropped after a call that moved more than 1 MiB, so they do not keep the memory it took",
    labelnames=("plugin",),
    registry=REGISTRY,
)
_STATE_UP: Final = Gauge(
    "extproc_state_backend_up",
    "1 while the state backend answers, 0 after a failed command until one succeeds (absent: in-memory state)",
    labelnames=("backend",),
    registry=REGISTRY,
)


class _BreakerCollector(Collector):
    """The circuit breakers of the plugin set in force, read at scrape time.

    Read rather than pushed on each change: a set being loaded (maybe never to serve) or one that only
    finishes its streams after a reload has breakers under the same plugin names.
    """

    def __init__(self) -> None:
        self.in_force: tuple[CircuitBreaker, ...] = ()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "extproc_plugin_circuit_breaker_state",
            "1 for the circuit breaker state a plugin of the serving set is in, 0 for the others",
            labels=("plugin", "state"),
        )
        for breaker in self.in_force:
            current = breaker.state
            for state in BreakerState:
                family.add_metric([breaker.plugin, state.value], 1 if state is current else 0)
        yield family

    def describe(self) -> Iterable[Metric]:
        return ()


_BREAKERS: Final = _BreakerCollector()
REGISTRY.register(_BREAKERS)


def _distribution_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


def _request_path_compiled() -> bool:
    """Whether this install runs the request path compiled with mypyc (setup.py, EXTPROC_MYPYC=1); looked up
    without importing it, since it imports this module."""
    spec = importlib.util.find_spec("extproc.stream")
    return spec is not None and spec.origin is not None and not spec.origin.endswith(".py")


REQUEST_PATH_COMPILED: Final = _request_path_compiled()
_BUILD.info(
    {
        "version": __version__,
        "python": platform.python_version(),
        "extism": _distribution_version("extism"),
        "grpcio": _distribution_version("grpcio"),
        "compiled": "mypyc" if REQUEST_PATH_COMPILED else "no",
    }
)
_RELOADS.labels("success")
_RELOADS.labels("failure")


def watch_pools(source: Callable[[], Iterable[PoolUse]]) -> None:
    """Export the pools `source` reports (the serving plugin set's); the last server to start wins."""
    _POOLS.source = source


def unwatch_pools(source: Callable[[], Iterable[PoolUse]]) -> None:
    if _POOLS.source == source:
        _POOLS.source = None


def plugin_metrics(name: str) -> PluginMetrics:
    return _REQUESTS.plugin(name)


def config_reloaded(*, ok: bool) -> None:
    _RELOADS.labels("success" if ok else "failure").inc()


def config_loaded(config_hash: str) -> None:
    """Publish the hash of the config now in force (extproc.reload.config_hash), replacing the previous one."""
    _CONFIG.clear()
    _CONFIG.labels(config_hash).set(1)


def breakers_in_force(breakers: Iterable[CircuitBreaker]) -> None:
    """The breakers extproc_plugin_circuit_breaker_state shows from now on: the plugin set just put in force."""
    _BREAKERS.in_force = tuple(breakers)


def worker_restarted() -> None:
    _WORKER_RESTARTS.inc()


def state_failure(plugin: str, function: str, policy: str) -> None:
    _STATE_FAILURES.labels(plugin, function, policy).inc()


def instance_recycled(plugin: str) -> None:
    _RECYCLED.labels(plugin).inc()


def state_backend_up(backend: str, up: bool) -> None:
    _STATE_UP.labels(backend).set(1 if up else 0)
