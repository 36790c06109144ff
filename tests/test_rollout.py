"""Candidate versions (shadow, canary) and the per-exchange watch (outcome metadata), in process: the server's
stream code with real ext_proc messages (extproc.testing's Envoy stand-in)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extproc import rollout
from extproc.admin import describe_plugins
from extproc.config import parse_config
from extproc.metrics import REGISTRY
from extproc.plugins.registry import PluginSet
from extproc.plugins.runner import PluginThreads
from extproc.reload import Reloader
from extproc.rollout import OUTCOMES_KEY, Observe
from extproc.testing import HttpRequest, HttpResponse, Result, exchange_async, request, response
from support.plugins import scripted

_NAMES = itertools.count()


def set_header(name: str, value: str) -> dict[str, Any]:
    return {"headers": {"set": [{"name": name, "value": value}]}}


def unique(prefix: str) -> str:
    """Candidate counts and metrics live as long as the process: each test gets names of its own."""
    return f"{prefix}-{next(_NAMES)}"


@pytest.fixture
def load_set(tmp_path: Path, threads: PluginThreads) -> Iterator[Any]:
    loaded: list[PluginSet] = []

    def make(*entries: dict[str, Any], observe: Observe | None = None) -> PluginSet:
        config = parse_config({"plugins": list(entries)}, tmp_path / "extproc.yaml")
        plugins = PluginSet.load(config, threads, observe)
        loaded.append(plugins)
        return plugins

    yield make
    for plugins in loaded:
        plugins.close()


def run(plugins: PluginSet, req: HttpRequest, resp: HttpResponse | None = None) -> Result:
    """One exchange, then the shadow calls it started."""

    async def exchange_and_shadows() -> Result:
        result = await exchange_async(plugins, req, resp)
        await rollout.shadows_settled()
        return result

    return asyncio.run(exchange_and_shadows())


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def candidate_of(plugin_dir: Path, wasm: str = "scripted.wasm", **fields: Any) -> dict[str, Any]:
    return {"path": str(plugin_dir / wasm), "fraction": 1, **fields}


def scripted_config(**outputs: Any) -> dict[str, str]:
    return {export: json.dumps(output) for export, output in outputs.items()}


# --- shadow ---------------------------------------------------------------------------------------


def test_a_shadow_is_compared_and_never_applied(plugin_dir: Path, load_set: Any) -> None:
    name = unique("shadowed")
    entry = scripted(plugin_dir, name, process_request_headers=set_header("x-version", "1"))
    entry["candidate"] = candidate_of(
        plugin_dir, config=scripted_config(process_request_headers=set_header("x-version", "2"))
    )
    plugins = load_set(entry)
    results = [run(plugins, request("GET", "/")) for _ in range(3)]
    assert all(result.upstream is not None and result.upstream.header("x-version") == "1" for result in results)
    assert (
        sample("extproc_candidate_comparisons_total", plugin=name, phase="process_request_headers", result="differ")
        == 3
    )
    assert (
        sample("extproc_candidate_differences_total", plugin=name, phase="process_request_headers", part="headers") == 3
    )
    assert sample("extproc_plugin_calls_total", plugin=f"{name}@candidate", phase="process_request_headers") == 3
    described = describe_plugins(plugins.config, plugins)[0]["candidate"]
    assert described | {"sha256": ""} == {
        "path": str(plugin_dir / "scripted.wasm"),
        "sha256": "",
        "mode": "shadow",
        "fraction": 1.0,
        "execution_points": ["request_headers"],
        "state": "closed",
        "compared": 3,
        "agreed": 0,
        "agreement": 0.0,
        "skipped": 0,
    }


def test_a_shadow_that_agrees_is_counted_so(plugin_dir: Path, load_set: Any) -> None:
    name = unique("agreeing")
    entry = scripted(plugin_dir, name, process_request_headers=set_header("x-version", "1"))
    entry["candidate"] = candidate_of(plugin_dir)  # the live config: the same output
    plugins = load_set(entry)
    run(plugins, request())
    assert (
        sample("extproc_candidate_comparisons_total", plugin=name, phase="process_request_headers", result="agree") == 1
    )
    assert describe_plugins(plugins.config, plugins)[0]["candidate"]["agreement"] == 1.0


def test_a_failing_shadow_never_reaches_the_client(plugin_dir: Path, load_set: Any) -> None:
    name = unique("trapping-shadow")
    entry = scripted(plugin_dir, name, process_request_headers=set_header("x-version", "1"))
    entry["candidate"] = candidate_of(plugin_dir, "trap.wasm")
    plugins = load_set(entry)
    result = run(plugins, request())
    assert result.upstream is not None and result.upstream.header("x-version") == "1"
    assert (
        sample("extproc_candidate_differences_total", plugin=name, phase="process_request_headers", part="failed") == 1
    )
    assert (
        sample(
            "extproc_plugin_failures_total", plugin=f"{name}@candidate", phase="process_request_headers", kind="trap"
        )
        == 1
    )


def test_the_request_does_not_wait_for_its_shadow(plugin_dir: Path, load_set: Any) -> None:
    entry = scripted(plugin_dir, unique("slow-shadow"), process_request_headers=set_header("x-version", "1"))
    # A candidate that never returns: only its timeout ends it, long after the exchange is answered.
    entry["candidate"] = candidate_of(plugin_dir, "loop.wasm", timeout_ms=300)
    plugins = load_set(entry)

    async def exchange_then_look() -> tuple[Result, int]:
        result = await exchange_async(plugins, request())
        pending = len([task for task in rollout._SHADOWS_RUNNING if not task.done()])
        await rollout.shadows_settled()
        return result, pending

    result, pending = asyncio.run(exchange_then_look())
    assert result.upstream is not None and result.upstream.header("x-version") == "1"
    assert pending == 1


def test_a_shadow_only_runs_on_its_fraction(plugin_dir: Path, load_set: Any) -> None:
    name = unique("never-shadowed")
    entry = scripted(plugin_dir, name, process_request_headers=set_header("x-version", "1"))
    entry["candidate"] = candidate_of(plugin_dir, fraction=0)
    plugins = load_set(entry)
    run(plugins, request())
    assert sample("extproc_plugin_calls_total", plugin=f"{name}@candidate", phase="process_request_headers") == 0


# --- canary ---------------------------------------------------------------------------------------


def canary_set(plugin_dir: Path, load_set: Any, name: str, **candidate: Any) -> PluginSet:
    entry = scripted(plugin_dir, name, process_request_headers=set_header("x-version", "live"))
    entry["candidate"] = candidate_of(
        plugin_dir,
        mode="canary",
        config=scripted_config(process_request_headers=set_header("x-version", "candidate")),
        **candidate,
    )
    return load_set(entry)  # type: ignore[no-any-return]


def version_seen(plugins: PluginSet, headers: dict[str, str]) -> str | None:
    result = run(plugins, request("GET", "/", headers))
    assert result.upstream is not None
    return result.upstream.header("x-version")


def test_a_canary_serves_its_share_of_the_keys_and_each_key_keeps_its_version(plugin_dir: Path, load_set: Any) -> None:
    name = unique("canaried")
    plugins = canary_set(plugin_dir, load_set, name, fraction=0.3, key_header="x-user")
    users = [f"user-{i}" for i in range(300)]
    first = {user: version_seen(plugins, {"x-user": user}) for user in users}
    share = sum(version == "candidate" for version in first.values()) / len(users)
    assert 0.22 <= share <= 0.38
    again = {user: version_seen(plugins, {"x-user": user}) for user in users[:50]}
    assert again == {user: first[user] for user in users[:50]}
    served = sample("extproc_candidate_exchanges_total", plugin=name, version="candidate")
    assert served == sum(version == "candidate" for version in [*first.values(), *again.values()])


def test_without_its_key_an_exchange_gets_the_live_version(plugin_dir: Path, load_set: Any) -> None:
    plugins = canary_set(plugin_dir, load_set, unique("keyless"), fraction=1, key_header="x-user")
    assert version_seen(plugins, {}) == "live"
    assert version_seen(plugins, {"x-user": "anyone"}) == "candidate"


def test_a_canary_fails_by_its_own_policy_and_counts_under_its_own_label(plugin_dir: Path, load_set: Any) -> None:
    name = unique("failing-canary")
    entry = scripted(plugin_dir, name, process_request_headers=set_header("x-version", "live"))
    entry["candidate"] = candidate_of(plugin_dir, "trap.wasm", mode="canary", on_error="fail_open")
    plugins = load_set(entry)
    result = run(plugins, request("GET", "/", {"x-request-id": "r1"}))
    assert result.upstream is not None and result.upstream.header("x-version") is None  # skipped, not live
    assert (
        sample(
            "extproc_plugin_failures_total", plugin=f"{name}@candidate", phase="process_request_headers", kind="trap"
        )
        == 1
    )
    assert sample("extproc_plugin_calls_total", plugin=name, phase="process_request_headers") == 0


def test_a_canary_may_need_phases_the_live_version_does_not(plugin_dir: Path, load_set: Any) -> None:
    entry = scripted(plugin_dir, unique("more-phases"), process_request_headers=set_header("x-version", "live"))
    entry["candidate"] = candidate_of(
        plugin_dir,
        mode="canary",
        config=scripted_config(process_response_headers=set_header("x-answered-by", "candidate")),
    )
    entry["execution_points"] = None  # each version runs what it declares or exports
    entry["config"] = scripted_config(process_request_headers=set_header("x-version", "live"))
    entry["candidate"]["config"]["declare_phases"] = json.dumps({"phases": ["response_headers"]})
    entry["config"]["declare_phases"] = json.dumps({"phases": ["request_headers"]})
    plugins = load_set(entry)
    result = run(plugins, request("GET", "/", {"x-request-id": "r2"}), response(200))
    assert result.response is not None and result.response.header("x-answered-by") == "candidate"
    assert result.upstream is not None and result.upstream.header("x-version") is None


# --- outcome metadata -----------------------------------------------------------------------------


def test_each_call_s_outcome_and_time_go_to_envoy_metadata(plugin_dir: Path, load_set: Any) -> None:
    plugins = load_set(
        scripted(plugin_dir, "changes", process_request_headers=set_header("x-a", "1")),
        scripted(plugin_dir, "quiet", process_request_headers={}),
        {"name": "breaks", "path": str(plugin_dir / "trap.wasm"), "on_error": "fail_open"},
        scripted(plugin_dir, "answers", process_response_headers={"immediate_response": {"status": 418}}),
        observe=Observe(outcome_metadata=True),
    )
    result = run(plugins, request(), response(200))
    entries = result.metadata[OUTCOMES_KEY].split(" ")
    outcomes = [entry.rpartition("/")[0] for entry in entries]
    assert outcomes == [
        "changes:request_headers=applied",
        "quiet:request_headers=no_change",
        "breaks:request_headers=failed(trap)",
        "answers:response_headers=applied",
    ]
    assert all(entry.endswith("us") and entry.rpartition("/")[2][:-2].isdigit() for entry in entries)
    assert result.status == 418


def test_a_call_refused_by_the_breaker_is_shown_as_skipped(plugin_dir: Path, load_set: Any) -> None:
    breaking = {
        "name": "opens",
        "path": str(plugin_dir / "trap.wasm"),
        "on_error": "fail_open",
        "circuit_breaker": {"failures": 1, "cooldown_ms": 60_000},
    }
    plugins = load_set(breaking, observe=Observe(outcome_metadata=True))
    first, second = run(plugins, request()), run(plugins, request())
    assert first.metadata[OUTCOMES_KEY].startswith("opens:request_headers=failed(trap)/")
    assert second.metadata[OUTCOMES_KEY].startswith("opens:request_headers=skipped(breaker)/")


def test_nothing_is_watched_without_candidates_recording_or_outcome_metadata(plugin_dir: Path, load_set: Any) -> None:
    plugins = load_set(scripted(plugin_dir, "plain", process_request_headers=set_header("x-a", "1")))
    assert plugins.rollout is None
    assert OUTCOMES_KEY not in run(plugins, request()).metadata


def test_a_changed_candidate_file_is_seen_by_the_reload_watch(tmp_path: Path, plugin_dir: Path, load_set: Any) -> None:
    candidate = tmp_path / "v2.wasm"
    candidate.write_bytes((plugin_dir / "scripted.wasm").read_bytes())
    entry = scripted(plugin_dir, unique("watched"), process_request_headers={})
    entry["candidate"] = {"path": str(candidate), "fraction": 0.5}
    plugins = load_set(entry)
    (tmp_path / "extproc.yaml").write_text(json.dumps({"plugins": [entry]}))  # the file load_set names
    reloader = Reloader(plugins, lambda _: None, plugins.plugins[0].threads)
    assert not reloader.changed_on_disk()
    candidate.write_bytes(candidate.read_bytes() + b"\0")  # a custom section's worth of change
    assert reloader.changed_on_disk()
