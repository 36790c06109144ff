"""Host functions the server offers to plugins: a shared key-value store, log forwarding and HTTP calls.

Plugin instances are pooled and any call may land on any instance, so state that must outlive a
call (rate-limit counters, caches) lives here, in the server, behind `KeyValueStore`. Keys are
scoped per plugin name, so two configured plugins never see each other's keys even when they run
the same Wasm file.

Every function is registered once per process in Extism's global registry (which never forgets a
function); which plugin is calling comes from the per-call host context, a `PluginHost`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import extism
from extism import ValType

from extproc import metrics
from extproc.config import FailurePolicy
from extproc.errors import ExtprocError
from extproc.plugins import http_calls
from extproc.plugins.http_calls import HttpCallError, HttpPolicy

NAMESPACE: Final = "extism:host/user"
# A module importing this (from NAMESPACE) may block on the network for up to its timeout_ms.
HTTP_REQUEST: Final = "extproc_http_request"
# Returned by extproc_kv_incr when the stored value is not a decimal integer (the error is logged).
INCR_ERROR: Final = -(2**63)
# A key or value larger than this is refused (logged), so one plugin cannot fill the server's memory.
MAX_KEY_BYTES: Final = 1024
MAX_VALUE_BYTES: Final = 1024 * 1024
LOG_LEVELS: Final = {0: logging.DEBUG, 1: logging.INFO, 2: logging.WARNING, 3: logging.ERROR}

plugin_log = logging.getLogger("extproc.plugin")


class StoreError(ExtprocError, ValueError):
    """A key-value operation that cannot be carried out; `key` says on which key."""

    def __init__(self, key: bytes, reason: str) -> None:
        super().__init__(f"key {key!r}: {reason}")
        self.key = key
        self.reason = reason


class StoreUnavailable(StoreError):
    """The backend could not serve the operation in time (down, slow, no connection); the caller's
    `state_failure` policy decides what the plugin sees."""


class KeyValueStore(Protocol):
    """What the host functions need from a store. Every method is atomic.

    `ttl_ms` 0 means "no expiry". Implemented by MemoryStore and plugins.redis_store.RedisStore; a
    backend raises StoreUnavailable when it cannot answer, StoreError when the operation is wrong.
    """

    # True when an operation waits on the network, so the calls of a plugin using the store never run
    # on the event loop.
    remote: bool

    def get(self, key: bytes) -> bytes | None: ...

    def set(self, key: bytes, value: bytes, ttl_ms: int) -> None: ...

    def delete(self, key: bytes) -> bool: ...

    def incr(self, key: bytes, delta: int, ttl_ms: int) -> int:
        """Add `delta` to the decimal integer at `key` (absent counts as 0) and return the sum.

        `ttl_ms` applies only when this call creates the key, so a counter expires a fixed time after
        its first increment (a fixed window). Raises StoreError when the value is not an integer.
        """
        ...

    def compare_and_set(self, key: bytes, expected: bytes | None, value: bytes, ttl_ms: int) -> bool:
        """Store `value` only if the current value is `expected` (None: the key is absent)."""
        ...


@dataclass(slots=True)
class _Entry:
    value: bytes
    expires_at: float | None  # monotonic seconds


class MemoryStore:
    """An in-process `KeyValueStore`: one lock, lazy expiry plus a sweep, and a bound on the key count.

    When `max_keys` live keys exist, expired keys are swept and then the oldest-written keys are
    evicted: losing a rate-limit counter lets a few extra requests through, running out of memory
    takes the server down.
    """

    remote = False

    def __init__(self, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        if max_keys <= 0:
            raise ValueError(f"max_keys must be positive, got {max_keys}")
        self._max_keys = max_keys
        self._clock = clock
        self._entries: dict[bytes, _Entry] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            now = self._clock()
            return sum(1 for entry in self._entries.values() if not _expired(entry, now))

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            entry = self._live(key, self._clock())
            return None if entry is None else entry.value

    def set(self, key: bytes, value: bytes, ttl_ms: int) -> None:
        with self._lock:
            self._put(key, value, ttl_ms, self._clock())

    def delete(self, key: bytes) -> bool:
        with self._lock:
            entry = self._entries.pop(key, None)
            return entry is not None and not _expired(entry, self._clock())

    def incr(self, key: bytes, delta: int, ttl_ms: int) -> int:
        with self._lock:
            now = self._clock()
            entry = self._live(key, now)
            if entry is None:
                self._put(key, str(delta).encode(), ttl_ms, now)
                return delta
            try:
                total = int(entry.value.decode("ascii")) + delta
            except (UnicodeDecodeError, ValueError):
                raise StoreError(key, f"cannot increment {entry.value[:40]!r}: not a decimal integer") from None
            entry.value = str(total).encode()
            return total

    def compare_and_set(self, key: bytes, expected: bytes | None, value: bytes, ttl_ms: int) -> bool:
        with self._lock:
            now = self._clock()
            entry = self._live(key, now)
            if (None if entry is None else entry.value) != expected:
                return False
            self._put(key, value, ttl_ms, now)
            return True

    def _live(self, key: bytes, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and _expired(entry, now):
            del self._entries[key]
            return None
        return entry

    def _put(self, key: bytes, value: bytes, ttl_ms: int, now: float) -> None:
        if ttl_ms < 0:
            raise StoreError(key, f"ttl_ms must be 0 (no expiry) or positive, got {ttl_ms}")
        self._entries.pop(key, None)  # re-inserting moves the key to the young end of the eviction order
        if len(self._entries) >= self._max_keys:
            self._make_room(now)
        self._entries[key] = _Entry(value, now + ttl_ms / 1000 if ttl_ms else None)

    def _make_room(self, now: float) -> None:
        for key in [key for key, entry in self._entries.items() if _expired(entry, now)]:
            del self._entries[key]
        while len(self._entries) >= self._max_keys:
            del self._entries[next(iter(self._entries))]


def _expired(entry: _Entry, now: float) -> bool:
    return entry.expires_at is not None and entry.expires_at <= now


class _CallState(threading.local):
    """The plugin call running on this thread. A plugin call runs on the thread that started it, and
    its host functions run on that thread too."""

    deadline: float = math.inf  # time.monotonic() at which the plugin's timeout expires
    failure: StoreUnavailable | None = None  # met by a fail_closed plugin; fails the call afterwards


_call = _CallState()


def time_left() -> float:
    """Seconds until the timeout of the plugin call on this thread (inf outside a call), so a backend
    never starts a network round trip that would outlast it."""
    return _call.deadline - time.monotonic()


@dataclass(frozen=True, slots=True)
class PluginHost:
    """What a host function knows about its caller: passed as Extism host context on every call."""

    plugin: str
    store: KeyValueStore
    timeout_ms: int = 0  # the plugin's timeout; 0: no deadline
    state_failure: FailurePolicy = FailurePolicy.FAIL_OPEN
    http: HttpPolicy = field(default_factory=HttpPolicy)  # by default no hosts: every HTTP call is refused

    def begin_call(self) -> None:
        _call.deadline = time.monotonic() + self.timeout_ms / 1000 if self.timeout_ms else math.inf
        _call.failure = None

    def end_call(self) -> StoreUnavailable | None:
        """The store failure that must fail this call (fail_closed), if any; clears the call state."""
        failure = _call.failure
        _call.deadline, _call.failure = math.inf, None
        return failure

    def store_unavailable(self, function: str, exc: StoreUnavailable) -> bool:
        """Count the failure and apply the policy: True means "answer as if the store were empty and
        every write succeeded" (fail_open); otherwise the call is marked failed and the host function
        returns its usual failure value. The backend logs outages, so this does not log per call."""
        metrics.state_failure(self.plugin, function, self.state_failure.value)
        if self.state_failure is FailurePolicy.FAIL_OPEN:
            return True
        if _call.failure is None:
            _call.failure = exc
        return False

    def http_deadline(self) -> float:
        """When an HTTP call must end (time.monotonic()): a tenth of the plugin's timeout before the
        call's own deadline, so a plugin told `timeout` still has time to act on it."""
        return time.monotonic() + time_left() - self.timeout_ms / 10_000

    def scoped(self, key: bytes) -> bytes:
        # Plugin names cannot contain "/", so the prefix cannot be forged by a key.
        if len(key) > MAX_KEY_BYTES:
            raise StoreError(key[:40], f"key longer than {MAX_KEY_BYTES} bytes")
        return self.plugin.encode() + b"/" + key


_default_store: KeyValueStore | None = None
_default_lock = threading.Lock()


def default_store() -> KeyValueStore:
    """The process-wide store: every plugin set (also after a reload) shares it."""
    global _default_store
    with _default_lock:
        if _default_store is None:
            _default_store = MemoryStore()
        return _default_store


# --- the host functions ---------------------------------------------------------------------
# Extism calls these through cffi, where an exception would only be printed and the guest would
# see zeros, so each one catches its own errors, logs them with the plugin name and returns the
# documented "failed" value.

Vals = list[Any]


def _host(current: extism.CurrentPlugin) -> PluginHost:
    host = current.host_context()
    if not isinstance(host, PluginHost):
        raise RuntimeError("plugin called without a PluginHost host context")
    return host


def _bytes_at(current: extism.CurrentPlugin, offset: Any) -> bytes:
    data: bytes = current.input_bytes(offset)
    return data


def _report(current: extism.CurrentPlugin, function: str, exc: Exception) -> None:
    host = current.host_context()
    name = host.plugin if isinstance(host, PluginHost) else "?"
    plugin_log.error("plugin %r %s: %s", name, function, exc, extra={"plugin": name})


def _kv_get(current: extism.CurrentPlugin, params: Vals, results: Vals) -> None:
    """(key) -> value offset, or 0 when the key is absent."""
    results[0].value = 0
    try:
        host = _host(current)
        try:
            value = host.store.get(host.scoped(_bytes_at(current, params[0])))
        except StoreUnavailable as exc:
            host.store_unavailable("extproc_kv_get", exc)
            value = None  # either policy: "absent"
        if value is not None:
            current.return_bytes(results[0], value)
    except Exception as exc:
        _report(current, "extproc_kv_get", exc)


def _kv_set(current: extism.CurrentPlugin, params: Vals, results: Vals) -> None:
    """(key, value, ttl_ms) -> 1 when stored, 0 on error."""
    results[0].value = 0
    try:
        host = _host(current)
        value = _bytes_at(current, params[1])
        if len(value) > MAX_VALUE_BYTES:
            raise StoreError(_bytes_at(current, params[0])[:40], f"value longer than {MAX_VALUE_BYTES} bytes")
        try:
            host.store.set(host.scoped(_bytes_at(current, params[0])), value, params[2].value)
        except StoreUnavailable as exc:
            if not host.store_unavailable("extproc_kv_set", exc):
                return
        results[0].value = 1
    except Exception as exc:
        _report(current, "extproc_kv_set", exc)


def _kv_delete(current: extism.CurrentPlugin, params: Vals, results: Vals) -> None:
    """(key) -> 1 when a live key was deleted, else 0."""
    results[0].value = 0
    try:
        host = _host(current)
        try:
            results[0].value = int(host.store.delete(host.scoped(_bytes_at(current, params[0]))))
        except StoreUnavailable as exc:
            host.store_unavailable("extproc_kv_delete", exc)  # either policy: "nothing was deleted"
    except Exception as exc:
        _report(current, "extproc_kv_delete", exc)


def _kv_incr(current: extism.CurrentPlugin, params: Vals, results: Vals) -> None:
    """(key, delta, ttl_ms) -> the new value, or INCR_ERROR."""
    results[0].value = INCR_ERROR
    try:
        host = _host(current)
        delta = params[1].value
        try:
            results[0].value = host.store.incr(host.scoped(_bytes_at(current, params[0])), delta, params[2].value)
        except StoreUnavailable as exc:
            if host.store_unavailable("extproc_kv_incr", exc):
                results[0].value = delta  # as if this were the first increment
    except Exception as exc:
        _report(current, "extproc_kv_incr", exc)


def _kv_cas(current: extism.CurrentPlugin, params: Vals, results: Vals) -> None:
    """(key, expected or 0 for "absent", value, ttl_ms) -> 1 when swapped, else 0."""
    results[0].value = 0
    try:
        host = _host(current)
        expected = _bytes_at(current, params[1]) if params[1].value else None
        value = _bytes_at(current, params[2])
        try:
            swapped = host.store.compare_and_set(
                host.scoped(_bytes_at(current, params[0])), expected, value, params[3].value
            )
        except StoreUnavailable as exc:
            swapped = host.store_unavailable("extproc_kv_cas", exc)
        results[0].value = int(swapped)
    except Exception as exc:
        _report(current, "extproc_kv_cas", exc)


def _now_ms(current: extism.CurrentPlugin, params: Vals, results: Vals) -> None:
    """() -> Unix time in milliseconds (plugins have no clock of their own without WASI)."""
    results[0].value = time.time_ns() // 1_000_000


def _log(current: extism.CurrentPlugin, params: Vals, results: Vals) -> None:
    """(level 0 debug .. 3 error, message): one line in the server's log, tagged with the plugin name."""
    try:
        host = _host(current)
        level = LOG_LEVELS.get(params[0].value, logging.INFO)
        if plugin_log.isEnabledFor(level):
            message = _bytes_at(current, params[1]).decode("utf-8", errors="replace")
            plugin_log.log(level, "[%s] %s", host.plugin, message, extra={"plugin": host.plugin})
    except Exception as exc:
        _report(current, "extproc_log", exc)


def _http_request(current: extism.CurrentPlugin, params: Vals, results: Vals) -> None:
    """(request JSON) -> response JSON; a failed call is an `error` in the response, never a trap."""
    results[0].value = 0
    try:
        host = _host(current)
        try:
            request = http_calls.parse_request(_bytes_at(current, params[0]))
            answer = http_calls.fetch(host.http, request, host.http_deadline()).to_json()
        except HttpCallError as exc:
            if exc.kind is http_calls.ErrorKind.HOST_REFUSED:  # the operator wants to know about these
                plugin_log.warning("plugin %r %s: %s", host.plugin, HTTP_REQUEST, exc, extra={"plugin": host.plugin})
            answer = exc.to_json()
        current.return_bytes(results[0], answer)
    except Exception as exc:
        _report(current, "extproc_http_request", exc)


HostFunction = Callable[[extism.CurrentPlugin, Vals, Vals], None]


def _register(name: str, params: list[ValType], returns: list[ValType], func: HostFunction) -> extism.Function:
    function: extism.Function = extism.host_fn(name=name, namespace=NAMESPACE, signature=(params, returns))(func)
    return function


_PTR = ValType.I64
HOST_FUNCTIONS: Final[tuple[extism.Function, ...]] = (
    _register("extproc_kv_get", [_PTR], [_PTR], _kv_get),
    _register("extproc_kv_set", [_PTR, _PTR, ValType.I64], [ValType.I32], _kv_set),
    _register("extproc_kv_delete", [_PTR], [ValType.I32], _kv_delete),
    _register("extproc_kv_incr", [_PTR, ValType.I64, ValType.I64], [ValType.I64], _kv_incr),
    _register("extproc_kv_cas", [_PTR, _PTR, _PTR, ValType.I64], [ValType.I32], _kv_cas),
    _register("extproc_now_ms", [], [ValType.I64], _now_ms),
    _register("extproc_log", [ValType.I32, _PTR], [], _log),
    _register(HTTP_REQUEST, [_PTR], [_PTR], _http_request),
)
