"""The key-value store behind the host functions, and the host functions as plugins call them."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from extproc.config import ConfigError, parse_config
from extproc.plugins import loader
from extproc.plugins.host import MemoryStore, PluginHost, StoreError
from extproc.plugins.loader import load_plugin
from extproc.plugins.runner import shared_threads
from extproc.testing import PluginHarness, request
from tests.examples_build import example_wasm


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_get_set_delete() -> None:
    store = MemoryStore()
    assert store.get(b"k") is None
    store.set(b"k", b"v", 0)
    assert store.get(b"k") == b"v"
    assert store.delete(b"k") is True
    assert store.delete(b"k") is False
    assert store.get(b"k") is None


def test_values_expire_after_their_ttl() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    store.set(b"short", b"1", 500)
    store.set(b"forever", b"2", 0)
    clock.now += 0.499
    assert store.get(b"short") == b"1"
    clock.now += 0.001
    assert store.get(b"short") is None
    assert store.get(b"forever") == b"2"
    assert store.delete(b"short") is False


def test_incr_creates_with_ttl_and_keeps_it() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    assert store.incr(b"c", 1, 1000) == 1
    clock.now += 0.6
    assert store.incr(b"c", 5, 1000) == 6  # the TTL counts from creation, not from this increment
    clock.now += 0.4
    assert store.get(b"c") is None
    assert store.incr(b"c", -2, 0) == -2


def test_incr_of_a_non_integer_says_which_key() -> None:
    store = MemoryStore()
    store.set(b"name", b"ada", 0)
    with pytest.raises(StoreError, match="key b'name': cannot increment b'ada'"):
        store.incr(b"name", 1, 0)
    assert store.get(b"name") == b"ada"


def test_negative_ttl_is_refused() -> None:
    with pytest.raises(StoreError, match="ttl_ms must be 0"):
        MemoryStore().set(b"k", b"v", -1)


def test_compare_and_set() -> None:
    store = MemoryStore()
    assert store.compare_and_set(b"k", None, b"1", 0) is True
    assert store.compare_and_set(b"k", None, b"2", 0) is False
    assert store.compare_and_set(b"k", b"0", b"2", 0) is False
    assert store.compare_and_set(b"k", b"1", b"2", 0) is True
    assert store.get(b"k") == b"2"


def test_incr_is_atomic_across_threads() -> None:
    store = MemoryStore()
    threads, per_thread = 8, 2000
    barrier = threading.Barrier(threads)

    def work(_: int) -> None:
        barrier.wait()
        for _ in range(per_thread):
            store.incr(b"n", 1, 60_000)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))
    assert store.get(b"n") == str(threads * per_thread).encode()


def test_full_store_drops_expired_then_oldest_keys() -> None:
    clock = FakeClock()
    store = MemoryStore(max_keys=3, clock=clock)
    store.set(b"a", b"1", 0)
    store.set(b"b", b"1", 100)
    store.set(b"c", b"1", 0)
    clock.now += 1  # b expires
    store.set(b"d", b"1", 0)
    assert [store.get(k) for k in (b"a", b"b", b"c", b"d")] == [b"1", None, b"1", b"1"]
    store.set(b"e", b"1", 0)  # nothing expired: the oldest write (a) goes
    assert store.get(b"a") is None
    assert len(store) == 3


def test_keys_are_scoped_by_plugin_name() -> None:
    assert PluginHost("rl", MemoryStore()).scoped(b"k") == b"rl/k"
    with pytest.raises(StoreError, match="key longer than"):
        PluginHost("rl", MemoryStore()).scoped(b"x" * 2000)


# --- through a plugin -------------------------------------------------------------------------------


def test_pooled_instances_share_one_counter() -> None:
    capacity, calls = 6, 40
    config = {"capacity": capacity, "refill_per_second": 0.001, "key_header": "x-key"}
    with PluginHarness(example_wasm("rate-limit"), name="rl", config=config, pool_size=8) as harness:
        barrier = threading.Barrier(8)

        def call(i: int) -> int | None:
            if i < 8:
                barrier.wait()  # the first eight start together, so the pool needs eight instances
            result = harness.run(request(headers={"x-key": "one"}))
            return result.status if result.immediate else 200

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(call, range(calls)))
        assert harness.plugin.pool.size > 1
    assert statuses.count(200) == capacity
    assert statuses.count(429) == calls - capacity


def test_two_configured_plugins_do_not_share_keys() -> None:
    store = MemoryStore()
    config = {"capacity": 1, "refill_per_second": 0.001, "key_header": "x-key"}
    with (
        PluginHarness(example_wasm("rate-limit"), name="first", config=config, store=store) as first,
        PluginHarness(example_wasm("rate-limit"), name="second", config=config, store=store) as second,
    ):
        assert not first.run(request(headers={"x-key": "k"})).immediate
        assert not second.run(request(headers={"x-key": "k"})).immediate
        assert first.run(request(headers={"x-key": "k"})).status == 429
    assert store.get(b"first/h:k") is not None and store.get(b"second/h:k") is not None


def test_plugin_log_lines_reach_the_server_log_with_the_plugin_name(caplog: pytest.LogCaptureFixture) -> None:
    config = {"request": {"redact": ["ssn"]}}
    with (
        PluginHarness(example_wasm("json-transform"), name="redactor", config=config) as harness,
        caplog.at_level(logging.DEBUG, logger="extproc.plugin"),
    ):
        harness.run(request("POST", "/", {"content-type": "application/json"}, body='{"broken'))
    records = [r for r in caplog.records if r.name == "extproc.plugin"]
    assert [r.getMessage() for r in records] == ["[redactor] body says JSON but does not parse; passed through"]
    assert records[0].levelno == logging.DEBUG
    assert getattr(records[0], "plugin", None) == "redactor"


def test_allowed_hosts_never_reach_the_extism_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifests: list[dict[str, Any]] = []
    real = loader.FuelLimitedModule

    def capture(manifest: dict[str, Any], *args: Any) -> Any:
        manifests.append(manifest)
        return real(manifest, *args)

    monkeypatch.setattr(loader, "FuelLimitedModule", capture)
    wasm = str(example_wasm("api-key"))
    config = parse_config(
        {"plugins": [{"name": "open", "path": wasm, "allowed_hosts": ["api.example.com", "*.internal"]}]},
        tmp_path / "c.yaml",
    )
    loaded = load_plugin(config.plugins[0], config.server, shared_threads())
    loaded.close()
    # Extism's own http_request then refuses every host; extproc_http_request checks the hosts instead.
    assert "allowed_hosts" not in manifests[0]
    assert loaded.host.http.allowed_hosts == ("api.example.com", "*.internal")


def test_allowed_hosts_are_validated(tmp_path: Path) -> None:
    wasm = str(example_wasm("api-key"))
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.allowed_hosts\[0\]: must be a host name"):
        parse_config({"plugins": [{"name": "p", "path": wasm, "allowed_hosts": ["http://x/"]}]}, tmp_path / "c.yaml")
