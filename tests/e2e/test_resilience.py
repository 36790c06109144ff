"""A bad plugin, a bad config or a restart never takes traffic down (real Envoy, bounded load)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from support.plugins import scripted
from support.processes import wait_until

from .conftest import StackFactory
from .harness import request
from .load import Outcome, rss_bytes, run_load

pytestmark = pytest.mark.e2e

MARKER = {"headers": {"set": [{"name": "x-marker", "value": "1"}]}}
# Each misbehaving plugin with the limit that stops it.
MISBEHAVING = {
    "loop": {"timeout_ms": 5},
    "alloc": {"memory_limit_mb": 2},
    "trap": {},
    "garbage": {},
}


def marker_plugin(plugin_dir: Path) -> dict[str, Any]:
    """Runs after the bad plugin and proves the chain and the request carried on."""
    return scripted(plugin_dir, "marker", process_request_headers=MARKER)


def seen_upstream(outcome: Outcome) -> dict[str, str]:
    assert outcome.response is not None, outcome.error
    return dict(json.loads(outcome.response.body)["headers"])


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
@pytest.mark.parametrize("bad", sorted(MISBEHAVING))
def test_misbehaving_plugin_under_load(plugin_dir: Path, make_stack: StackFactory, bad: str, policy: str) -> None:
    bad_plugin = {
        "name": bad,
        "path": str(plugin_dir / f"{bad}.wasm"),
        "on_error": policy,
        "error_status": 502,
        # No breaker: every one of the requests really calls the bad plugin.
        "circuit_breaker": {"failures": 0},
        **MISBEHAVING[bad],
    }
    config = json.dumps({"plugins": [bad_plugin, marker_plugin(plugin_dir)]})
    with make_stack(config) as stack:
        outcomes = run_load(stack.url, 2000, 16, lambda i: (f"/load/{i}", [("x-original", "kept")]))
        assert stack.server.pid is not None
        rss = rss_bytes(stack.server.pid)
        after = request("GET", f"{stack.url}/after")
    errors = [o.error for o in outcomes if o.error]
    assert not errors, errors[:3]
    statuses = {o.response.status for o in outcomes if o.response}
    odd = [o.response for o in outcomes if o.response and o.response.status not in (200, 502)]
    assert not odd, f"{len(odd)} unexpected: {odd[0]}"
    if policy == "fail_open":
        assert statuses == {200}
        for outcome in outcomes:
            headers = seen_upstream(outcome)
            assert headers["x-marker"] == "1" and headers["x-original"] == "kept"
        assert after.status == 200
    else:
        assert statuses == {502}
        assert after.status == 502
    # Failed instances are dropped and replaced, so memory stays bounded.
    assert rss < 400 * 1024 * 1024, f"server RSS {rss / 2**20:.0f} MiB"


def test_breaker_opens_then_closes_after_recovery(plugin_dir: Path, make_stack: StackFactory) -> None:
    flaky = {
        "name": "flaky",
        "path": str(plugin_dir / "flaky.wasm"),
        "on_error": "fail_open",
        "circuit_breaker": {"failures": 3, "cooldown_ms": 300},
    }
    with make_stack(json.dumps({"plugins": [flaky]})) as stack:
        for _ in range(3):
            assert request("GET", f"{stack.url}/x", headers=[("x-fail", "1")]).status == 200
        stack.wait_for_server_log("circuit closed -> open")
        # Open: the plugin is not called, so failing requests log no new failure.
        for _ in range(5):
            assert request("GET", f"{stack.url}/x", headers=[("x-fail", "1")]).status == 200
        assert len(re.findall(r"'flaky' process_request_headers: trap", stack.server_log())) == 3

        def healthy_request_is_processed() -> bool:
            response = request("GET", f"{stack.url}/probe")
            return "x-flaky" in dict(json.loads(response.body)["headers"])

        # After the cooldown one probe goes through; a healthy probe closes the circuit.
        wait_until(healthy_request_is_processed, 10, "the circuit to close")
        log = stack.server_log()
        assert "circuit open -> half_open" in log and "circuit half_open -> closed" in log
