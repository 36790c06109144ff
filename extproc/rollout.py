"""Safe rollouts: a plugin's candidate version beside the live one, and what is watched per exchange.

A plugin entry's `candidate` (config.CandidateConfig) is loaded with the live version, as a LoadedPlugin of
its own: its own instance pool, limits, breaker, and metrics under the label ``NAME@candidate``.

- **shadow**: on a `fraction` of the exchanges, after each live call the candidate is called on the same
  input, on a plugin thread (never on the event loop), in a task of its own: the request does not wait for
  it, and whatever it does or fails to do never reaches the client. Its output is compared with the live
  one (comparison.py); agreements and differences are counted per phase, and a sampled difference is
  logged with what differed (header names, body digests, never values). When every candidate instance is
  busy the shadow call is skipped rather than queued, so shadows cannot pile up behind a slow candidate. A
  shadow keeps its key-value state in memory of its own: it must not change what the live version reads.
- **canary**: the candidate serves in place of the live version, in all phases of an exchange, for the
  clients whose `key_header` value hashes below `fraction` (salted with the plugin name, stable across
  processes and restarts), so one client keeps one version. It has its own failure policy and breaker,
  and shares the live version's key-value state. An exchange without the header gets the live version.

Per exchange (ExchangeWatch, made only when something is watched) each plugin call's outcome can go to
Envoy as dynamic metadata for the access log (`server.outcome_metadata`), and a sampled exchange's calls
are recorded (recording.py). Promoting a candidate is a config change: hot reload picks it up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import random
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from extproc import metrics
from extproc.comparison import Difference, Result, changes_anything, differences, plain
from extproc.config import CandidateConfig, Config, RolloutMode
from extproc.errors import FailureKind, PluginCallError
from extproc.fields import value_bytes
from extproc.headers import HeaderList
from extproc.phases import Phase
from extproc.plugins.loader import LoadedPlugin, load_plugin
from extproc.plugins.registry import Selection
from extproc.plugins.runner import PluginThreads
from extproc.plugins.store import KeyValueStore, MemoryStore
from extproc.recording import Recorder

if TYPE_CHECKING:
    from extproc.chain import Exchange

log = logging.getLogger("extproc.rollout")

LIVE: Final = "live"
CANDIDATE: Final = "candidate"
# The key of the outcomes in the server's dynamic metadata namespace: a plugin name cannot start with "_".
OUTCOMES_KEY: Final = "_outcomes"
# At most one logged difference per candidate in this many seconds: a shadow that differs on every
# request must not flood the log.
DIFFERENCE_LOG_INTERVAL_S: Final = 1.0
_HASH_SPACE: Final = 2**64


@dataclasses.dataclass(frozen=True)
class Observe:
    """What the server watches on every exchange, fixed at start (a reload keeps it)."""

    outcome_metadata: bool = False
    recorder: Recorder | None = None


class CandidateStats:
    """Counts of one candidate module of one plugin; kept for the process, so that a reload that keeps the
    candidate keeps its agreement rate."""

    def __init__(self, plugin: str) -> None:
        self.plugin = plugin
        self._lock = threading.Lock()
        self.comparisons: dict[tuple[Phase, bool], int] = {}  # (phase, agreed)
        self.differences: dict[tuple[Phase, str], int] = {}  # (phase, part)
        self.skipped: dict[str, int] = {}  # by reason
        self.exchanges = {LIVE: 0, CANDIDATE: 0}  # canary: exchanges served by each version

    def compared(self, phase: Phase, found: Sequence[Difference]) -> None:
        with self._lock:
            key = (phase, not found)
            self.comparisons[key] = self.comparisons.get(key, 0) + 1
            for difference in found:
                part = (phase, difference.part)
                self.differences[part] = self.differences.get(part, 0) + 1

    def skip(self, reason: str) -> None:
        with self._lock:
            self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def served(self, version: str) -> None:
        with self._lock:
            self.exchanges[version] += 1

    def summary(self) -> dict[str, Any]:
        with self._lock:
            compared = sum(self.comparisons.values())
            agreed = sum(n for (_, same), n in self.comparisons.items() if same)
            return {
                "compared": compared,
                "agreed": agreed,
                "agreement": round(agreed / compared, 4) if compared else None,
                "skipped": sum(self.skipped.values()),
                "exchanges": dict(self.exchanges),
            }


class _Stats(Collector):
    """Every candidate's counts, by plugin name, turned into Prometheus families when scraped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_module: dict[tuple[str, str], CandidateStats] = {}

    def of(self, plugin: str, sha256: str) -> CandidateStats:
        with self._lock:
            found = self._by_module.get((plugin, sha256))
            if found is None:
                found = self._by_module[(plugin, sha256)] = CandidateStats(plugin)
            return found

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            every = list(self._by_module.values())
        if not every:
            return
        comparisons = CounterMetricFamily(
            "extproc_candidate_comparisons",
            "Shadow calls whose output was compared with the live version's, by result (agree, differ)",
            labels=("plugin", "phase", "result"),
        )
        parts = CounterMetricFamily(
            "extproc_candidate_differences",
            "Differences of shadow outputs from the live ones, by part (failed, headers, body, ...)",
            labels=("plugin", "phase", "part"),
        )
        skipped = CounterMetricFamily(
            "extproc_candidate_shadows_skipped",
            "Shadow calls not made: every candidate instance busy, or its breaker open",
            labels=("plugin", "reason"),
        )
        exchanges = CounterMetricFamily(
            "extproc_candidate_exchanges",
            "Exchanges of a plugin with a canary, by the version that served them (live, candidate)",
            labels=("plugin", "version"),
        )
        for family, rows in (
            (
                comparisons,
                _sum(
                    ((s.plugin, p.value, "agree" if same else "differ"), n)
                    for s in every
                    for (p, same), n in s.comparisons.items()
                ),
            ),
            (parts, _sum(((s.plugin, p.value, part), n) for s in every for (p, part), n in s.differences.items())),
            (skipped, _sum(((s.plugin, reason), n) for s in every for reason, n in s.skipped.items())),
            (exchanges, _sum(((s.plugin, version), n) for s in every for version, n in s.exchanges.items() if n)),
        ):
            for labels, n in rows.items():
                family.add_metric(list(labels), n)
        yield from (comparisons, parts, skipped, exchanges)

    def describe(self) -> Iterable[Metric]:
        return ()


def _sum(rows: Iterable[tuple[tuple[str, ...], int]]) -> dict[tuple[str, ...], int]:
    # Several modules of one plugin (a candidate replaced by a reload) add up under the plugin's name.
    total: dict[tuple[str, ...], int] = {}
    for labels, n in rows:
        total[labels] = total.get(labels, 0) + n
    return total


_STATS: Final = _Stats()
metrics.REGISTRY.register(_STATS)
# Shadow calls in flight: the loop keeps only weak references to tasks.
_SHADOWS_RUNNING: Final[set[asyncio.Task[None]]] = set()


async def shadows_settled() -> None:
    """Wait for the shadow calls in flight (each ends within its candidate's limits)."""
    while _SHADOWS_RUNNING:
        await asyncio.wait(list(_SHADOWS_RUNNING))


class Candidate:
    """The loaded candidate of one live plugin."""

    def __init__(self, live: LoadedPlugin, plugin: LoadedPlugin, config: CandidateConfig) -> None:
        self.live = live
        self.plugin = plugin
        self.config = config
        self.stats = _STATS.of(live.name, plugin.sha256)
        self._threshold = int(config.fraction * _HASH_SPACE)
        self._salt = live.name.encode() + b"\0"
        self._logged_at = -DIFFERENCE_LOG_INTERVAL_S

    @property
    def mode(self) -> RolloutMode:
        return self.config.mode

    def picks(self, headers: HeaderList) -> bool:
        """Canary: whether this exchange goes to the candidate, by its key header's value."""
        value = headers.first(self.config.key_header)
        if value is None:
            return False
        digest = hashlib.blake2b(self._salt + value_bytes(value), digest_size=8).digest()
        return int.from_bytes(digest, "big") < self._threshold

    def shadow(self, export: Phase, payload: Mapping[str, Any], live: Result) -> None:
        """Shadow: call the candidate on `payload` in a task of its own, and compare with `live`."""
        if isinstance(live, PluginCallError) and live.kind is FailureKind.CIRCUIT_OPEN:
            return  # the live version was not called: there is nothing to compare with
        pool = self.plugin.pool
        if not pool.idle and pool.size >= pool.max_size:
            self.stats.skip("busy")
            return
        task = asyncio.get_running_loop().create_task(self._compare(export, payload, live))
        _SHADOWS_RUNNING.add(task)
        task.add_done_callback(_SHADOWS_RUNNING.discard)

    async def _compare(self, export: Phase, payload: Mapping[str, Any], live: Result) -> None:
        plugin = self.plugin
        started = time.perf_counter()
        try:
            try:
                result: Result = await plugin.call(export, payload)
                plugin.metrics.record(export, time.perf_counter() - started)
            except PluginCallError as exc:
                plugin.metrics.record(export, time.perf_counter() - started, exc.kind)
                if exc.kind is FailureKind.CIRCUIT_OPEN:
                    self.stats.skip("circuit_open")
                    return
                result = exc
            found = differences(plain(live), plain(result))
            self.stats.compared(export, found)
            now = time.monotonic()
            if found and now - self._logged_at >= DIFFERENCE_LOG_INTERVAL_S:
                self._logged_at = now
                log.info(
                    "shadow %s differs from the live version in %s: %s",
                    plugin.label,
                    export.config_name,
                    "; ".join(difference.summary for difference in found),
                    extra={"plugin": plugin.label, "phase": export.value},
                )
        except Exception:
            # Nothing of a shadow may reach the request; a bug here is still worth a traceback.
            log.exception("shadow call of %s failed unexpectedly", plugin.label, extra={"plugin": plugin.label})

    def describe(self) -> dict[str, Any]:
        plugin = self.plugin
        described: dict[str, Any] = {
            "path": str(self.config.path),
            "sha256": plugin.sha256,
            "mode": self.mode.value,
            "fraction": self.config.fraction,
            "execution_points": sorted(phase.config_name for phase in plugin.exports),
            "state": plugin.breaker.state.value,
        }
        summary = self.stats.summary()
        if self.mode is RolloutMode.CANARY:
            described |= {"key_header": self.config.key_header, "exchanges": summary["exchanges"]}
        else:
            described |= {key: summary[key] for key in ("compared", "agreed", "agreement", "skipped")}
        return described


def load_candidate(
    live: LoadedPlugin, wanted: CandidateConfig, config: Config, threads: PluginThreads, store: KeyValueStore
) -> Candidate:
    """Load `live`'s candidate: the live settings, with what the candidate entry sets instead."""
    base = live.spec
    spec = dataclasses.replace(
        base,
        path=wanted.path,
        config=base.config if wanted.config is None else wanted.config,
        on_error=wanted.on_error or base.on_error,
        error_status=wanted.error_status or base.error_status,
        timeout_ms=wanted.timeout_ms or base.timeout_ms,
        memory_limit_mb=wanted.memory_limit_mb or base.memory_limit_mb,
        pool_size=wanted.pool_size or base.pool_size,
        circuit_breaker=wanted.circuit_breaker or base.circuit_breaker,
        candidate=None,
    )
    shadow = wanted.mode is RolloutMode.SHADOW
    plugin = load_plugin(spec, config.server, threads, MemoryStore() if shadow else store, f"{live.name}@{CANDIDATE}")
    if shadow:
        plugin.runs_on_threads = "a shadow version never runs on the event loop"
    return Candidate(live, plugin, wanted)


class Rollout:
    """The candidates of one plugin set and what it watches; `begin` is its one call per exchange."""

    def __init__(self, candidates: Sequence[Candidate], observe: Observe) -> None:
        self.candidates = {candidate.live.name: candidate for candidate in candidates}
        self._canaries = tuple(c for c in candidates if c.mode is RolloutMode.CANARY)
        self._shadows = tuple(c for c in candidates if c.mode is RolloutMode.SHADOW)
        self.observe = observe
        self._watch_all = observe.outcome_metadata
        # Selections with canaries in place of live versions, made once per combination.
        self._swapped: dict[tuple[Selection, tuple[Candidate, ...]], Selection] = {}

    @classmethod
    def build(
        cls,
        config: Config,
        plugins: Sequence[LoadedPlugin],
        threads: PluginThreads,
        store: KeyValueStore,
        observe: Observe,
    ) -> Rollout | None:
        """None when there is nothing to do: then an exchange pays for none of this."""
        candidates: list[Candidate] = []
        try:
            for live in plugins:
                if live.spec.candidate is not None:
                    candidates.append(load_candidate(live, live.spec.candidate, config, threads, store))
        except BaseException:
            for candidate in candidates:
                candidate.plugin.close()
            raise
        if not candidates and observe == Observe():
            return None
        return cls(candidates, observe)

    @property
    def serving(self) -> tuple[LoadedPlugin, ...]:
        """The candidates that serve requests (canaries): Envoy must send the phases they need."""
        return tuple(candidate.plugin for candidate in self._canaries)

    def assign(self, selection: Selection, headers: HeaderList) -> Selection:
        """The selection with the canaries this exchange gets in place of their live versions."""
        return self._assign(selection, headers) if self._canaries else selection

    def watch(self, exchange: Exchange, headers: HeaderList) -> None:
        """A watch on the exchange's plugin calls, if anything is watched."""
        selection = exchange.selection
        shadows = {
            c.live: c for c in self._shadows if c.live in selection.plugins and random.random() < c.config.fraction
        }
        recorder = self.observe.recorder
        record = recorder is not None and recorder.sample()
        if shadows or record or self._watch_all:
            exchange.watch = ExchangeWatch(self.observe, shadows, record, headers.first("x-request-id") or "")

    def _assign(self, selection: Selection, headers: HeaderList) -> Selection:
        chosen = []
        for canary in self._canaries:
            if canary.live in selection.plugins:
                picked = canary.picks(headers)
                canary.stats.served(CANDIDATE if picked else LIVE)
                if picked:
                    chosen.append(canary)
        if not chosen:
            return selection
        key = (selection, tuple(chosen))
        swapped = self._swapped.get(key)
        if swapped is None:
            replace = {canary.live: canary.plugin for canary in chosen}
            swapped = self._swapped[key] = Selection.of(tuple(replace.get(p, p) for p in selection.plugins))
        return swapped

    def describe(self, name: str) -> dict[str, Any] | None:
        candidate = self.candidates.get(name)
        return None if candidate is None else candidate.describe()

    def close(self) -> None:
        for candidate in self.candidates.values():
            candidate.plugin.close()


class ExchangeWatch:
    """What is watched on one exchange: each plugin call's outcome, its record, its shadow."""

    __slots__ = ("_outcomes", "_record", "_recorder", "_request_id", "_shadows")

    def __init__(self, observe: Observe, shadows: dict[LoadedPlugin, Candidate], record: bool, request_id: str) -> None:
        self._outcomes: list[str] | None = [] if observe.outcome_metadata else None
        self._recorder = observe.recorder if record else None
        self._shadows = shadows
        self._request_id = request_id

    def observe(
        self,
        exchange: Exchange,
        plugin: LoadedPlugin,
        export: Phase,
        payload: Mapping[str, Any],
        result: Result,
        seconds: float,
    ) -> None:
        """After each plugin call of the exchange, before its result is applied."""
        outcomes = self._outcomes
        if outcomes is not None:
            outcomes.append(f"{plugin.label}:{export.config_name}={outcome(result)}/{round(seconds * 1e6)}us")
            # Envoy replaces a key of the namespace with each reply's value: every reply carries them all.
            emitted = exchange.emitted_metadata
            if emitted is None:
                emitted = exchange.emitted_metadata = {}
            emitted[OUTCOMES_KEY] = " ".join(outcomes)
        recorder = self._recorder
        if recorder is not None and recorder.wants(plugin.name):
            version = LIVE if plugin.label == plugin.name else CANDIDATE
            recorder.record(plugin.name, version, plugin.sha256, export, payload, result, seconds, self._request_id)
        shadow = self._shadows.get(plugin)
        if shadow is not None:
            shadow.shadow(export, payload, result)


def outcome(result: Result) -> str:
    """applied, no_change, failed(KIND) or skipped(breaker)."""
    if isinstance(result, PluginCallError):
        return "skipped(breaker)" if result.kind is FailureKind.CIRCUIT_OPEN else f"failed({result.kind.value})"
    return "applied" if changes_anything(result) else "no_change"
