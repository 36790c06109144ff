"""Where a plugin call runs (event loop or plugin thread), and what abandoning one does.

Real plugins, real Extism instances, a real event loop; no Envoy.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import extism
import pytest

from extproc.config import parse_config
from extproc.contract import DECLARE_PHASES
from extproc.errors import FailureKind, PluginCallError
from extproc.metrics import plugin_metrics
from extproc.phases import Phase
from extproc.plugins import loader, runner
from extproc.plugins.breaker import BreakerState
from extproc.plugins.loader import FUEL_PER_MS, FuelLimitedModule, classify, load_plugin
from extproc.plugins.runner import PluginThreads, RawResult, invoke
from extproc.plugins.store import MemoryStore
from extproc.plugins.wasm import WasmFormatError, imports
from tests.examples_build import example_wasm


@pytest.fixture
def call_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the threads plugin calls run on, in order, whichever path they take."""
    seen: list[str] = []

    def spy(instance: Any, export: str, *args: Any) -> RawResult:
        if export != DECLARE_PHASES:  # asked once at load, not a call of a phase
            seen.append(threading.current_thread().name)
        return invoke(instance, export, *args)

    monkeypatch.setattr(loader, "invoke", spy)
    monkeypatch.setattr(runner, "invoke", spy)
    return seen


def body_input(size: int) -> dict[str, Any]:
    return {"phase": "REQUEST_BODY", "request": {"headers": [], "body": {"text": "a" * size}}}


HEADERS_INPUT: dict[str, Any] = {"phase": "REQUEST_HEADERS", "request": {"headers": []}}


def test_a_quick_plugin_runs_on_the_loop_thread(plugin_dir: Path, load: Any, call_threads: list[str]) -> None:
    plugin = load(plugin_dir / "scripted.wasm")

    async def scenario() -> str:
        await plugin.call(Phase.REQUEST_HEADERS, HEADERS_INPUT)
        return threading.current_thread().name

    loop_thread = asyncio.run(scenario())
    assert plugin.inline
    assert call_threads == [loop_thread]


def test_a_large_input_runs_on_a_thread_and_the_plugin_stays_inline(
    plugin_dir: Path, load: Any, call_threads: list[str]
) -> None:
    plugin = load(plugin_dir / "transform.wasm", config={"suffix": "!"}, memory_limit_mb=64, timeout_ms=5000)
    asyncio.run(plugin.call(Phase.REQUEST_BODY, body_input(100_000)))
    assert call_threads == ["test-plugin-0"]
    assert plugin.inline


def spending(cpu_seconds: float) -> Any:
    """The loader's invoke as patched now (by call_threads, say), also spending this much CPU on the calling
    thread as a slow plugin would."""
    inner: Callable[..., RawResult] = vars(loader)["invoke"]

    def slow_invoke(*args: Any) -> RawResult:
        until = time.thread_time() + cpu_seconds
        while time.thread_time() < until:
            pass
        return inner(*args)

    return slow_invoke


def test_a_call_ten_times_over_the_budget_moves_the_plugin_to_the_threads_for_good(
    plugin_dir: Path,
    load: Any,
    caplog: pytest.LogCaptureFixture,
    call_threads: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plugin = load(plugin_dir / "transform.wasm", {"inline_call_budget_us": 1000}, config={"suffix": "!"})

    async def three_calls() -> None:
        monkeypatch.setattr(loader, "invoke", spending(0.015))
        await plugin.call(Phase.REQUEST_BODY, body_input(10))
        assert plugin.inline  # a fresh instance's first call also pays for its new memory: not held against it
        await plugin.call(Phase.REQUEST_BODY, body_input(10))
        assert not plugin.inline
        await plugin.call(Phase.REQUEST_BODY, body_input(10))

    asyncio.run(three_calls())
    assert call_threads[2] == "test-plugin-0"
    assert "process_request_body took" in plugin.runs_on_threads
    assert "its calls run on plugin threads from now on" in caplog.text


def test_calls_over_the_budget_on_average_move_the_plugin_to_the_threads(
    plugin_dir: Path, load: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = load(plugin_dir / "transform.wasm", {"inline_call_budget_us": 1000}, config={"suffix": "!"})

    async def calls() -> int:
        await plugin.call(Phase.REQUEST_BODY, body_input(10))  # warms the instance
        monkeypatch.setattr(loader, "invoke", spending(0.003))
        for made in range(1, 50):
            await plugin.call(Phase.REQUEST_BODY, body_input(10))
            if not plugin.inline:
                return made
        return 0

    # Three times the budget each: the average passes it within a few calls, not on the first.
    assert 1 < asyncio.run(calls()) < 10
    assert "on average" in plugin.runs_on_threads


def test_one_call_a_few_times_over_the_budget_among_quick_ones_is_not_held_against_the_plugin(
    plugin_dir: Path, load: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = load(plugin_dir / "transform.wasm", {"inline_call_budget_us": 1000}, config={"suffix": "!"})

    async def calls() -> None:
        for _ in range(20):
            await plugin.call(Phase.REQUEST_BODY, body_input(10))
        with monkeypatch.context() as patched:
            patched.setattr(loader, "invoke", spending(0.004))  # a page fault storm, a busy core
            await plugin.call(Phase.REQUEST_BODY, body_input(10))
        for _ in range(20):
            await plugin.call(Phase.REQUEST_BODY, body_input(10))

    asyncio.run(calls())
    assert plugin.inline, plugin.runs_on_threads


def test_a_garbage_collection_during_a_call_is_not_held_against_the_plugin(
    plugin_dir: Path, load: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin = load(plugin_dir / "transform.wasm", {"inline_call_budget_us": 1000}, config={"suffix": "!"})

    def collecting(*args: Any) -> RawResult:
        gc.collect()  # as the interpreter may at any allocation; with many objects it takes milliseconds
        for _ in range(20_000):  # and some more CPU, so the call is surely over the budget
            gc.collect(0)
        return invoke(*args)

    async def calls() -> None:
        await plugin.call(Phase.REQUEST_BODY, body_input(10))  # warms the instance
        monkeypatch.setattr(loader, "invoke", collecting)
        await plugin.call(Phase.REQUEST_BODY, body_input(10))

    asyncio.run(calls())
    assert plugin.inline


def test_a_full_pool_fails_the_call_but_leaves_the_breaker_closed(plugin_dir: Path, load: Any) -> None:
    plugin = load(
        plugin_dir / "scripted.wasm",
        timeout_ms=50,
        pool_size=1,
        circuit_breaker={"failures": 1},
    )
    held = plugin.pool.take_idle()  # the only instance, busy elsewhere
    assert held is not None
    with pytest.raises(PluginCallError) as info:
        asyncio.run(plugin.call(Phase.REQUEST_HEADERS, HEADERS_INPUT))
    assert info.value.kind is FailureKind.POOL_EXHAUSTED
    # An overloaded server is not an unwell plugin: with failures: 1 a plugin failure would have opened it.
    assert plugin.breaker.state is BreakerState.CLOSED


@pytest.mark.parametrize(
    ("example", "server", "reason"),
    [
        ("token-introspect", {}, "it makes HTTP calls"),
        ("header-rewrite", {"inline_call_budget_us": 0}, "server.inline_call_budget_us is 0"),
        ("header-rewrite", {}, ""),
        ("rate-limit", {}, ""),  # its key-value store is in memory
    ],
    ids=["http-calls", "budget-zero", "plain", "memory-state"],
)
def test_which_plugins_may_run_on_the_loop(load: Any, example: str, server: dict[str, Any], reason: str) -> None:
    assert load(example_wasm(example), server).runs_on_threads == reason


def test_wasm_imports_are_read_from_the_module() -> None:
    found = imports(example_wasm("rate-limit").read_bytes())
    assert ("extism:host/user", "extproc_kv_incr") not in found  # tree-shaken: the plugin never calls it
    assert ("extism:host/user", "extproc_kv_cas") in found
    assert ("extism:host/env", "input_length") in found


@pytest.mark.parametrize(
    "wasm",
    [b"", b"\x00asm", b"\x00asm\x01\x00\x00\x00\x02\x05", b"\x00asm\x01\x00\x00\x00\x02\x03\x01\x05"],
    ids=["empty", "header-only-short", "section-past-end", "name-past-end"],
)
def test_malformed_modules_are_refused_by_the_import_reader(wasm: bytes) -> None:
    with pytest.raises(WasmFormatError):
        imports(wasm)


def test_an_abandoned_running_call_is_interrupted_and_counted_as_cancelled(plugin_dir: Path, load: Any) -> None:
    plugin = load(
        plugin_dir / "loop.wasm",
        {"inline_call_budget_us": 0},
        timeout_ms=30_000,
        circuit_breaker={"failures": 1},
    )
    phase = plugin_metrics(plugin.name).phases[Phase.REQUEST_HEADERS]

    async def scenario() -> None:
        call = asyncio.create_task(plugin.call(Phase.REQUEST_HEADERS, HEADERS_INPUT))
        # Wait until the call runs on its thread, then walk away from it.
        while not plugin.pool.size or plugin.pool.idle:
            await asyncio.sleep(0.01)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # The interrupted instance comes back to the loop and is dropped, not reused.
        while plugin.pool.size:
            await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(scenario(), 20))
    seen = phase.snapshot()
    assert seen.cancelled == 1
    assert sum(seen.buckets) == 0 and not any(seen.failures.values()) and not any(seen.attempt_failures.values())
    assert plugin.breaker.state is BreakerState.CLOSED


def test_a_queued_call_whose_caller_left_never_starts(
    plugin_dir: Path, tmp_path: Path, call_threads: list[str]
) -> None:
    one_thread = PluginThreads(1, name="one")
    try:
        config = parse_config(
            {
                "server": {"inline_call_budget_us": 0},
                "plugins": [
                    {"name": "q-loop", "path": str(plugin_dir / "loop.wasm"), "timeout_ms": 30_000},
                    {"name": "q-echo", "path": str(plugin_dir / "scripted.wasm")},
                ],
            },
            tmp_path / "c.yaml",
        )
        spinner, echo = (load_plugin(spec, config.server, one_thread, MemoryStore()) for spec in config.plugins)

        async def scenario() -> None:
            blocker = asyncio.create_task(spinner.call(Phase.REQUEST_HEADERS, HEADERS_INPUT))
            while spinner.pool.idle:  # the only thread is busy spinning
                await asyncio.sleep(0.01)
            queued = asyncio.create_task(echo.call(Phase.REQUEST_HEADERS, HEADERS_INPUT))
            await asyncio.sleep(0.05)
            queued.cancel()
            blocker.cancel()
            for task in (queued, blocker):
                with pytest.raises(asyncio.CancelledError):
                    await task
            # Once the thread is free it skips the abandoned call and hands its instance back intact.
            while echo.pool.idle != 1:
                await asyncio.sleep(0.01)

        asyncio.run(asyncio.wait_for(scenario(), 20))
        assert call_threads == ["one-0"]  # the spinner's call only
        assert plugin_metrics("q-echo").phases[Phase.REQUEST_HEADERS].snapshot().cancelled == 1
        spinner.close()
        echo.close()
    finally:
        one_thread.close()


def test_interrupting_one_instance_leaves_a_concurrent_call_of_the_same_plugin_alone(
    plugin_dir: Path, load: Any
) -> None:
    plugin = load(plugin_dir / "transform.wasm", config={"suffix": "!"}, memory_limit_mb=256, timeout_ms=30_000)
    big = plugin.encode(body_input(6 * 1024 * 1024))

    def run_pair() -> dict[str, Any]:
        slow, victim = plugin.pool.factory(), plugin.pool.factory()
        results: dict[str, Any] = {}
        running = threading.Barrier(3)

        def run(name: str, instance: Any) -> None:
            running.wait()
            result = invoke(instance, "process_request_body", big, plugin.host, plugin.max_output_bytes)
            results[name] = str(result.error) if result.error else len(result.output or b"")

        pair = [threading.Thread(target=run, args=item) for item in (("slow", slow), ("victim", victim))]
        for thread in pair:
            thread.start()
        running.wait()
        # A cancel that lands before the call has started is ignored, so keep cancelling until it stops.
        while pair[0].is_alive():
            slow.cancel_handle.cancel()
            pair[0].join(0.005)
        pair[1].join(60)
        return results

    # Extism now and then misses a cancel altogether (the fuel backstop exists for that); try again then.
    for _ in range(5):
        results = run_pair()
        assert isinstance(results["victim"], int) and results["victim"] > 6 * 1024 * 1024, results
        if results["slow"] == "timeout":  # how Extism reports a cancelled call
            return
    pytest.fail(f"no cancel took effect in five tries: {results}")


def test_fuel_ends_a_spinning_call_that_no_timer_interrupts(plugin_dir: Path) -> None:
    manifest = {"wasm": [{"data": (plugin_dir / "loop.wasm").read_bytes()}], "timeout_ms": 600_000}
    instance = extism.Plugin(FuelLimitedModule(manifest, (), 10_000_000), functions=[])
    with pytest.raises(extism.Error, match="out of fuel") as info:
        instance.call("process_request_headers", b"")
    assert classify(info.value) is FailureKind.TIMEOUT
    assert FUEL_PER_MS * 100 > 10_000_000


def test_pool_waits_end_in_pool_exhausted_not_in_a_held_thread(plugin_dir: Path, load: Any) -> None:
    plugin = load(
        plugin_dir / "loop.wasm",
        {"inline_call_budget_us": 0},
        timeout_ms=300,
        pool_size=1,
        on_error="fail_open",
        circuit_breaker={"failures": 0},
    )

    async def scenario() -> list[Any]:
        calls = [plugin.call(Phase.REQUEST_HEADERS, HEADERS_INPUT) for _ in range(3)]
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    kinds = sorted(outcome.kind.value for outcome in outcomes if isinstance(outcome, PluginCallError))
    assert kinds.count("timeout") >= 1
    assert set(kinds) <= {"timeout", "pool_exhausted"}
    assert len(kinds) == 3  # every outcome is a typed failure, none an exception of ours
