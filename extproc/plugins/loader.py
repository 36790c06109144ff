"""Compile one configured plugin and call it: limits in the manifest, instances from a pool."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from http import HTTPStatus
from typing import Any

import extism
from extism.extism import CompiledPlugin

from extproc import contract, metrics
from extproc.config import Encoding, ExecutionPoint, PluginConfig
from extproc.contract import Export, ImmediateReply, PluginOutput
from extproc.errors import FailureKind, OutputError, PluginCallError, PluginLoadError
from extproc.metrics import PluginMetrics, plugin_metrics
from extproc.plugins.breaker import CircuitBreaker
from extproc.plugins.host import HOST_FUNCTIONS, KeyValueStore, PluginHost, default_store
from extproc.plugins.http_calls import HttpPolicy
from extproc.plugins.pool import InstancePool, PoolExhausted

log = logging.getLogger("extproc.plugins")

WASM_MAGIC = b"\x00asm"
WASM_PAGE_BYTES = 64 * 1024

POINT_OF_EXPORT = {
    Export.REQUEST_HEADERS: ExecutionPoint.REQUEST_HEADERS,
    Export.REQUEST_BODY: ExecutionPoint.REQUEST_BODY,
    Export.GENERATE_RESPONSE: ExecutionPoint.GENERATE_RESPONSE,
    Export.RESPONSE_HEADERS: ExecutionPoint.RESPONSE_HEADERS,
    Export.RESPONSE_BODY: ExecutionPoint.RESPONSE_BODY,
}

Encoder = Callable[[Mapping[str, Any]], bytes]
Decoder = Callable[[bytes], PluginOutput | None]
_CODECS: dict[Encoding, tuple[Encoder, Decoder]] = {
    Encoding.JSON: (contract.encode_json, contract.decode_json),
    Encoding.PROTOBUF: (contract.encode_protobuf, contract.decode_protobuf),
}


# A retry would meet the same full pool or the same failing state backend.
_NOT_RETRIED = frozenset({FailureKind.POOL_EXHAUSTED, FailureKind.STATE_UNAVAILABLE})


def extism_config(spec: PluginConfig) -> dict[str, str]:
    """Extism config is a flat string map: the whole config as JSON, plus each top-level string."""
    flat = {key: value for key, value in spec.config.items() if isinstance(value, str)}
    flat["config"] = spec.config_json()
    return flat


def classify(error: Exception) -> FailureKind:
    message = str(error).lower()
    if "timeout" in message or "timed out" in message or "interrupt" in message:
        return FailureKind.TIMEOUT
    if "memory" in message or "oom" in message or "out of bounds memory" in message:
        return FailureKind.MEMORY
    return FailureKind.TRAP


@dataclass(eq=False)
class LoadedPlugin:
    """A compiled plugin ready to serve calls. Immutable once built; instances live in `pool`."""

    spec: PluginConfig
    sha256: str
    module_exports: frozenset[Export]
    exports: frozenset[Export]
    wants_request_body: bool
    pool: InstancePool[extism.Plugin] = field(repr=False)
    encode: Encoder = field(repr=False)
    decode: Decoder = field(repr=False)
    host: PluginHost = field(repr=False)
    breaker: CircuitBreaker = field(repr=False)
    # What fail_closed answers; built once so a failing plugin costs no allocation per request.
    failure_reply: ImmediateReply = field(repr=False)
    max_body_bytes: int = field(repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @cached_property
    def metrics(self) -> PluginMetrics:
        # Shared by every load of a plugin of this name, so counters carry on across reloads.
        return plugin_metrics(self.name)

    def call(self, export: Export, payload: Mapping[str, Any]) -> PluginOutput | None:
        """Run one export within the plugin's limits, retries and circuit breaker.

        Every failure, including a call refused by an open breaker, becomes a PluginCallError.
        """
        if not self.breaker.allow():
            raise PluginCallError(self.name, export.value, FailureKind.CIRCUIT_OPEN, "circuit breaker is open")
        data = self.encode(payload)
        attempts = self.spec.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                output = self._call_once(export, data)
            except PluginCallError as exc:
                if attempt < attempts and exc.kind not in _NOT_RETRIED:
                    log.warning("%s; retry %d of %d", exc, attempt, self.spec.retries, extra={"plugin": self.name})
                    continue
                self.breaker.record_failure()
                raise
            self.breaker.record_success()
            return output
        raise AssertionError("the last attempt returns or raises")

    def _call_once(self, export: Export, data: bytes) -> PluginOutput | None:
        try:
            instance = self.pool.acquire(self.spec.timeout_ms / 1000)
        except PoolExhausted as exc:
            raise PluginCallError(self.name, export.value, FailureKind.POOL_EXHAUSTED, str(exc)) from None
        except extism.Error as exc:
            # A new instance runs the module's start code under the same limits, and can fail too.
            raise PluginCallError(self.name, export.value, classify(exc), f"new instance: {exc}") from None
        self.host.begin_call()
        try:
            # The export itself is the name (a StrEnum): `.value` is a descriptor call per request.
            # parse=bytes: the wrapper's default is a lambda doing the same through one more frame.
            raw = instance.call(export, data, parse=bytes, host_context=self.host)
        except extism.Error as exc:
            # A trapped or interrupted instance may hold half-updated state: never reuse it.
            self.pool.discard(instance)
            raise PluginCallError(self.name, export.value, classify(exc), str(exc)) from None
        finally:
            state_failure = self.host.end_call()
        # The guest saw ordinary failure values, so the instance is sound; only its output is not.
        self.pool.release(instance)
        if state_failure is not None:
            raise PluginCallError(self.name, export.value, FailureKind.STATE_UNAVAILABLE, str(state_failure))
        try:
            output = self.decode(raw)
            if output is not None:
                contract.check_for_export(output, export)
                contract.check_body_sizes(output, self.max_body_bytes)
        except OutputError as exc:
            raise PluginCallError(self.name, export.value, FailureKind.BAD_OUTPUT, str(exc)) from None
        return output

    def close(self) -> None:
        self.pool.clear()


def load_plugin(
    spec: PluginConfig,
    default_pool_size: int,
    store: KeyValueStore | None = None,
    *,
    max_body_bytes: int = 8 * 1024 * 1024,
) -> LoadedPlugin:
    """Compile the module once, check it against the contract, and seed its instance pool."""
    try:
        wasm = spec.path.read_bytes()
    except OSError as exc:
        raise PluginLoadError(spec.name, spec.path, f"cannot read file: {exc.strerror}") from None
    if not wasm.startswith(WASM_MAGIC):
        raise PluginLoadError(spec.name, spec.path, "not a WebAssembly module (missing \\0asm header)")
    manifest = {
        "wasm": [{"data": wasm}],
        "timeout_ms": spec.timeout_ms,
        "memory": {"max_pages": spec.memory_limit_mb * 1024 * 1024 // WASM_PAGE_BYTES},
        # No allowed_paths: the sandbox never has a filesystem. No allowed_hosts either: Extism's own
        # http_request then refuses every host (it would follow redirects to hosts nobody allowed);
        # plugins call extproc_http_request, which checks every hop against spec.allowed_hosts.
    }
    config = extism_config(spec)
    try:
        compiled = CompiledPlugin(manifest, wasi=False, functions=list(HOST_FUNCTIONS))
        first = extism.Plugin(compiled, config=config, functions=[])
    except extism.Error as exc:
        raise PluginLoadError(spec.name, spec.path, f"cannot instantiate: {exc}") from None
    module_exports = frozenset(export for export in Export if first.function_exists(export.value))
    if not module_exports:
        names = ", ".join(export.value for export in Export)
        raise PluginLoadError(spec.name, spec.path, f"exports none of the plugin functions ({names})")
    exports, wants_request_body = _active_exports(spec, module_exports)

    def new_instance() -> extism.Plugin:
        return extism.Plugin(compiled, config=config, functions=[])

    pool_size = spec.pool_size or _pool_size(spec, default_pool_size)
    pool: InstancePool[extism.Plugin] = InstancePool(new_instance, pool_size)
    pool.add_idle(first)
    encode, decode = _CODECS[spec.encoding]
    return LoadedPlugin(
        spec=spec,
        sha256=hashlib.sha256(wasm).hexdigest(),
        module_exports=module_exports,
        exports=exports,
        wants_request_body=wants_request_body,
        pool=pool,
        encode=encode,
        decode=decode,
        host=PluginHost(
            spec.name,
            default_store() if store is None else store,
            timeout_ms=spec.timeout_ms,
            state_failure=spec.state_failure,
            http=HttpPolicy(spec.allowed_hosts, spec.max_http_response_bytes),
        ),
        breaker=CircuitBreaker(spec.name, spec.circuit_breaker, on_change=metrics.breaker_state),
        failure_reply=failure_reply(spec.error_status),
        max_body_bytes=max_body_bytes,
    )


def failure_reply(status: int) -> ImmediateReply:
    """A short answer that names no internals: the status line's phrase."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:  # a valid but unnamed status such as 299
        phrase = "Error"
    return ImmediateReply(
        status=status,
        headers=(("content-type", "text/plain"),),
        body=f"{phrase}\n".encode(),
        details="extproc_plugin_failure",
    )


def _pool_size(spec: PluginConfig, threads: int) -> int:
    """Instances a plugin gets when its config does not say.

    A call holds the CPU the whole time, so more instances than twice the cores only cost memory
    (one linear memory each). A plugin that makes HTTP calls waits on the network and may use
    one instance per serving thread.
    """
    if spec.allowed_hosts:
        return threads
    return min(threads, 2 * (os.cpu_count() or 1))


def _active_exports(spec: PluginConfig, module_exports: frozenset[Export]) -> tuple[frozenset[Export], bool]:
    """Exports to call, and whether generate_response should wait for the request body.

    Listing `request_body` for a plugin that only exports generate_response means
    "call generate_response with the whole request body".
    """
    points = spec.execution_points
    if points is None:
        return module_exports, Export.REQUEST_BODY in module_exports
    for point in points:
        export = next(e for e, p in POINT_OF_EXPORT.items() if p == point)
        serves_body_to_generate = point is ExecutionPoint.REQUEST_BODY and Export.GENERATE_RESPONSE in module_exports
        if export not in module_exports and not serves_body_to_generate:
            raise PluginLoadError(
                spec.name,
                spec.path,
                f"execution point {point.value!r} needs export {export.value!r}, which is missing",
            )
    exports = frozenset(e for e in module_exports if POINT_OF_EXPORT[e] in points)
    return exports, ExecutionPoint.REQUEST_BODY in points
