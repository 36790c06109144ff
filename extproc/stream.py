"""The per-stream state machine: one gRPC stream carries one HTTP exchange.

Envoy message -> phase -> plugin chain -> mutations -> Envoy message. Every message Envoy sends gets
one reply, with two exceptions of Envoy's FULL_DUPLEX_STREAMED body mode, where replies need not pair
with messages: a chunk held for plugins that read the body whole gets none, and trailers that end such
a body get the body first, then their own reply.

Each direction's body reaches its plugins in one of the ways of `Flow`, decided per exchange from what
the plugins read and Envoy's configured body mode (see `plan`):

* no plugin reads it: Envoy does not send it (under FULL_DUPLEX_STREAMED, where the mode cannot be
  changed per request without losing data, each chunk is sent back as it came);
* some plugin reads it whole: BUFFERED (the whole body in one message), or chunks collected by the
  server when Envoy is configured to stream; chunk plugins then see it as one last chunk;
* only chunk plugins read it: STREAMED, each chunk through them as it comes, nothing kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final, TypeAlias

from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc import metrics, wire
from extproc.chain import REQUEST, RESPONSE, BodyBuffer, Direction, Exchange, Flow, Side, SidePlan
from extproc.config import FailurePolicy
from extproc.contract import Chunk, HeaderChanges, ImmediateReply
from extproc.headers import HeaderList
from extproc.phases import Phase
from extproc.plugins.registry import PluginSet, Selection

log = logging.getLogger("extproc.stream")

# What handle() returns: one reply, none yet, or several in order.
Replies: TypeAlias = ep.ProcessingResponse | tuple[ep.ProcessingResponse, ...]

_TOO_LARGE = ImmediateReply(
    status=413,
    headers=(("content-type", "text/plain"),),
    body=b"Payload Too Large\n",
    details="extproc_body_too_large",
)
# An upstream response larger than max_body_bytes, for a plugin that must see it (fail_closed).
_RESPONSE_TOO_LARGE = ImmediateReply(
    status=502,
    headers=(("content-type", "text/plain"),),
    body=b"Bad Gateway\n",
    details="extproc_response_body_too_large",
)
_STREAMED: Final = ProcessingMode.STREAMED
_DUPLEX: Final = ProcessingMode.FULL_DUPLEX_STREAMED
_PARTIAL: Final = ProcessingMode.BUFFERED_PARTIAL
# Envoy's configured body modes, request << 3 | response, as one small int (no allocation per stream).
_MODE_BITS: Final = 3
_CONTENT_LENGTH: Final = HeaderChanges(remove=("content-length",))
_LAST_CHUNK: Final = Chunk(0, True)


@dataclass(frozen=True, slots=True)
class Plan:
    """How every exchange of one selection flows under one pair of configured body modes."""

    request: SidePlan
    response: SidePlan
    response_wants: bool  # some plugin needs a message of the response
    # The reply to the request headers, serialized, for a request with a body and for one without.
    with_body: bytes
    without_body: bytes


def plan(selection: Selection, configured: int) -> Plan:
    """The plan for `selection` when Envoy's configured body modes are `configured` (see _MODE_BITS)."""
    request_mode, response_mode = configured >> _MODE_BITS, configured & ((1 << _MODE_BITS) - 1)
    request = _side_plan(
        REQUEST, request_mode, selection.request_body, selection.request_chunks, selection.request_trailers
    )
    response = _side_plan(
        RESPONSE, response_mode, selection.response_body, selection.response_chunks, selection.response_trailers
    )
    response_wants = selection.response_headers or response.flow is not Flow.NONE or response.trailers

    def reply(request_body: bool) -> bytes:
        return wire.headers_reply_bytes(
            _body_mode(request) if request_body else (_DUPLEX if request.duplex else ProcessingMode.NONE),
            response_wants,
            _body_mode(response),
            request.trailers,
            response.trailers,
        )

    return Plan(request, response, response_wants, reply(True), reply(False))


def _side_plan(direction: Direction, mode: int, whole: bool, chunks: bool, trailers: bool) -> SidePlan:
    # Envoy loses or misplaces a chunk when a request's mode switches into or out of FULL_DUPLEX_STREAMED
    # (tests/e2e/test_streaming.py), so a direction configured that way keeps it for every request.
    duplex = mode == _DUPLEX
    if whole:
        # A configured STREAMED stays: whether Envoy honours an override is not known here, and a STREAMED
        # chunk taken for a BUFFERED whole body would lose the rest.
        flow = Flow.COLLECT if duplex or mode == _STREAMED else Flow.WHOLE
    elif chunks:
        flow = Flow.CHUNKS
    else:
        flow = Flow.PASS if duplex else Flow.NONE
    # FULL_DUPLEX_STREAMED needs the trailers sent (Envoy refuses the config otherwise): a body that ends
    # with them has no last chunk.
    return SidePlan(direction, flow, duplex, trailers or duplex, partial=mode == _PARTIAL)


def _body_mode(side: SidePlan) -> ProcessingMode.BodySendMode.ValueType:
    if side.duplex:
        return _DUPLEX
    flow = side.flow
    if flow is Flow.WHOLE:
        return ProcessingMode.BUFFERED
    return _STREAMED if flow is Flow.COLLECT or flow is Flow.CHUNKS else ProcessingMode.NONE


class ExchangeStream:
    """State for one ext_proc stream."""

    def __init__(self, plugins: PluginSet, max_body_bytes: int) -> None:
        self._plugins = plugins
        self._max_body_bytes = max_body_bytes
        # None before the request headers, when no plugin wants the exchange, and after an immediate response.
        self._exchange: Exchange | None = None
        self._is_grpc = False
        # No plugin needs anything more from this exchange: the server may end the stream, and
        # Envoy then goes on without it (it would only get empty replies from here on).
        self.done = False

    async def handle(self, request: ep.ProcessingRequest) -> Replies:
        kind = request.WhichOneof("request")
        if kind == "request_headers":
            reply: Replies = await self._request_headers(request)
        else:
            exchange = self._exchange
            if exchange is None:
                return wire.empty_reply(kind)
            if kind == "response_headers":
                reply = await self._response_headers(exchange, request.response_headers)
            elif kind == "request_body":
                reply = await self._body(exchange, exchange.request, request.request_body)
            elif kind == "response_body":
                reply = await self._body(exchange, exchange.response, request.response_body)
            elif kind == "request_trailers":
                reply = await self._trailers(exchange, exchange.request, request.request_trailers)
            elif kind == "response_trailers":
                reply = await self._trailers(exchange, exchange.response, request.response_trailers)
            else:
                raise ValueError(f"ProcessingRequest without a known message (got {kind!r})")
        exchange = self._exchange
        if exchange is None:  # no plugin wants the exchange, or an immediate response (which took the metadata)
            self.done = True
            return reply
        if exchange.emitted_metadata:
            # On the last reply; a chunk held without a reply of its own ran no plugin, so emitted nothing.
            self._attach_metadata(reply if isinstance(reply, ep.ProcessingResponse) else reply[-1])
        self.done = not (exchange.request.wants or exchange.response.wants)
        return reply

    # --- phases ----------------------------------------------------------------------------

    async def _request_headers(self, request: ep.ProcessingRequest) -> ep.ProcessingResponse:
        message = request.request_headers
        pairs = wire.header_pairs(message.headers)
        headers = HeaderList(pairs)
        configured = 0
        if request.HasField("protocol_config"):
            config = request.protocol_config
            configured = config.request_body_mode << _MODE_BITS | config.response_body_mode
        selection = self._plugins.select(
            headers.first(":method") or "",
            headers.first(":path") or "",
            headers.first(":authority") or "",
            pairs,
        )
        rollout = self._plugins.rollout
        if rollout is not None:  # rollout hook: a canary takes its live version's place (rollout.py)
            selection = rollout.assign(selection, headers)
        plans = selection.plans
        # A containment test and a subscript: no method call on the path of every request.
        exchange_plan = (
            plans[configured] if configured in plans else plans.setdefault(configured, plan(selection, configured))
        )
        request_plan = exchange_plan.request
        if not selection.plugins and not (request_plan.duplex or exchange_plan.response.duplex):
            return ep.ProcessingResponse.FromString(exchange_plan.without_body)
        self._is_grpc = (headers.first("content-type") or "").startswith("application/grpc")
        has_body = not message.end_of_stream
        attributes = wire.attributes(request)
        route_text = attributes.pop(wire.ROUTE_METADATA_ATTRIBUTE, None) if attributes else None
        exchange = Exchange(
            selection,
            Side(request_plan, headers, has_body and (request_plan.flow is not Flow.NONE or request_plan.trailers)),
            Side(exchange_plan.response, None, exchange_plan.response_wants),
            attributes,
            wire.metadata_context(request),
            None if route_text is None else wire.route_values(str(route_text)),
        )
        if rollout is not None:  # rollout hook: outcomes, records and shadows of this exchange's calls
            rollout.watch(exchange, headers)
        self._exchange = exchange
        reply = await exchange.run(REQUEST.headers)
        waits_for_body = has_body and selection.request_body
        if reply is None and selection.generate_response and not waits_for_body:
            reply = await exchange.run(Phase.GENERATE_RESPONSE)
        if reply is not None:
            return self._immediate(reply)
        response = ep.ProcessingResponse.FromString(exchange_plan.with_body if has_body else exchange_plan.without_body)
        if has_body:
            _drop_content_length(exchange.request)
        self._fill_common(response.request_headers, headers, route=True)
        return response

    async def _response_headers(self, exchange: Exchange, message: ep.HttpHeaders) -> ep.ProcessingResponse:
        side = exchange.response
        headers = side.headers = HeaderList(wire.header_pairs(message.headers))
        if exchange.selection.response_headers:
            reply = await exchange.run(RESPONSE.headers)
            if reply is not None:
                return self._immediate(reply)
        side_plan = side.plan
        has_body = not message.end_of_stream
        side.wants = has_body and (side_plan.flow is not Flow.NONE or side_plan.trailers)
        if has_body:
            _drop_content_length(side)
        response = ep.ProcessingResponse()
        self._fill_common(response.response_headers, headers, route=False)
        return response

    async def _body(self, exchange: Exchange, side: Side, message: ep.HttpBody) -> Replies:
        flow = side.plan.flow
        if flow is Flow.CHUNKS:
            return await self._chunk(exchange, side, message)
        if flow is Flow.WHOLE or flow is Flow.COLLECT:
            return await self._whole(exchange, side, message)
        # PASS, or NONE: Envoy sent a body nobody asked for (it ignored the mode override).
        if message.end_of_stream:
            side.wants = False
        return _body_reply(side, message.body if side.plan.duplex else None, message.end_of_stream)

    async def _chunk(self, exchange: Exchange, side: Side, message: ep.HttpBody) -> ep.ProcessingResponse:
        """One chunk through the chunk plugins; nothing of it stays in the server."""
        last = message.end_of_stream
        chunk = side.chunk
        side.chunk = Chunk(0 if chunk is None else chunk.index + 1, last)
        side.body, side.body_changed = message.body, False
        reply = await exchange.run(side.plan.direction.chunk)
        if reply is not None:
            return self._immediate(reply)
        if last:
            side.wants = False
        body, changed = side.body, side.body_changed
        side.body = None
        response = _body_reply(side, body if changed or side.plan.duplex else None, last)
        return response

    async def _whole(self, exchange: Exchange, side: Side, message: ep.HttpBody) -> Replies:
        """A body for plugins that read it whole: in one message (BUFFERED), or collected from chunks."""
        side_plan = side.plan
        last = message.end_of_stream
        if side_plan.flow is Flow.WHOLE:
            # A message without end_of_stream is a whole body with trailers to follow (or under
            # BUFFERED_PARTIAL, the part that filled Envoy's buffer: the rest never reaches us).
            side.wants = not last and side_plan.trailers
            if not last and side_plan.partial:
                log.warning(
                    "%s body larger than Envoy's buffer: passed through without plugins", side_plan.direction.name
                )
                return _body_reply(side, None, False)
            if len(message.body) > self._max_body_bytes:
                return self._over_limit(exchange, side, None, last)
            return await self._run_whole(exchange, side, message.body, last, headers_open=True)
        buffer = side.buffer
        if buffer is None:
            buffer = side.buffer = BodyBuffer()
        if buffer.passthrough:
            if last:
                side.wants = False
            return _body_reply(side, message.body if side_plan.duplex else None, last)
        buffer.add(message.body)
        if buffer.size > self._max_body_bytes:
            return self._over_limit(exchange, side, buffer, last)
        if not last:
            if side_plan.duplex:
                return ()  # held: under FULL_DUPLEX_STREAMED a chunk needs no reply of its own
            buffer.held = True
            return _body_reply(side, b"", False)
        side.wants = False
        return await self._run_whole(exchange, side, buffer.take(), True, headers_open=False)

    async def _run_whole(
        self, exchange: Exchange, side: Side, body: bytes, end_of_stream: bool, *, headers_open: bool
    ) -> Replies:
        """The whole-body phase: whole-body plugins and chunk plugins (which see it as one last chunk) in
        config order; after the request body, generate_response. `end_of_stream`: no trailers follow.
        `headers_open`: Envoy still holds this direction's headers, so they may change too."""
        direction = side.plan.direction
        side.body, side.body_changed, side.chunk = body, False, _LAST_CHUNK
        reply = await exchange.run(direction.body, direction.chunk)
        if reply is None and direction is REQUEST and exchange.selection.generate_response:
            reply = await exchange.run(Phase.GENERATE_RESPONSE)
        if reply is not None:
            return self._immediate(reply)
        new_body, changed = side.body, side.body_changed
        side.body = None
        held = side.buffer is not None and side.buffer.held
        response = _body_reply(side, new_body if changed or held or side.plan.duplex else None, end_of_stream)
        headers = side.headers
        if headers_open and headers is not None:
            if changed and headers.first("content-length") is not None:
                headers.apply(HeaderChanges(set=(("content-length", str(len(new_body or b""))),)))
            self._fill_common(_body_of(side, response), headers, route=direction.routes)
        return response

    def _over_limit(
        self, exchange: Exchange, side: Side, buffer: BodyBuffer | None, last: bool
    ) -> ep.ProcessingResponse:
        """A body larger than max_body_bytes: a request gets 413; a response fails for its whole-body plugins,
        so it passes unprocessed only when every one of them is fail_open."""
        direction = side.plan.direction
        if direction is REQUEST:
            return self._immediate(_TOO_LARGE)
        if any(
            plugin.spec.on_error is FailurePolicy.FAIL_CLOSED and direction.body in plugin.exports
            for plugin in exchange.selection.plugins
        ):
            return self._immediate(_RESPONSE_TOO_LARGE)
        log.warning("response body larger than server.max_body_bytes: passed through without plugins (fail_open)")
        if buffer is None:
            return _body_reply(side, None, last)
        return self._pass_through(side, buffer, last)

    def _pass_through(self, side: Side, buffer: BodyBuffer, last: bool) -> ep.ProcessingResponse:
        """A collected body goes on without plugins: what was held now, the rest as it comes."""
        buffer.passthrough = True
        if last:
            side.wants = False
        held = buffer.take()
        return _body_reply(side, held if buffer.held or side.plan.duplex else None, last)

    async def _trailers(self, exchange: Exchange, side: Side, message: ep.HttpTrailers) -> Replies:
        side.wants = False
        side.trailers = trailers = HeaderList(wire.header_pairs(message.trailers))
        before: ep.ProcessingResponse | None = None
        buffer = side.buffer
        if buffer is not None and buffer.chunks and not buffer.passthrough:
            # The body ended with these trailers, without a last chunk: the collected body is whole now.
            if side.plan.duplex:
                whole = await self._run_whole(exchange, side, buffer.take(), False, headers_open=False)
                if self._exchange is None:  # an immediate response
                    return whole
                before = whole if isinstance(whole, ep.ProcessingResponse) else None
            else:
                # Held chunks went out empty and a trailers reply carries no body: Envoy's protocol has no
                # way to send this body on. envoy-config never configures this (docs/plugin-abi.md).
                log.error(
                    "%s body ended with trailers while held for plugins under Envoy's STREAMED mode: it is lost;"
                    " configure BUFFERED or FULL_DUPLEX_STREAMED for this direction",
                    side.plan.direction.name,
                )
        reply = await exchange.run(side.plan.direction.trailers)
        if reply is not None:
            return self._immediate(reply)
        response = ep.ProcessingResponse()
        trailers_reply = _trailers_of(side, response)
        trailers_reply.SetInParent()
        if trailers.changed:
            wire.fill_header_mutation(trailers_reply.header_mutation, trailers.diff())
            trailers.rebase()
        return response if before is None else (before, response)

    # --- helpers ---------------------------------------------------------------------------

    def _fill_common(self, reply: ep.HeadersResponse | ep.BodyResponse, headers: HeaderList, *, route: bool) -> None:
        """Put the plugins' net header change into `reply` (built in place: a nested message passed
        to a constructor would be copied)."""
        reply.SetInParent()
        if not headers.changed:
            return
        diff = headers.diff()
        headers.rebase()
        common = reply.response
        wire.fill_header_mutation(common.header_mutation, diff)
        if route and diff.touches_route:
            common.clear_route_cache = True

    def _immediate(self, reply: ImmediateReply) -> ep.ProcessingResponse:
        metrics.STREAMS.immediate_response(reply.status)
        response = wire.immediate_response(reply, self._is_grpc)
        self._attach_metadata(response)
        self._exchange = None  # Envoy sends nothing after an immediate response
        return response

    def _attach_metadata(self, response: ep.ProcessingResponse) -> None:
        exchange = self._exchange
        if exchange is not None and exchange.emitted_metadata:
            response.dynamic_metadata.CopyFrom(wire.dynamic_metadata(exchange.emitted_metadata))
            exchange.emitted_metadata = None


def _drop_content_length(side: Side) -> None:
    """A body that plugins may change while it streams needs no length up front; a stale one would cut it."""
    flow = side.plan.flow
    headers = side.headers
    if (flow is Flow.CHUNKS or flow is Flow.COLLECT) and headers is not None and headers.first("content-length"):
        headers.apply(_CONTENT_LENGTH)


def _body_of(side: Side, response: ep.ProcessingResponse) -> ep.BodyResponse:
    return response.request_body if side.plan.direction is REQUEST else response.response_body


def _trailers_of(side: Side, response: ep.ProcessingResponse) -> ep.TrailersResponse:
    return response.request_trailers if side.plan.direction is REQUEST else response.response_trailers


def _body_reply(side: Side, body: bytes | None, end_of_stream: bool) -> ep.ProcessingResponse:
    """A reply to a body message of `side`: `body` replaces the message's body (None: it stays as it came).

    Under FULL_DUPLEX_STREAMED, Envoy forwards only what the reply sends, so `body` is what goes on.
    """
    response = ep.ProcessingResponse()
    reply = _body_of(side, response)
    reply.SetInParent()
    if body is None:
        return response
    mutation = reply.response.body_mutation
    if side.plan.duplex:
        streamed = mutation.streamed_response
        streamed.body = body
        streamed.end_of_stream = end_of_stream
    elif body:
        mutation.body = body
    else:
        mutation.clear_body = True
    return response
