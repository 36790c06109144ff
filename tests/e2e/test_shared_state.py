"""Shared state in Redis: two workers behind one Envoy count one rate limit; a Redis outage fails open."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from support.metrics import MetricKey, scrape_metrics
from support.processes import free_port, wait_until
from tests.examples_build import example_wasm
from tests.redis_server import RedisServer, redis_server

from .conftest import StackFactory
from .harness import Stack, request
from .test_workers import WORKERS, consecutive_free_ports, per_worker, workers_cluster

pytestmark = pytest.mark.e2e
__all__ = ["redis_server"]  # the fixture, imported so pytest finds it

CAPACITY = 5
CLIENTS = 24


def total(samples: dict[MetricKey, float], name: str, **labels: str) -> float:
    """The sum over every sample of `name` whose labels include `labels` (all workers)."""
    wanted = set(labels.items())
    return sum(value for (sample, found), value in samples.items() if sample == name and wanted <= found)


def burst(stack: Stack, client: str, count: int) -> list[int]:
    def call(_: int) -> int:
        return request("GET", f"{stack.url}/limited", headers=[("x-api-key", client)]).status

    with ThreadPoolExecutor(max_workers=count) as pool:
        return sorted(pool.map(call, range(count)))


def test_two_workers_share_one_redis_rate_limit_and_fail_open_while_it_is_down(
    redis_server: RedisServer, make_stack: StackFactory
) -> None:
    first_port, admin = consecutive_free_ports(WORKERS), free_port()
    plugin = {
        "name": "rate-limit",
        "path": str(example_wasm("rate-limit")),
        # One token per 1000 s: none comes back during the test.
        "config": {"capacity": CAPACITY, "refill_per_second": 0.001, "key_header": "x-api-key"},
        "pool_size": 8,
        # Room for two 200 ms Redis commands even on a loaded CI machine: only a stopped Redis fails one.
        "timeout_ms": 2000,
    }
    config = {
        "server": {"admin_listen": f"127.0.0.1:{admin}"},
        "state": {"backend": "redis", "url": redis_server.url, "key_prefix": "e2e:", "timeout_ms": 200},
        "plugins": [plugin],
    }

    def server_cmd(config_path: Path, port: int) -> Sequence[str]:
        listen = ["--listen", f"127.0.0.1:{port}", "--workers", str(WORKERS)]
        return [sys.executable, "-m", "extproc", "serve", "--config", str(config_path), *listen]

    admin_url = f"http://127.0.0.1:{admin}"
    with make_stack(
        json.dumps(config), server_cmd=server_cmd, extproc_port=first_port, extproc_cluster=workers_cluster(first_port)
    ) as stack:
        wait_until(lambda: stack.envoy_stat("cluster.extproc.membership_healthy") == WORKERS, 30, "healthy workers")
        shared = burst(stack, "client-1", CLIENTS)
        streams = per_worker(scrape_metrics(admin_url), "extproc_streams_total")

        redis_server.stop()
        during_outage = burst(stack, "client-1", CLIENTS)
        outage_log = stack.wait_for_server_log("state backend Redis at")
        outage_metrics = scrape_metrics(admin_url)

        redis_server.start()  # empty: no persistence
        # Each worker retries Redis at most RETRY_AFTER_S after its last failure; until then it still fails open.
        wait_until(lambda: burst(stack, "probe", CAPACITY + 1).count(429) > 0, 30, "limiting to resume")
        wait_until(lambda: "answers again" in stack.server_log(), 10, "the recovery to be logged")
        after = burst(stack, "client-2", CLIENTS)

    assert shared.count(200) == CAPACITY, shared
    assert shared.count(429) == CLIENTS - CAPACITY, shared
    assert all(n > 0 for n in streams), f"one worker served nothing: {streams}"
    assert during_outage == [200] * CLIENTS
    assert "plugins apply their state_failure policy" in outage_log
    assert total(outage_metrics, "extproc_state_failures_total", plugin="rate-limit", policy="fail_open") >= CLIENTS
    assert total(outage_metrics, "extproc_state_backend_up") < WORKERS  # a worker that failed says 0
    assert after.count(200) == CAPACITY, after
    assert after.count(429) == CLIENTS - CAPACITY, after
