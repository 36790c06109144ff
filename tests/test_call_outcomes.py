"""Every admitted plugin call ends in exactly one breaker outcome, and failed attempts are counted apart from
failed calls. Real plugins and instances on a real event loop; no Envoy."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import extism
import pytest

from extproc.chain import REQUEST, RESPONSE, Exchange, Flow, Side, SidePlan
from extproc.config import BreakerConfig
from extproc.errors import FailureKind, PluginCallError
from extproc.headers import HeaderList
from extproc.metrics import REGISTRY
from extproc.phases import Phase
from extproc.plugins import loader, runner
from extproc.plugins.breaker import Admission, BreakerState, CircuitBreaker
from extproc.plugins.loader import LoadedPlugin
from extproc.plugins.registry import Selection
from extproc.plugins.runner import RawResult
from tests.test_breaker import Clock

PASSING: dict[str, Any] = {"phase": "REQUEST_HEADERS", "request": {"headers": []}}
# The flaky test plugin traps on a header named x-fail.
FAILING: dict[str, Any] = {"phase": "REQUEST_HEADERS", "request": {"headers": [{"name": "x-fail", "value": "1"}]}}

Ending = Callable[[LoadedPlugin, pytest.MonkeyPatch], Awaitable[None]]


async def succeeds(plugin: LoadedPlugin, monkeypatch: pytest.MonkeyPatch) -> None:
    assert await plugin.call(Phase.REQUEST_HEADERS, PASSING) is not None


async def plugin_fails(plugin: LoadedPlugin, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PluginCallError) as info:
        await plugin.call(Phase.REQUEST_HEADERS, FAILING)
    assert info.value.kind is FailureKind.TRAP


async def instance_cannot_be_created(plugin: LoadedPlugin, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> runner.Instance:
        raise extism.Error("failed to reserve the linear memory")

    plugin.pool.clear()  # the call needs a new instance
    monkeypatch.setattr(plugin.pool, "factory", refuse)
    with pytest.raises(PluginCallError, match="cannot instantiate: failed to reserve") as info:
        await plugin.call(Phase.REQUEST_HEADERS, PASSING)
    assert info.value.kind is FailureKind.MEMORY


async def input_cannot_be_encoded(plugin: LoadedPlugin, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(payload: Any) -> bytes:
        raise TypeError("a bug of ours")

    monkeypatch.setattr(plugin, "encode", broken)
    with pytest.raises(TypeError, match="a bug of ours"):
        await plugin.call(Phase.REQUEST_HEADERS, PASSING)


async def cancelled(plugin: LoadedPlugin, monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    running = loop.create_future()
    release = threading.Event()

    def held(*args: Any) -> RawResult:
        loop.call_soon_threadsafe(running.set_result, None)
        release.wait()
        return runner.invoke(*args)

    monkeypatch.setattr(runner, "invoke", held)
    call = asyncio.create_task(plugin.call(Phase.REQUEST_HEADERS, PASSING))
    try:
        await running
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    finally:
        release.set()


@pytest.mark.parametrize(
    ("ending", "state", "next_call"),
    [
        (succeeds, BreakerState.CLOSED, Admission.ADMITTED),
        (plugin_fails, BreakerState.OPEN, Admission.REFUSED),
        (instance_cannot_be_created, BreakerState.OPEN, Admission.REFUSED),
        # Neither says anything about the plugin: the next caller probes at once.
        (input_cannot_be_encoded, BreakerState.OPEN, Admission.PROBE),
        (cancelled, BreakerState.OPEN, Admission.PROBE),
    ],
    ids=["success", "plugin-fails", "instance-cannot-be-created", "input-cannot-be-encoded", "cancelled"],
)
def test_a_probe_call_always_decides_and_never_leaves_the_breaker_half_open(
    plugin_dir: Path,
    load: Any,
    monkeypatch: pytest.MonkeyPatch,
    ending: Ending,
    state: BreakerState,
    next_call: Admission,
) -> None:
    # On plugin threads, where instances are created and calls can be abandoned mid-way.
    plugin = load(plugin_dir / "flaky.wasm", {"inline_call_budget_us": 0})
    clock = Clock()
    plugin.breaker = CircuitBreaker(plugin.name, BreakerConfig(failures=1, cooldown_ms=1000), clock)
    plugin.breaker.record_failure()
    clock.now += 1  # the cooldown is over: the next call is the probe

    asyncio.run(asyncio.wait_for(ending(plugin, monkeypatch), 20))
    assert plugin.breaker.state is state
    assert plugin.breaker.admit() is next_call


def count(name: str, plugin: LoadedPlugin, **labels: str) -> float:
    found = REGISTRY.get_sample_value(name, {"plugin": plugin.name, "phase": "process_request_headers", **labels})
    return found or 0.0


def test_failed_attempts_are_counted_apart_from_the_calls_they_belong_to(
    plugin_dir: Path, load: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = load(plugin_dir / "flaky.wasm", retries=1, circuit_breaker={"failures": 0})
    failing = plugin.encode(FAILING)
    first = [True]

    def first_attempt_traps(instance: runner.Instance, export: str, data: bytes, *rest: Any) -> RawResult:
        failed, first[0] = first[0], False
        return runner.invoke(instance, export, failing if failed else data, *rest)

    monkeypatch.setattr(loader, "invoke", first_attempt_traps)
    request = Side(SidePlan(REQUEST, Flow.NONE, False, False), HeaderList([(":path", "/")]), False)
    response = Side(SidePlan(RESPONSE, Flow.NONE, False, False), None, False)
    exchange = Exchange(Selection.of((plugin,)), request, response, {}, {}, None)

    async def two_calls() -> None:
        assert await exchange.run(Phase.REQUEST_HEADERS) is None  # the retry succeeded
        request.headers = HeaderList([(":path", "/"), ("x-fail", "1")])
        assert await exchange.run(Phase.REQUEST_HEADERS) is plugin.failure_reply  # both attempts trapped

    asyncio.run(two_calls())
    assert count("extproc_plugin_calls_total", plugin) == 2
    assert count("extproc_plugin_failures_total", plugin, kind="trap") == 1
    assert count("extproc_plugin_attempt_failures_total", plugin, kind="trap") == 3
