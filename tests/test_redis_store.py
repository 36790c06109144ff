"""The Redis state backend against a real redis-server: same semantics as MemoryStore, atomic across
stores (as across processes), and what plugins see when Redis is down under each state_failure policy."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from extproc import metrics
from extproc.config import FailurePolicy, StateBackend, StateConfig, parse_config
from extproc.plugins import redis_store
from extproc.plugins.host import PluginHost
from extproc.plugins.redis_store import RETRY_AFTER_S, RedisStore, shared_store
from extproc.plugins.registry import state_store
from extproc.plugins.store import StoreError, StoreUnavailable
from extproc.testing import PluginHarness, request
from tests.examples_build import example_wasm
from tests.redis_server import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, imported so pytest finds it


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_store(server: RedisServer, **kwargs: object) -> RedisStore:
    settings: dict[str, object] = {"key_prefix": "t:", "timeout_ms": 200, "max_connections": 16, **kwargs}
    return RedisStore(server.url, **settings)  # type: ignore[arg-type]


@pytest.fixture
def raw(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def test_get_set_delete_under_the_key_prefix(redis_server: RedisServer, raw: redis.Redis) -> None:
    store = make_store(redis_server)
    assert store.get(b"k") is None
    store.set(b"k", b"\x00v\xff", 0)
    assert store.get(b"k") == b"\x00v\xff"
    assert raw.get(b"t:k") == b"\x00v\xff"
    assert raw.pttl(b"t:k") == -1  # no expiry
    assert store.delete(b"k") is True
    assert store.delete(b"k") is False
    assert store.get(b"k") is None


def test_set_with_ttl(redis_server: RedisServer, raw: redis.Redis) -> None:
    store = make_store(redis_server)
    store.set(b"k", b"v", 60_000)
    assert 0 < raw.pttl(b"t:k") <= 60_000


def test_incr_sets_the_ttl_only_when_it_creates_the_key(redis_server: RedisServer, raw: redis.Redis) -> None:
    store = make_store(redis_server)
    assert store.incr(b"c", 1, 60_000) == 1
    raw.pexpire(b"t:c", 30_000)  # stands in for time passing
    assert store.incr(b"c", 5, 60_000) == 6
    assert 0 < raw.pttl(b"t:c") <= 30_000
    assert store.incr(b"forever", -2, 0) == -2
    assert raw.pttl(b"t:forever") == -1
    store.set(b"plain", b"10", 0)
    assert store.incr(b"plain", 1, 60_000) == 11
    assert raw.pttl(b"t:plain") == -1  # an existing key keeps its (lack of) expiry, as in MemoryStore


def test_incr_of_a_non_integer_is_a_store_error_not_an_outage(redis_server: RedisServer) -> None:
    store = make_store(redis_server)
    store.set(b"text", b"abc", 0)
    with pytest.raises(StoreError, match="not a decimal integer") as info:
        store.incr(b"text", 1, 0)
    assert not isinstance(info.value, StoreUnavailable)
    assert store.get(b"text") == b"abc"


def test_compare_and_set(redis_server: RedisServer, raw: redis.Redis) -> None:
    store = make_store(redis_server)
    assert store.compare_and_set(b"k", b"x", b"1", 0) is False  # absent is not b"x"
    assert store.compare_and_set(b"k", None, b"1", 0) is True
    assert store.compare_and_set(b"k", None, b"2", 0) is False  # present now
    assert store.compare_and_set(b"k", b"", b"2", 0) is False  # an empty expectation is not "absent"
    assert store.compare_and_set(b"k", b"1", b"2", 60_000) is True
    assert store.get(b"k") == b"2"
    assert 0 < raw.pttl(b"t:k") <= 60_000
    store.set(b"empty", b"", 0)
    assert store.compare_and_set(b"empty", None, b"x", 0) is False
    assert store.compare_and_set(b"empty", b"", b"x", 0) is True


def test_negative_ttl_is_refused(redis_server: RedisServer) -> None:
    store = make_store(redis_server)
    for call in (
        lambda: store.set(b"k", b"v", -1),
        lambda: store.incr(b"k", 1, -1),
        lambda: store.compare_and_set(b"k", None, b"v", -1),
    ):
        with pytest.raises(StoreError, match="ttl_ms must be 0"):
            call()


def test_two_stores_count_exactly_under_contention(redis_server: RedisServer) -> None:
    # Two stores with their own pools stand for two server processes.
    stores = [make_store(redis_server), make_store(redis_server)]
    per_thread, threads = 50, 8

    def work(index: int) -> None:
        store = stores[index % 2]
        for _ in range(per_thread):
            store.incr(b"hits", 1, 0)
            while True:  # a read-modify-write counter built on compare-and-set
                current = store.get(b"cas")
                if store.compare_and_set(b"cas", current, str(int(current or b"0") + 1).encode(), 0):
                    break

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(work, range(threads)))
    assert stores[0].get(b"hits") == str(per_thread * threads).encode()
    assert stores[1].get(b"cas") == str(per_thread * threads).encode()


def test_a_down_redis_fails_fast_then_is_retried(redis_server: RedisServer) -> None:
    clock = FakeClock()
    store = make_store(redis_server, clock=clock)
    store.set(b"k", b"v", 0)
    redis_server.stop()
    with pytest.raises(StoreUnavailable, match=r"Redis at redis://127\.0\.0\.1"):
        store.get(b"k")
    assert gauge_up() == 0
    # Within the retry period no command reaches Redis, even once it is back.
    redis_server.start()
    with pytest.raises(StoreUnavailable, match=r"is unavailable \(ConnectionError"):
        store.get(b"k")
    clock.now += RETRY_AFTER_S
    assert store.get(b"k") is None  # a fresh Redis without persistence: the value is gone
    assert gauge_up() == 1


def gauge_up() -> float:
    value = metrics.REGISTRY.get_sample_value("extproc_state_backend_up", {"backend": "redis"})
    assert value is not None
    return value


def test_no_command_starts_without_time_for_it_in_the_plugin_call(redis_server: RedisServer) -> None:
    store = make_store(redis_server, timeout_ms=50)
    host = PluginHost("p", store, timeout_ms=60)  # at most 60 ms left, a command may take 2 x 50 ms
    host.begin_call()
    try:
        with pytest.raises(StoreUnavailable, match="ms of the plugin's timeout left"):
            store.get(b"k")
    finally:
        host.end_call()
    assert store.get(b"k") is None  # outside a plugin call there is no deadline; Redis was never marked down


def test_messages_and_logs_name_redis_without_the_password(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    # The test Redis has no password, so AUTH fails: the store's failure message and log line name the URL.
    url = f"redis://user:s3cret@127.0.0.1:{redis_server.port}/0?password=s3cret"
    store = RedisStore(url, key_prefix="t:", timeout_ms=200, max_connections=4)
    with caplog.at_level(logging.WARNING, logger="extproc.state"), pytest.raises(StoreUnavailable) as caught:
        store.get(b"k")
    shown = f"redis://user:***@127.0.0.1:{redis_server.port}/0?password=***"
    assert f"Redis at {shown}" in str(caught.value)
    assert [shown in r.getMessage() for r in caplog.records] == [True]
    assert "s3cret" not in str(caught.value) + caplog.text


def test_state_config_and_the_shared_store(tmp_path: Path) -> None:
    wasm = tmp_path / "a.wasm"
    wasm.write_bytes(b"\0asm")
    data = {
        "state": {"backend": "redis", "url": "redis://127.0.0.1:1/0", "key_prefix": "prod:", "timeout_ms": 5},
        "plugins": [{"name": "a", "path": str(wasm), "state_failure": "fail_closed"}],
    }
    config = parse_config(data, tmp_path / "x.yaml")
    assert config.state == StateConfig(StateBackend.REDIS, "redis://127.0.0.1:1/0", "prod:", 5)
    assert config.plugins[0].state_failure is FailurePolicy.FAIL_CLOSED
    memory = parse_config({"plugins": []}, tmp_path / "x.yaml")
    assert memory.state == StateConfig()
    assert memory.state.timeout_ms == 20 and not math.isinf(memory.state.timeout_ms)
    # A reload with the same settings keeps the store (and its pool); other settings get a new one.
    store = state_store(config)
    assert isinstance(store, RedisStore)
    assert state_store(config) is store
    assert shared_store(StateConfig(StateBackend.REDIS, "redis://127.0.0.1:1/0", "other:", 5), 16) is not store
    assert state_store(memory) is state_store(memory)
    assert redis_store.BACKEND == "redis"


# --- what a plugin sees: the rate-limit example (get + compare-and-set) through the host functions ------

RATE_LIMIT = {"capacity": 2, "refill_per_second": 0.001, "key_header": "x-api-key"}
# Room for two 200 ms commands even on a loaded CI machine, so only a stopped Redis fails a command.
PLUGIN_TIMEOUT_MS = 2000


def failures(plugin: str, policy: str) -> float:
    labels = {"plugin": plugin, "function": "extproc_kv_get", "policy": policy}
    return metrics.REGISTRY.get_sample_value("extproc_state_failures_total", labels) or 0.0


def limit_statuses(harness: PluginHarness, count: int, client: str) -> list[int | None]:
    return [harness.run(request("GET", "/", headers={"x-api-key": client})).status for _ in range(count)]


def test_plugins_in_two_harnesses_share_one_bucket(redis_server: RedisServer) -> None:
    wasm = example_wasm("rate-limit")
    with (
        PluginHarness(
            wasm, name="rl", config=RATE_LIMIT, store=make_store(redis_server), timeout_ms=PLUGIN_TIMEOUT_MS
        ) as a,
        PluginHarness(
            wasm, name="rl", config=RATE_LIMIT, store=make_store(redis_server), timeout_ms=PLUGIN_TIMEOUT_MS
        ) as b,
    ):
        statuses = [h.run(request("GET", "/", headers={"x-api-key": "c"})).status for h in (a, b, a, b)]
    assert statuses == [None, None, 429, 429]  # None: no immediate response, the request went upstream


def test_fail_open_lets_requests_through_and_counts_the_failure(redis_server: RedisServer) -> None:
    store = make_store(redis_server)
    with PluginHarness(
        example_wasm("rate-limit"), name="rl-open", config=RATE_LIMIT, store=store, timeout_ms=PLUGIN_TIMEOUT_MS
    ) as harness:
        assert limit_statuses(harness, 3, "c") == [None, None, 429]
        before = failures("rl-open", "fail_open")
        redis_server.stop()
        assert limit_statuses(harness, 3, "c") == [None, None, None]
        assert failures("rl-open", "fail_open") >= before + 3


def test_fail_closed_fails_the_call_and_on_error_answers(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(redis_server)
    with PluginHarness(
        example_wasm("rate-limit"),
        name="rl-closed",
        config=RATE_LIMIT,
        store=store,
        state_failure="fail_closed",
        on_error="fail_closed",
        retries=2,
        timeout_ms=PLUGIN_TIMEOUT_MS,
    ) as harness:
        assert limit_statuses(harness, 1, "c") == [None]
        redis_server.stop()
        result = harness.run(request("GET", "/", headers={"x-api-key": "c"}))
        assert result.status == 503
        assert result.immediate_details == "extproc_plugin_failure"
        # The guest ran on, seeing failure values (its compare-and-set loop gave up), and the call failed
        # afterwards. Not retried: the state backend would fail it again.
        assert failures("rl-closed", "fail_closed") >= 1
        assert "retry" not in caplog.text


def test_one_thread_call_state_does_not_leak_into_another(redis_server: RedisServer) -> None:
    store = make_store(redis_server, timeout_ms=50)
    host = PluginHost("p", store, timeout_ms=60)
    host.begin_call()
    try:
        seen: list[bytes | None] = []
        thread = threading.Thread(target=lambda: seen.append(store.get(b"k")))
        thread.start()
        thread.join()
        assert seen == [None]  # the other thread is not inside this call, so has no deadline
    finally:
        host.end_call()
