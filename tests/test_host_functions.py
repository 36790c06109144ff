"""The key-value store behind the host functions, and the host functions as plugins call them."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from extproc.config import ConfigError, FailurePolicy, parse_config
from extproc.plugins import loader
from extproc.plugins.host import HOST_FUNCTIONS, INCR_ERROR, NAMESPACE, PluginHost
from extproc.plugins.loader import load_plugin
from extproc.plugins.runner import shared_threads
from extproc.plugins.store import MemoryStore, StoreError, StoreUnavailable
from extproc.testing import PluginHarness, request
from tests.examples_build import example_wasm


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_host_function_registry_is_what_the_sdks_import() -> None:
    # (name, parameter types, result types) in registration order; ValType I32 is 0, I64 (and PTR) 1.
    expected = [
        ("extproc_kv_get", [1], [1]),
        ("extproc_kv_set", [1, 1, 1], [0]),
        ("extproc_kv_delete", [1], [0]),
        ("extproc_kv_incr", [1, 1, 1], [1]),
        ("extproc_kv_cas", [1, 1, 1, 1], [0]),
        ("extproc_now_ms", [], [1]),
        ("extproc_log", [0, 1], []),
        ("extproc_http_request", [1], [1]),
    ]
    assert [(f.name, f.args, f.returns) for f in HOST_FUNCTIONS] == expected
    assert {f.namespace for f in HOST_FUNCTIONS} == {NAMESPACE}


class DownStore:
    """A backend that cannot answer anything."""

    remote = False

    def _down(self, key: bytes, *_args: object) -> Any:
        raise StoreUnavailable(key, "down")

    get = set = delete = incr = compare_and_set = _down


class FakeCurrent:
    """What a host function uses of Extism's CurrentPlugin: its host context and the plugin's memory."""

    RETURNED = 999  # the offset return_bytes hands out

    def __init__(self, host: PluginHost, memory: dict[int, bytes]) -> None:
        self._host = host
        self._memory = memory

    def host_context(self) -> PluginHost:
        return self._host

    def input_bytes(self, offset: SimpleNamespace) -> bytes:
        return self._memory[offset.value]

    def return_bytes(self, slot: SimpleNamespace, data: bytes) -> None:
        slot.value = self.RETURNED


# Parameters at offsets 1 (key), 2 (value) and 3 (expected value); delta 5, no ttl.
STORE_FAILURE_CASES = {
    # function: (its parameters, result under fail_open, result under fail_closed)
    "extproc_kv_get": ((1,), 0, 0),
    "extproc_kv_set": ((1, 2, 0), 1, 0),
    "extproc_kv_delete": ((1,), 0, 0),
    "extproc_kv_incr": ((1, 5, 0), 5, INCR_ERROR),
    "extproc_kv_cas": ((1, 3, 2, 0), 1, 0),
}


@pytest.mark.parametrize("policy", list(FailurePolicy), ids=str)
@pytest.mark.parametrize("name", list(STORE_FAILURE_CASES))
def test_a_store_that_cannot_answer_gives_each_function_its_policy_answer(name: str, policy: FailurePolicy) -> None:
    params, when_open, when_closed = STORE_FAILURE_CASES[name]
    host = PluginHost(f"down-{name}-{policy}", DownStore(), state_failure=policy)
    current = FakeCurrent(host, {1: b"key", 2: b"value", 3: b"old"})
    [function] = [f for f in HOST_FUNCTIONS if f.name == name]
    results = [SimpleNamespace(value=None)]
    host.begin_call()
    function(current, [SimpleNamespace(value=value) for value in params], results)
    failure = host.end_call()
    if policy is FailurePolicy.FAIL_OPEN:
        assert (results[0].value, failure) == (when_open, None)
    else:
        assert results[0].value == when_closed
        assert isinstance(failure, StoreUnavailable)


def test_a_host_function_error_is_logged_and_answers_the_failure_value(caplog: pytest.LogCaptureFixture) -> None:
    host = PluginHost("too-long", MemoryStore())
    current = FakeCurrent(host, {1: b"key", 2: b"v" * (1024 * 1024 + 1)})
    [kv_set] = [f for f in HOST_FUNCTIONS if f.name == "extproc_kv_set"]
    results = [SimpleNamespace(value=None)]
    with caplog.at_level(logging.ERROR, logger="extproc.plugin"):
        kv_set(current, [SimpleNamespace(value=v) for v in (1, 2, 0)], results)
    assert results[0].value == 0
    assert [r.getMessage() for r in caplog.records] == [
        "plugin 'too-long' extproc_kv_set: key b'key': value longer than 1048576 bytes"
    ]


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
