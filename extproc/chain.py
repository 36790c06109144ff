"""Run one phase of an exchange through its plugins, in config order.

Each plugin sees what the previous ones changed; an immediate response ends the chain.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any

from extproc import tracing
from extproc.config import FailurePolicy
from extproc.contract import Chunk, ImmediateReply, MessageView, build_input
from extproc.errors import FailureKind, PluginCallError
from extproc.headers import HeaderList
from extproc.phases import Phase
from extproc.plugins.registry import Selection

if TYPE_CHECKING:
    from extproc.rollout import ExchangeWatch

log = logging.getLogger("extproc.chain")


class Flow(enum.Enum):
    """How one direction's body reaches the plugins in this exchange."""

    NONE = "none"  # no plugin reads it: Envoy does not send it
    WHOLE = "whole"  # Envoy buffers it and sends it in one message
    COLLECT = "collect"  # Envoy streams it and the server collects it for plugins that read it whole
    CHUNKS = "chunks"  # each chunk goes through the chunk plugins as it comes
    PASS = "pass"  # Envoy streams it full duplex and no plugin reads it: each chunk is sent back as it came


@dataclass(frozen=True, slots=True)
class Direction:
    """What is fixed about one direction: its exports, in the order its messages meet them."""

    name: str
    headers: Phase
    chunk: Phase
    body: Phase
    trailers: Phase
    # Header changes here may send the request to another route.
    routes: bool


REQUEST = Direction(
    "request", Phase.REQUEST_HEADERS, Phase.REQUEST_BODY_CHUNK, Phase.REQUEST_BODY, Phase.REQUEST_TRAILERS, True
)
RESPONSE = Direction(
    "response",
    Phase.RESPONSE_HEADERS,
    Phase.RESPONSE_BODY_CHUNK,
    Phase.RESPONSE_BODY,
    Phase.RESPONSE_TRAILERS,
    False,
)


@dataclass(frozen=True, slots=True)
class SidePlan:
    """How one direction flows for every exchange of one selection under one Envoy body mode; shared."""

    direction: Direction
    flow: Flow
    duplex: bool  # Envoy streams this body FULL_DUPLEX_STREAMED
    trailers: bool  # the server asks Envoy for this direction's trailers
    # Envoy is configured BUFFERED_PARTIAL: a body message without end_of_stream outgrew its buffer.
    partial: bool = False


class Side:
    """One direction of the exchange as the plugins have left it so far.

    Envoy's ext_proc filter keeps its decoding and encoding state apart the same way; every phase of
    the stream works on a side, so nothing is written twice for requests and responses.
    """

    __slots__ = ("body", "body_changed", "buffer", "chunk", "headers", "plan", "trailers", "wants")

    def __init__(self, plan: SidePlan, headers: HeaderList | None, wants: bool) -> None:
        self.plan = plan
        self.headers = headers
        # The whole body in body phases, the current chunk in chunk phases, as the plugins left it.
        self.body: bytes | None = None
        self.body_changed = False
        self.chunk: Chunk | None = None
        self.trailers: HeaderList | None = None
        # Chunks held for plugins that read the body whole while Envoy streams it.
        self.buffer: BodyBuffer | None = None
        # Envoy will still send this direction something a plugin needs.
        self.wants = wants


class BodyBuffer:
    """Chunks of one body held until it is whole; `held`: some were answered empty, so the whole body goes
    out with the last reply. `passthrough`: the body outgrew the limit and goes on without plugins."""

    __slots__ = ("chunks", "held", "passthrough", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.held = False
        self.passthrough = False

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)

    def take(self) -> bytes:
        """Everything held, emptying the buffer."""
        whole = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        return whole


class Exchange:
    """One HTTP exchange as the plugins have left it so far."""

    __slots__ = (
        "attributes",
        "emitted_metadata",
        "metadata",
        "request",
        "response",
        "route",
        "selection",
        "states",
        "watch",
    )

    def __init__(
        self,
        selection: Selection,
        request: Side,
        response: Side,
        attributes: dict[str, Any],
        metadata: dict[str, Any],
        route: Mapping[str, Any] | None,
    ) -> None:
        self.selection = selection
        self.request = request
        self.response = response
        self.attributes = attributes
        self.metadata = metadata
        # The route's values, by plugin name (None: the route gave none).
        self.route = route
        # Made by the first plugin that emits metadata or keeps state: most exchanges have neither.
        self.emitted_metadata: dict[str, Any] | None = None
        self.states: dict[str, bytes] | None = None
        # Rollout hook: set by rollout.Rollout.watch when anything watches this exchange's plugin calls.
        self.watch: ExchangeWatch | None = None

    async def run(self, export: Phase, instead: Phase | None = None) -> ImmediateReply | None:
        """Call `export` on every selected plugin that has it (or `instead`, on those that have that);
        stop at an immediate response."""
        watch = self.watch
        for plugin in self.selection.plugins:
            exports = plugin.exports
            if export in exports:
                called = export
            elif instead is not None and instead in exports:
                called = instead
            else:
                continue
            name = plugin.name
            states = self.states
            route = self.route
            # The request headers' view is built here: it is the one every request needs.
            payload = build_input(
                called,
                name,
                MessageView(self.request.headers.pairs)  # type: ignore[union-attr]  # set from the first message
                if called is Phase.REQUEST_HEADERS
                else self._request_view(called, plugin.request_body_phases),
                self._response_view(called) if called.is_response else None,
                self.attributes,
                self.metadata,
                state=None if states is None else states.get(name),
                route=None if route is None else route.get(name),
                chunk=(self.response.chunk if called.is_response else self.request.chunk) if called.is_chunk else None,
            )
            started = perf_counter()
            try:
                output = await plugin.call(called, payload)
            except PluginCallError as exc:
                seconds = perf_counter() - started
                plugin.metrics.record(called, seconds, exc.kind)
                if tracing.tracer is not None:
                    tracing.tracer.plugin_failed(name, called, seconds, exc, plugin.spec.on_error)
                if watch is not None:  # rollout hook: outcome, record, shadow (extproc/rollout.py)
                    watch.observe(self, plugin, called, payload, exc, seconds)
                fail_open = plugin.spec.on_error is FailurePolicy.FAIL_OPEN
                _log_failure(exc, called, fail_open)
                if fail_open:
                    continue
                return plugin.failure_reply
            seconds = perf_counter() - started
            plugin.metrics.record(called, seconds)
            if tracing.tracer is not None:
                tracing.tracer.plugin_called(name, called, seconds, output)
            if watch is not None:  # rollout hook: outcome, record, shadow (extproc/rollout.py)
                watch.observe(self, plugin, called, payload, output, seconds)
            if output is None:
                continue
            if output.metadata:
                if self.emitted_metadata is None:
                    self.emitted_metadata = {}
                self.emitted_metadata[name] = output.metadata
            if output.state is not None:
                self._keep_state(name, output.state)
            if output.immediate is not None:
                return output.immediate
            side = self.response if called.is_response else self.request
            target = side.trailers if called.is_trailers else side.headers
            if output.headers is not None and target is not None:
                target.apply(output.headers)
            if output.body is not None:
                side.body, side.body_changed = output.body, True
        return None

    def _request_view(self, export: Phase, request_body_phases: frozenset[Phase]) -> MessageView:
        request = self.request
        assert request.headers is not None  # the exchange begins with the request headers
        sees_body = export is Phase.REQUEST_BODY_CHUNK or export in request_body_phases
        trailers = request.trailers
        return MessageView(
            request.headers.pairs,
            request.body if sees_body else None,
            trailers.pairs if export is Phase.REQUEST_TRAILERS and trailers is not None else None,
        )

    def _response_view(self, export: Phase) -> MessageView | None:
        response = self.response
        if response.headers is None:
            return None
        trailers = response.trailers
        return MessageView(
            response.headers.pairs,
            response.body if export.is_body else None,
            trailers.pairs if export is Phase.RESPONSE_TRAILERS and trailers is not None else None,
        )

    def _keep_state(self, plugin: str, state: bytes) -> None:
        states = self.states
        if states is None:
            states = self.states = {}
        if state:
            states[plugin] = state
        else:
            states.pop(plugin, None)


def _log_failure(exc: PluginCallError, export: Phase, fail_open: bool) -> None:
    extra = {"plugin": exc.plugin, "phase": export.value, "kind": exc.kind.value}
    action = "skipped its changes (fail_open)" if fail_open else "failed the request (fail_closed)"
    # An open breaker refuses every call; the state change itself was logged once already.
    level = logging.DEBUG if exc.kind is FailureKind.CIRCUIT_OPEN else logging.WARNING
    log.log(level, "%s; %s", exc, action, extra=extra)
