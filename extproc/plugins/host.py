"""Host functions the server offers to plugins: a shared key-value store, log forwarding and HTTP calls.

The store itself is plugins.store (and plugins.redis_store). Keys are scoped per plugin name, so two
configured plugins never see each other's keys even when they run the same Wasm file.

Every function is registered once per process in Extism's global registry (which never forgets a
function); which plugin is calling comes from the per-call host context, a `PluginHost`.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import extism
from extism import ValType

from extproc import metrics
from extproc.config import FailurePolicy
from extproc.plugins import http_calls
from extproc.plugins.http_calls import HttpCallError, HttpPolicy
from extproc.plugins.store import KeyValueStore, StoreError, StoreUnavailable

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


# --- the host functions ---------------------------------------------------------------------

Vals = list[Any]
HostFunction = Callable[[extism.CurrentPlugin, Vals, Vals], None]
_PTR = ValType.I64
_registered: list[extism.Function] = []


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


def _host_function(
    name: str,
    params: list[ValType],
    returns: list[ValType],
    *,
    failed: int = 0,
    fail_open: Callable[[Vals], int] | None = None,
) -> Callable[[HostFunction], extism.Function]:
    """Register the decorated function as host function `name` (in HOST_FUNCTIONS, in the order of definition).

    Extism calls host functions through cffi, where an exception would only be printed and the guest would
    see zeros, so the function runs guarded: its result starts as `failed`, the documented failure value,
    and an error is logged with the plugin's name. A StoreUnavailable is counted and handed to the plugin's
    state_failure policy; under fail_open the result becomes `fail_open(params)`, or stays `failed` when
    that already reads as the store's empty answer ("absent", "nothing deleted").
    """

    def register(func: HostFunction) -> extism.Function:
        @functools.wraps(func)
        def guarded(current: extism.CurrentPlugin, params: Vals, results: Vals) -> None:
            if results:
                results[0].value = failed
            try:
                try:
                    func(current, params, results)
                except StoreUnavailable as exc:
                    if _host(current).store_unavailable(name, exc) and fail_open is not None:
                        results[0].value = fail_open(params)
            except Exception as exc:
                _report(current, name, exc)

        function: extism.Function = extism.host_fn(name=name, namespace=NAMESPACE, signature=(params, returns))(guarded)
        _registered.append(function)
        return function

    return register


@_host_function("extproc_kv_get", [_PTR], [_PTR])
def _kv_get(current: extism.CurrentPlugin, params: Vals, results: Vals) -> None:
    """(key) -> value offset, or 0 when the key is absent."""
    host = _host(current)
    value = host.store.get(host.scoped(_bytes_at(current, params[0])))
    if value is not None:
        current.return_bytes(results[0], value)


@_host_function("extproc_kv_set", [_PTR, _PTR, ValType.I64], [ValType.I32], fail_open=lambda _params: 1)
def _kv_set(current: extism.CurrentPlugin, params: Vals, results: Vals) -> None:
    """(key, value, ttl_ms) -> 1 when stored, 0 on error."""
    host = _host(current)
    value = _bytes_at(current, params[1])
    if len(value) > MAX_VALUE_BYTES:
        raise StoreError(_bytes_at(current, params[0])[:40], f"value longer than {MAX_VALUE_BYTES} bytes")
    host.store.set(host.scoped(_bytes_at(current, params[0])), value, params[2].value)
    results[0].value = 1


@_host_function("extproc_kv_delete", [_PTR], [ValType.I32])
def _kv_delete(current: extism.CurrentPlugin, params: Vals, results: Vals) -> None:
    """(key) -> 1 when a live key was deleted, else 0."""
    host = _host(current)
    results[0].value = int(host.store.delete(host.scoped(_bytes_at(current, params[0]))))


def _first_increment(params: Vals) -> int:
    """What a failed increment answers under fail_open: the delta, as if it were the first increment."""
    delta: int = params[1].value
    return delta


@_host_function(
    "extproc_kv_incr", [_PTR, ValType.I64, ValType.I64], [ValType.I64], failed=INCR_ERROR, fail_open=_first_increment
)
def _kv_incr(current: extism.CurrentPlugin, params: Vals, results: Vals) -> None:
    """(key, delta, ttl_ms) -> the new value, or INCR_ERROR."""
    host = _host(current)
    results[0].value = host.store.incr(host.scoped(_bytes_at(current, params[0])), params[1].value, params[2].value)


@_host_function("extproc_kv_cas", [_PTR, _PTR, _PTR, ValType.I64], [ValType.I32], fail_open=lambda _params: 1)
def _kv_cas(current: extism.CurrentPlugin, params: Vals, results: Vals) -> None:
    """(key, expected or 0 for "absent", value, ttl_ms) -> 1 when swapped, else 0."""
    host = _host(current)
    expected = _bytes_at(current, params[1]) if params[1].value else None
    value = _bytes_at(current, params[2])
    swapped = host.store.compare_and_set(host.scoped(_bytes_at(current, params[0])), expected, value, params[3].value)
    results[0].value = int(swapped)


@_host_function("extproc_now_ms", [], [ValType.I64])
def _now_ms(current: extism.CurrentPlugin, params: Vals, results: Vals) -> None:
    """() -> Unix time in milliseconds (plugins have no clock of their own without WASI)."""
    results[0].value = time.time_ns() // 1_000_000


@_host_function("extproc_log", [ValType.I32, _PTR], [])
def _log(current: extism.CurrentPlugin, params: Vals, results: Vals) -> None:
    """(level 0 debug .. 3 error, message): one line in the server's log, tagged with the plugin name."""
    host = _host(current)
    level = LOG_LEVELS.get(params[0].value, logging.INFO)
    if plugin_log.isEnabledFor(level):
        message = _bytes_at(current, params[1]).decode("utf-8", errors="replace")
        plugin_log.log(level, "[%s] %s", host.plugin, message, extra={"plugin": host.plugin})


@_host_function(HTTP_REQUEST, [_PTR], [_PTR])
def _http_request(current: extism.CurrentPlugin, params: Vals, results: Vals) -> None:
    """(request JSON) -> response JSON; a failed call is an `error` in the response, never a trap."""
    host = _host(current)
    try:
        request = http_calls.parse_request(_bytes_at(current, params[0]))
        answer = http_calls.fetch(host.http, request, host.http_deadline()).to_json()
    except HttpCallError as exc:
        if exc.kind is http_calls.ErrorKind.HOST_REFUSED:  # the operator wants to know about these
            plugin_log.warning("plugin %r %s: %s", host.plugin, HTTP_REQUEST, exc, extra={"plugin": host.plugin})
        answer = exc.to_json()
    current.return_bytes(results[0], answer)


HOST_FUNCTIONS: Final[tuple[extism.Function, ...]] = tuple(_registered)
