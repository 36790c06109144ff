"""Compile one configured plugin and call it: limits in the manifest, instances from a pool."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from http import HTTPStatus
from time import thread_time
from typing import Any, Final

import extism
import extism.extism as extism_internals
from extism.extism import CompiledPlugin

from extproc import contract
from extproc.config import Encoding, PluginConfig, ServerConfig
from extproc.contract import ImmediateReply, PluginOutput
from extproc.errors import FailureKind, OutputError, PluginCallError, PluginLoadError
from extproc.metrics import PluginMetrics, instance_recycled, plugin_metrics
from extproc.phases import Phase
from extproc.plugins.breaker import Admission, CircuitBreaker
from extproc.plugins.host import HOST_FUNCTIONS, HTTP_REQUEST, PluginHost
from extproc.plugins.host import NAMESPACE as HOST_NAMESPACE
from extproc.plugins.http_calls import HttpPolicy
from extproc.plugins.pool import InstancePool, PoolExhausted
from extproc.plugins.runner import Instance, PluginThreads, RawResult, ThreadedCall, invoke
from extproc.plugins.store import KeyValueStore, default_store
from extproc.plugins.wasm import WASM_MAGIC, WasmFormatError
from extproc.plugins.wasm import imports as wasm_imports

log = logging.getLogger("extproc.plugins")

WASM_PAGE_BYTES = 64 * 1024

# A plugin reads one direction's body whole or in chunks, not both: both would need two copies of the body.
_BODY_PAIRS: Final = (
    (Phase.REQUEST_BODY, Phase.REQUEST_BODY_CHUNK),
    (Phase.RESPONSE_BODY, Phase.RESPONSE_BODY_CHUNK),
)

Encoder = Callable[[Mapping[str, Any]], bytes]
Decoder = Callable[[bytes], PluginOutput | None]
DeclarationDecoder = Callable[[bytes], frozenset[Phase]]
_CODECS: dict[Encoding, tuple[Encoder, Decoder, DeclarationDecoder]] = {
    Encoding.JSON: (contract.encode_json, contract.decode_json, contract.declared_phases_json),
    Encoding.PROTOBUF: (contract.encode_protobuf, contract.decode_protobuf, contract.declared_phases_protobuf),
}


class PhaseSource(StrEnum):
    """Where a loaded plugin's phases came from, in order of precedence."""

    EXECUTION_POINTS = "execution_points"  # the server config says
    DECLARED = "declared"  # the plugin's declare_phases export says, for its config
    EXPORTS = "exports"  # neither: every phase the module exports


@dataclass(frozen=True, slots=True)
class ActivePhases:
    phases: frozenset[Phase]
    source: PhaseSource
    # The phases whose input carries the request body: the request body phase, and generate_response
    # when it waits for the body (then it runs after the body instead of after the headers).
    with_request_body: frozenset[Phase]


# A retry would meet the same full pool or the same failing state backend.
_NOT_RETRIED = frozenset({FailureKind.POOL_EXHAUSTED, FailureKind.STATE_UNAVAILABLE})
# Failures that say the server is overloaded, not that the plugin is unwell: the request gets the plugin's
# failure policy, but the circuit breaker is not moved (it would turn a burst into refusing every call).
_NOT_THE_PLUGINS_FAULT = frozenset({FailureKind.POOL_EXHAUSTED})


class _GarbageCollections:
    """Counts the interpreter's garbage collections: a collection that ran during an inline call is not
    the plugin's cost, so that call's CPU time is not held against it."""

    def __init__(self) -> None:
        self.count = 0
        gc.callbacks.append(self._seen)

    def _seen(self, phase: str, _info: dict[str, int]) -> None:
        if phase == "start":
            self.count += 1


_collections = _GarbageCollections()


def extism_config(spec: PluginConfig) -> dict[str, str]:
    """Extism config is a flat string map: the whole config as JSON, plus each top-level string."""
    flat = {key: value for key, value in spec.config.items() if isinstance(value, str)}
    flat["config"] = spec.config_json()
    return flat


def classify(error: Exception) -> FailureKind:
    message = str(error).lower()
    # "out of fuel": the instruction budget backing up the timeout (FuelLimitedModule).
    if "timeout" in message or "timed out" in message or "interrupt" in message or "out of fuel" in message:
        return FailureKind.TIMEOUT
    if "memory" in message or "oom" in message or "out of bounds memory" in message:
        return FailureKind.MEMORY
    return FailureKind.TRAP


# A call with a larger input (a body) runs on a thread without looking at the budget: reading and
# writing that much JSON alone takes a good part of a millisecond.
INLINE_INPUT_MAX_BYTES: Final = 32 * 1024
# One inline call this many times over the budget moves the plugin to the threads at once.
_ONE_CALL_OVER_BUDGET: Final = 10

# An instance whose call took in and gave out more than this together is dropped afterwards, not pooled:
# Wasm memory grows but never shrinks, so it would hold what it grew to for such a call until the plugin is
# reloaded. The bytes through the call stand in for the growth (neither Extism's API nor its Python binding
# tells an instance's memory size), and cost nothing to know: guest and kernel memory hold the input and the
# output at least once each. A fresh instance costs 1.3-1.8 ms to create and a few ms of page faults to grow
# again, about a tenth of the server CPU a call of this size takes (docs/operations.md, "Memory").
RECYCLE_AFTER_BYTES: Final = 1024 * 1024


def default_max_output_bytes(max_body_bytes: int) -> int:
    """The largest output a plugin may give unless its `max_output_bytes` says otherwise: room for a body of
    `max_body_bytes` as JSON text (escapes make it at most twice as long, except for control characters)
    or base64 (4/3), plus 1 MiB for headers and metadata."""
    return 2 * max_body_bytes + 1024 * 1024


# Wasm instructions a call may run per millisecond of its timeout: far above what any CPU executes
# (about 12 million per ms for a tight loop on the reference machine), so fuel never ends a call
# the wall-clock timeout would let finish.
FUEL_PER_MS: Final = 50_000_000


class FuelLimitedModule(CompiledPlugin):  # type: ignore[misc]
    """A compiled module whose every call also stops after a budget of Wasm instructions.

    The budget is a backstop for Extism's wall-clock timeout, which under concurrent calls now and
    then misses its interrupt and leaves a spinning call running for good (seen with Extism 1.41:
    about one timeout in 300 with two threads). Fuel is counted by each instance itself, so it
    cannot be missed. The Python binding has no parameter for it, hence the C call here.
    """

    def __init__(self, manifest: Mapping[str, Any], functions: Sequence[extism.Function], fuel: int) -> None:
        wasm = extism_internals._wasm(dict(manifest))
        self.functions = list(functions)
        registered = [extism_internals._ExtismFunctionMetadata(function) for function in self.functions]
        pointers = extism_internals._ffi.new("ExtismFunction*[]", [entry.pointer for entry in registered])
        error = extism_internals._ffi.new("char**")
        self.pointer = extism_internals._lib.extism_compiled_plugin_new_with_fuel_limit(
            wasm, len(wasm), pointers, len(registered), False, fuel, error
        )
        if self.pointer == extism_internals._ffi.NULL:
            message = extism_internals._ffi.string(error[0]).decode()
            extism_internals._lib.extism_plugin_new_error_free(error[0])
            raise extism.Error(message)


@dataclass(eq=False)
class LoadedPlugin:
    """A compiled plugin ready to serve calls; instances live in `pool`.

    Its calls run on the event loop while `inline` holds, otherwise on `threads` (see runner.py).
    """

    spec: PluginConfig
    sha256: str
    module_exports: frozenset[Phase]
    exports: frozenset[Phase]  # the phases it is called for
    phase_source: PhaseSource
    request_body_phases: frozenset[Phase]  # ActivePhases.with_request_body
    pool: InstancePool[Instance] = field(repr=False)
    encode: Encoder = field(repr=False)
    decode: Decoder = field(repr=False)
    host: PluginHost = field(repr=False)
    breaker: CircuitBreaker = field(repr=False)
    # What fail_closed answers; built once so a failing plugin costs no allocation per request.
    failure_reply: ImmediateReply = field(repr=False)
    max_body_bytes: int = field(repr=False)
    max_output_bytes: int = field(repr=False)
    threads: PluginThreads = field(repr=False)
    # The name in metrics, breaker and logs: `name`, or the candidate version's "name@candidate" (rollout.py).
    label: str = field(repr=False)
    # Why the plugin's calls never run on the event loop, or "" while they may.
    runs_on_threads: str = ""
    # Inline calls that take longer, on average or ten times over once, move the plugin's calls to
    # the threads for good (see _measure).
    inline_budget_seconds: float = 0.001
    # Moving average of a warm inline call's CPU time; one outlier (a page fault, a cache miss
    # storm under load) moves it a tenth of the way, so it takes a plugin that is slow again and again.
    inline_cpu_average: float = field(default=0.0, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def inline(self) -> bool:
        return not self.runs_on_threads

    @cached_property
    def metrics(self) -> PluginMetrics:
        # Shared by every load of a plugin of this name, so counters carry on across reloads.
        return plugin_metrics(self.label)

    async def call(self, export: Phase, payload: Mapping[str, Any]) -> PluginOutput | None:
        """Run one export within the plugin's limits, retries and circuit breaker.

        Every failure, including a call refused by an open breaker, becomes a PluginCallError. A call
        abandoned because its stream ended (asyncio.CancelledError) is counted as cancelled and
        leaves the breaker as it was.
        """
        breaker = self.breaker
        admission = breaker.admit()
        if admission is Admission.REFUSED:
            raise PluginCallError(self.label, export.value, FailureKind.CIRCUIT_OPEN, "circuit breaker is open")
        try:
            data = self.encode(payload)
            attempt = 1
            while True:
                try:
                    # Inline when it may and an idle instance is at hand; otherwise on a plugin thread,
                    # which also waits for an instance or creates one.
                    instance = None
                    if not self.runs_on_threads and len(data) <= INLINE_INPUT_MAX_BYTES:
                        instance = self.pool.take_idle()
                    if instance is None:
                        result = await self._call_on_thread(export, data)
                    else:
                        result = self._call_inline(instance, export, data)
                    output = self._output(export, result)
                except PluginCallError as exc:
                    self.metrics.attempt_failed(export, exc.kind)
                    if attempt <= self.spec.retries and exc.kind not in _NOT_RETRIED:
                        log.warning("%s; retry %d of %d", exc, attempt, self.spec.retries, extra={"plugin": self.label})
                        attempt += 1
                        continue
                    if exc.kind in _NOT_THE_PLUGINS_FAULT:
                        breaker.record_abandoned(admission)
                    else:
                        breaker.record_failure()
                    raise
                breaker.record_success()
                return output
        except PluginCallError:
            raise
        except asyncio.CancelledError:
            self.metrics.cancelled(export)
            breaker.record_abandoned(admission)
            raise
        except BaseException:
            # A bug of ours, before or after the plugin ran: it says nothing about the plugin, and a
            # probe must not leave the breaker half open for good.
            breaker.record_abandoned(admission)
            raise

    async def _call_on_thread(self, export: Phase, data: bytes) -> RawResult:
        try:
            instance = await self.pool.acquire(self.spec.timeout_ms / 1000)
        except PoolExhausted as exc:
            raise PluginCallError(self.label, export.value, FailureKind.POOL_EXHAUSTED, str(exc)) from None
        call = ThreadedCall(instance, self.pool.factory, export, data, self.host, self.max_output_bytes, self._settle)
        result = await self.threads.run(call)
        if result is None:
            raise AssertionError("a call the caller still waits for always runs")
        return result

    def _call_inline(self, instance: Instance, export: Phase, data: bytes) -> RawResult:
        # CPU time of this thread: what the call itself costs the loop, without waits for the GIL.
        collections_before = _collections.count
        started = thread_time()
        result = invoke(instance, export, data, self.host, self.max_output_bytes)
        elapsed = thread_time() - started
        # A first call pays for the instance's own start-up, a collection for the whole process.
        if instance.warm and _collections.count == collections_before:
            self._measure(export, elapsed)
        instance.warm = True
        self._give_back(instance, data, result)
        return result

    def _measure(self, export: Phase, elapsed: float) -> None:
        """Every further call runs on the threads once the plugin proves slow: on the loop it would
        hold up every other stream of this worker meanwhile."""
        budget = self.inline_budget_seconds
        average = self.inline_cpu_average * 0.9 + elapsed * 0.1
        self.inline_cpu_average = average
        if elapsed > budget * _ONE_CALL_OVER_BUDGET:
            self._demote(f"{export.value} took {elapsed * 1000:.1f} ms of CPU on the event loop")
        elif average > budget:
            self._demote(f"its inline calls took {average * 1000:.1f} ms of CPU each on average, {export.value} last")

    def _demote(self, reason: str) -> None:
        self.runs_on_threads = reason
        log.warning(
            "plugin %r: %s (budget %.1f ms); its calls run on plugin threads from now on",
            self.label,
            self.runs_on_threads,
            self.inline_budget_seconds * 1000,
            extra={"plugin": self.label},
        )

    def _settle(self, call: ThreadedCall) -> None:
        """On the loop, when a threaded call is over: the instance (or the slot) goes back to the pool."""
        result = call.result
        if call.instance is None or call.interrupted or isinstance(result, BaseException):
            self.pool.discard(call.instance)
        elif result is None:  # skipped because its caller left: the instance was never touched
            self.pool.release(call.instance)
        else:
            self._give_back(call.instance, call.data, result)

    def _give_back(self, instance: Instance, data: bytes, result: RawResult) -> None:
        """Pool the instance again, unless its call trapped or was interrupted (it may hold half-updated
        state) or moved more than RECYCLE_AFTER_BYTES (it keeps the memory it grew to)."""
        if result.error is not None:
            self.pool.discard(instance)
        elif len(data) + result.output_size > RECYCLE_AFTER_BYTES:
            self.pool.discard(instance)
            instance_recycled(self.label)
        else:
            self.pool.release(instance)

    def _output(self, export: Phase, result: RawResult) -> PluginOutput | None:
        if result.error is not None:
            raise PluginCallError(self.label, export.value, classify(result.error), str(result.error))
        if result.state_failure is not None:
            raise PluginCallError(self.label, export.value, FailureKind.STATE_UNAVAILABLE, str(result.state_failure))
        if result.output is None:  # the call returned, but more than the plugin may give
            reason = f"output of {result.output_size} bytes is over max_output_bytes ({self.max_output_bytes})"
            raise PluginCallError(self.label, export.value, FailureKind.BAD_OUTPUT, reason)
        try:
            output = self.decode(result.output)
            if output is not None:
                contract.check_for_export(output, export)
                contract.check_body_sizes(output, self.max_body_bytes)
        except OutputError as exc:
            raise PluginCallError(self.label, export.value, FailureKind.BAD_OUTPUT, str(exc)) from None
        return output

    def close(self) -> None:
        self.pool.clear()


def load_plugin(
    spec: PluginConfig,
    server: ServerConfig,
    threads: PluginThreads,
    store: KeyValueStore | None = None,
    label: str | None = None,
) -> LoadedPlugin:
    """Compile the module, check it against the contract, and seed its instance pool. `label` names it in
    metrics, breaker and logs (default: its name)."""
    try:
        wasm = spec.path.read_bytes()
    except OSError as exc:
        raise PluginLoadError(spec.name, spec.path, f"cannot read file: {exc.strerror}") from None
    if not wasm.startswith(WASM_MAGIC):
        raise PluginLoadError(spec.name, spec.path, "not a WebAssembly module (missing \\0asm header)")
    store = default_store() if store is None else store
    manifest = {
        "wasm": [{"data": wasm}],
        "timeout_ms": spec.timeout_ms,
        "memory": {"max_pages": spec.memory_limit(server.max_body_bytes) * 1024 * 1024 // WASM_PAGE_BYTES},
        # No allowed_paths: the sandbox never has a filesystem. No allowed_hosts either: Extism's own
        # http_request then refuses every host (it would follow redirects to hosts nobody allowed);
        # plugins call extproc_http_request, which checks every hop against spec.allowed_hosts.
    }
    config = extism_config(spec)

    fuel = spec.timeout_ms * FUEL_PER_MS

    def new_instance() -> Instance:
        # Compiled per instance (about a millisecond): see runner.Instance.
        plugin = extism.Plugin(FuelLimitedModule(manifest, HOST_FUNCTIONS, fuel), config=config, functions=[])
        return Instance(plugin, plugin.cancel_handle())

    try:
        first = new_instance()
    except extism.Error as exc:
        raise PluginLoadError(spec.name, spec.path, f"cannot instantiate: {exc}") from None
    module_exports = frozenset(phase for phase in Phase if first.plugin.function_exists(phase.value))
    if not module_exports:
        names = ", ".join(phase.value for phase in Phase)
        raise PluginLoadError(spec.name, spec.path, f"exports none of the plugin functions ({names})")
    encode, decode, decode_declaration = _CODECS[spec.encoding]
    host = PluginHost(
        spec.name,
        store,
        timeout_ms=spec.timeout_ms,
        state_failure=spec.state_failure,
        http=HttpPolicy(spec.allowed_hosts, spec.max_http_response_bytes),
    )
    declaration = None
    if first.plugin.function_exists(contract.DECLARE_PHASES):
        declaration = _declaration(spec, first, host, decode_declaration)
        first.warm = True
    active = _active_phases(spec, module_exports, declaration)
    pool_size = spec.pool_size or _pool_size(spec, threads.max_threads)
    pool: InstancePool[Instance] = InstancePool(new_instance, pool_size)
    pool.add_idle(first)
    return LoadedPlugin(
        spec=spec,
        sha256=hashlib.sha256(wasm).hexdigest(),
        module_exports=module_exports,
        exports=active.phases,
        phase_source=active.source,
        request_body_phases=active.with_request_body,
        pool=pool,
        encode=encode,
        decode=decode,
        host=host,
        breaker=CircuitBreaker(label or spec.name, spec.circuit_breaker),
        failure_reply=failure_reply(spec.error_status),
        max_body_bytes=server.max_body_bytes,
        max_output_bytes=spec.max_output_bytes or default_max_output_bytes(server.max_body_bytes),
        threads=threads,
        label=label or spec.name,
        runs_on_threads=_threads_only_reason(wasm, store, server),
        inline_budget_seconds=server.inline_call_budget_us / 1_000_000,
    )


# Host functions that wait on the network. A plugin importing one never runs on the event loop.
# (Extism's own http_request is not one: without allowed_hosts in the manifest it refuses at once.)
_NETWORK_IMPORTS: Final = frozenset({(HOST_NAMESPACE, HTTP_REQUEST)})
# The key-value host functions wait on the network only with a remote store.
_STATE_IMPORTS: Final = frozenset(
    (HOST_NAMESPACE, name)
    for name in ("extproc_kv_get", "extproc_kv_set", "extproc_kv_delete", "extproc_kv_incr", "extproc_kv_cas")
)


def _threads_only_reason(wasm: bytes, store: KeyValueStore, server: ServerConfig) -> str:
    """Why this plugin's calls must never run on the event loop, or "" when they may."""
    if not server.inline_call_budget_us:
        return "server.inline_call_budget_us is 0"
    try:
        imported = wasm_imports(wasm)
    except WasmFormatError as exc:
        return f"its imports cannot be read ({exc})"
    if not imported.isdisjoint(_NETWORK_IMPORTS):
        return "it makes HTTP calls"
    if store.remote and not imported.isdisjoint(_STATE_IMPORTS):
        return "it uses the key-value store, which is remote"
    return ""


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
    one instance per plugin thread.
    """
    if spec.allowed_hosts:
        return threads
    return min(threads, 2 * (os.cpu_count() or 1))


def _declaration(
    spec: PluginConfig, instance: Instance, host: PluginHost, decode: DeclarationDecoder
) -> frozenset[Phase] | None:
    """Call the module's declare_phases export, which answers for the config it was loaded with. An empty
    answer declares nothing (every export is called), as if the export were absent."""
    where = contract.DECLARE_PHASES
    result = invoke(instance, where, b"", host, 64 * 1024)
    if result.error is not None:
        raise PluginLoadError(spec.name, spec.path, f"{where} failed: {result.error}")
    if not result.output:
        return None
    try:
        return decode(result.output)
    except OutputError as exc:
        raise PluginLoadError(spec.name, spec.path, f"{where} output: {exc}") from None


def _active_phases(
    spec: PluginConfig, module_exports: frozenset[Phase], declaration: frozenset[Phase] | None
) -> ActivePhases:
    """The phases to call: execution_points if the config has them, else the plugin's declaration if it
    makes one, else every phase it exports.

    `request_body` for a plugin that exports generate_response but not process_request_body means "call
    generate_response with the whole request body".
    """
    if spec.execution_points is not None:
        named, source, where = spec.execution_points, PhaseSource.EXECUTION_POINTS, "execution point"
    elif declaration is not None:
        named, source, where = declaration, PhaseSource.DECLARED, f"{contract.DECLARE_PHASES} names phase"
    else:
        with_body = module_exports & _BODY_READERS if Phase.REQUEST_BODY in module_exports else frozenset()
        return ActivePhases(_one_body_phase_per_direction(spec, module_exports), PhaseSource.EXPORTS, with_body)
    generate_reads_body = (
        Phase.REQUEST_BODY in named
        and Phase.REQUEST_BODY not in module_exports
        and Phase.GENERATE_RESPONSE in module_exports
    )
    for phase in named:
        if phase not in module_exports and not (phase is Phase.REQUEST_BODY and generate_reads_body):
            raise PluginLoadError(
                spec.name, spec.path, f"{where} {phase.config_name!r} needs export {phase.value!r}, which is missing"
            )
    phases = (named & module_exports) | ({Phase.GENERATE_RESPONSE} if generate_reads_body else frozenset())
    with_body = phases & _BODY_READERS if Phase.REQUEST_BODY in named else frozenset()
    return ActivePhases(_one_body_phase_per_direction(spec, frozenset(phases)), source, frozenset(with_body))


_BODY_READERS: Final = frozenset({Phase.REQUEST_BODY, Phase.GENERATE_RESPONSE})


def _one_body_phase_per_direction(spec: PluginConfig, phases: frozenset[Phase]) -> frozenset[Phase]:
    for whole, chunk in _BODY_PAIRS:
        if whole in phases and chunk in phases:
            raise PluginLoadError(
                spec.name,
                spec.path,
                f"reads its {whole.config_name.removesuffix('_body')} body both whole and in chunks ({whole.value} "
                f"and {chunk.value}); narrow execution_points (or its phase declaration) to "
                f"{whole.config_name!r} or {chunk.config_name!r}",
            )
    return phases
