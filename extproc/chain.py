"""Run one phase of an exchange through its plugins, in config order.

Each plugin sees what the previous ones changed; an immediate response ends the chain.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Any

from extproc import tracing
from extproc.config import FailurePolicy
from extproc.contract import ImmediateReply, MessageView, build_input
from extproc.errors import FailureKind, PluginCallError
from extproc.headers import HeaderList
from extproc.phases import Phase
from extproc.plugins.registry import Selection

if TYPE_CHECKING:
    from extproc.rollout import ExchangeWatch

log = logging.getLogger("extproc.chain")


@dataclass(slots=True)
class Exchange:
    """One HTTP exchange as the plugins have left it so far."""

    selection: Selection
    request: HeaderList
    attributes: dict[str, Any]
    metadata: dict[str, Any]
    request_body: bytes | None = None
    response: HeaderList | None = None
    response_body: bytes | None = None
    request_body_changed: bool = False
    response_body_changed: bool = False
    emitted_metadata: dict[str, Any] = field(default_factory=dict)
    # Rollout hook: set by rollout.Rollout.begin when anything watches this exchange's plugin calls.
    watch: ExchangeWatch | None = None

    async def run(self, export: Phase) -> ImmediateReply | None:
        """Call `export` on every selected plugin that has it; stop at an immediate response."""
        watch = self.watch
        for plugin in self.selection.plugins:
            if export not in plugin.exports:
                continue
            request_body = self.request_body if export in plugin.request_body_phases else None
            response = None
            if export.is_response and self.response is not None:
                body = self.response_body if export is Phase.RESPONSE_BODY else None
                response = MessageView(self.response.pairs, body)
            payload = build_input(
                export,
                plugin.name,
                MessageView(self.request.pairs, request_body),
                response,
                self.attributes,
                self.metadata,
            )
            started = perf_counter()
            try:
                output = await plugin.call(export, payload)
            except PluginCallError as exc:
                seconds = perf_counter() - started
                plugin.metrics.record(export, seconds, exc.kind)
                if tracing.tracer is not None:
                    tracing.tracer.plugin_failed(plugin.name, export, seconds, exc, plugin.spec.on_error)
                if watch is not None:  # rollout hook: outcome, record, shadow (extproc/rollout.py)
                    watch.observe(self, plugin, export, payload, exc, seconds)
                fail_open = plugin.spec.on_error is FailurePolicy.FAIL_OPEN
                _log_failure(exc, export, fail_open)
                if fail_open:
                    continue
                return plugin.failure_reply
            seconds = perf_counter() - started
            plugin.metrics.record(export, seconds)
            if tracing.tracer is not None:
                tracing.tracer.plugin_called(plugin.name, export, seconds, output)
            if watch is not None:  # rollout hook: outcome, record, shadow (extproc/rollout.py)
                watch.observe(self, plugin, export, payload, output, seconds)
            if output is None:
                continue
            if output.metadata:
                self.emitted_metadata[plugin.name] = output.metadata
            if output.immediate is not None:
                return output.immediate
            target = self.response if export.is_response else self.request
            if output.headers is not None and target is not None:
                target.apply(output.headers)
            if output.body is not None:
                if export is Phase.REQUEST_BODY:
                    self.request_body, self.request_body_changed = output.body, True
                else:
                    self.response_body, self.response_body_changed = output.body, True
        return None


def _log_failure(exc: PluginCallError, export: Phase, fail_open: bool) -> None:
    extra = {"plugin": exc.plugin, "phase": export.value, "kind": exc.kind.value}
    action = "skipped its changes (fail_open)" if fail_open else "failed the request (fail_closed)"
    # An open breaker refuses every call; the state change itself was logged once already.
    level = logging.DEBUG if exc.kind is FailureKind.CIRCUIT_OPEN else logging.WARNING
    log.log(level, "%s; %s", exc, action, extra=extra)
