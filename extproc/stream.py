"""The per-stream state machine: one gRPC stream carries one HTTP exchange.

Envoy message -> phase -> plugin chain -> mutations -> Envoy message. Every message Envoy
sends gets exactly one reply.
"""

from __future__ import annotations

import logging
from collections.abc import Set as AbstractSet

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc import envoy, metrics
from extproc.chain import Exchange
from extproc.config import FailurePolicy
from extproc.contract import HeaderChanges, ImmediateReply
from extproc.headers import HeaderList
from extproc.phases import Phase
from extproc.plugins.registry import PluginSet

log = logging.getLogger("extproc.stream")

_EMPTY_HEADERS_REPLY = ep.HeadersResponse()
_NO_FIELDS: frozenset[str] = frozenset()
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


class BodyBuffer:
    """Collects one body for plugins that want it whole, whatever Envoy's body mode.

    BUFFERED: one message with end_of_stream. STREAMED: chunks, each answered with an empty
    body while we hold it, and the whole (possibly rewritten) body goes out with the last.
    BUFFERED_PARTIAL: a chunk without end_of_stream means the body outgrew Envoy's buffer and
    the rest never reaches us, so the chunk passes through and plugins do not see the body.
    """

    __slots__ = ("chunks", "held", "passthrough", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.held = False
        self.passthrough = False

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)

    def whole(self) -> bytes:
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


class ExchangeStream:
    """State for one ext_proc stream."""

    def __init__(self, plugins: PluginSet, max_body_bytes: int) -> None:
        self._plugins = plugins
        self._max_body_bytes = max_body_bytes
        self._exchange: Exchange | None = None
        self._is_grpc = False
        self._partial_modes: AbstractSet[str] = _NO_FIELDS
        # Made on a body's first chunk: most exchanges have no body phase.
        self._bodies: dict[str, BodyBuffer] = {}
        # No plugin needs anything more from this exchange: the server may end the stream, and
        # Envoy then goes on without it (it would only get empty replies from here on).
        self.done = False

    async def handle(self, request: ep.ProcessingRequest) -> ep.ProcessingResponse:
        kind = request.WhichOneof("request")
        if kind == "request_headers":
            return await self._request_headers(request)
        if kind == "request_body":
            return await self._body(request.request_body, Phase.REQUEST_BODY)
        if kind == "response_headers":
            return await self._response_headers(request.response_headers)
        if kind == "response_body":
            return await self._body(request.response_body, Phase.RESPONSE_BODY)
        if kind == "request_trailers":
            return ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
        if kind == "response_trailers":
            return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())
        raise ValueError(f"ProcessingRequest without a known message (got {kind!r})")

    # --- phases ----------------------------------------------------------------------------

    async def _request_headers(self, request: ep.ProcessingRequest) -> ep.ProcessingResponse:
        message = request.request_headers
        pairs = envoy.header_pairs(message.headers)
        headers = HeaderList(pairs)
        if request.HasField("protocol_config"):
            self._partial_modes = envoy.partial_body_fields(request.protocol_config)
        selection = self._plugins.select(
            headers.first(":method") or "",
            headers.first(":path") or "",
            headers.first(":authority") or "",
            pairs,
        )
        if not selection.plugins:
            self.done = True
            return envoy.headers_reply(request_body=False, response_headers=False, response_body=False)
        self._is_grpc = (headers.first("content-type") or "").startswith("application/grpc")
        exchange = Exchange(selection, headers, envoy.attributes(request), envoy.metadata_context(request))
        if self._plugins.rollout is not None:  # rollout hook: canaries, shadows, records, outcomes (rollout.py)
            selection = self._plugins.rollout.begin(exchange)
        self._exchange = exchange
        reply = await exchange.run(Phase.REQUEST_HEADERS)
        wait_for_body = selection.request_body and not message.end_of_stream
        if reply is None and selection.generate_response and not wait_for_body:
            reply = await exchange.run(Phase.GENERATE_RESPONSE)
        if reply is not None:
            return self._immediate(reply)
        self.done = not (wait_for_body or selection.response_headers or selection.response_body)
        response = envoy.headers_reply(
            request_body=wait_for_body,
            response_headers=selection.response_headers,
            response_body=selection.response_body,
        )
        self._fill_common(response.request_headers, exchange.request, route=True)
        self._attach_metadata(response)
        return response

    async def _response_headers(self, message: ep.HttpHeaders) -> ep.ProcessingResponse:
        exchange = self._exchange
        if exchange is None:
            return ep.ProcessingResponse(response_headers=_EMPTY_HEADERS_REPLY)
        exchange.response = HeaderList(envoy.header_pairs(message.headers))
        reply = await exchange.run(Phase.RESPONSE_HEADERS)
        if reply is not None:
            return self._immediate(reply)
        self.done = not exchange.selection.response_body
        response = ep.ProcessingResponse()
        self._fill_common(response.response_headers, exchange.response, route=False)
        self._attach_metadata(response)
        return response

    async def _body(self, message: ep.HttpBody, export: Phase) -> ep.ProcessingResponse:
        field = "request_body" if export is Phase.REQUEST_BODY else "response_body"
        exchange = self._exchange
        buffer = self._bodies.get(field) or self._bodies.setdefault(field, BodyBuffer())
        if exchange is None or buffer.passthrough:
            # No plugin wants this exchange (Envoy ignored our mode override), or the body outgrew the buffer.
            return ep.ProcessingResponse(**{field: ep.BodyResponse()})
        buffer.add(message.body)
        if buffer.size > self._max_body_bytes:
            return self._over_limit(field, buffer, exchange)
        if not message.end_of_stream:
            return self._hold_chunk(field, buffer)
        body = buffer.whole()
        headers = exchange.request if export is Phase.REQUEST_BODY else exchange.response
        if export is Phase.REQUEST_BODY:
            exchange.request_body = body
            reply = await exchange.run(export)
            if reply is None and exchange.selection.generate_response:
                reply = await exchange.run(Phase.GENERATE_RESPONSE)
            changed, new_body = exchange.request_body_changed, exchange.request_body
        else:
            exchange.response_body = body
            reply = await exchange.run(export)
            changed, new_body = exchange.response_body_changed, exchange.response_body
        if reply is not None:
            return self._immediate(reply)
        selection = exchange.selection
        self.done = export is Phase.RESPONSE_BODY or not (selection.response_headers or selection.response_body)
        response = ep.ProcessingResponse()
        body_response = getattr(response, field)
        body_response.SetInParent()
        if changed or buffer.held:
            # Held chunks went out empty, so the last reply carries the whole body.
            body_response.response.body_mutation.body = new_body or b""
        if headers is not None and not buffer.held:
            # Headers can still change only while Envoy buffers the whole body.
            if changed and headers.first("content-length") is not None:
                headers.apply(_content_length(len(new_body or b"")))
            self._fill_common(body_response, headers, route=export is Phase.REQUEST_BODY)
        self._attach_metadata(response)
        return response

    # --- helpers ---------------------------------------------------------------------------

    def _hold_chunk(self, field: str, buffer: BodyBuffer) -> ep.ProcessingResponse:
        if field in self._partial_modes:
            # The body outgrew Envoy's buffer: the rest never reaches us, and Envoy was told it may go on.
            log.warning("%s larger than Envoy's buffer: passed through without plugins", field.replace("_", " "))
            return self._pass_through(field, buffer)
        buffer.held = True
        common = ep.CommonResponse(body_mutation=ep.BodyMutation(clear_body=True))
        return ep.ProcessingResponse(**{field: ep.BodyResponse(response=common)})

    def _over_limit(self, field: str, buffer: BodyBuffer, exchange: Exchange) -> ep.ProcessingResponse:
        """A body larger than max_body_bytes: a request gets 413; a response fails for its body plugins,
        so it passes unprocessed only when every one of them is fail_open."""
        if field == "request_body":
            return self._immediate(_TOO_LARGE)
        if any(
            plugin.spec.on_error is FailurePolicy.FAIL_CLOSED and Phase.RESPONSE_BODY in plugin.exports
            for plugin in exchange.selection.plugins
        ):
            return self._immediate(_RESPONSE_TOO_LARGE)
        log.warning("response body larger than server.max_body_bytes: passed through without plugins (fail_open)")
        return self._pass_through(field, buffer)

    def _pass_through(self, field: str, buffer: BodyBuffer) -> ep.ProcessingResponse:
        buffer.passthrough = True
        # Chunks held so far went out empty; send them now, ahead of this one.
        common = ep.CommonResponse()
        if buffer.held:
            common.body_mutation.body = buffer.whole()
        buffer.chunks.clear()
        return ep.ProcessingResponse(**{field: ep.BodyResponse(response=common)})

    def _fill_common(self, reply: ep.HeadersResponse | ep.BodyResponse, headers: HeaderList, *, route: bool) -> None:
        """Put the plugins' net header change into `reply` (built in place: a nested message passed
        to a constructor would be copied)."""
        reply.SetInParent()
        if not headers.changed:
            return
        diff = headers.diff()
        headers.rebase()
        common = reply.response
        envoy.fill_header_mutation(common.header_mutation, diff)
        if route and diff.touches_route:
            common.clear_route_cache = True

    def _immediate(self, reply: ImmediateReply) -> ep.ProcessingResponse:
        self.done = True  # Envoy sends nothing after an immediate response
        metrics.STREAMS.immediate_response(reply.status)
        response = envoy.immediate_response(reply, self._is_grpc)
        self._attach_metadata(response)
        return response

    def _attach_metadata(self, response: ep.ProcessingResponse) -> None:
        exchange = self._exchange
        if exchange is not None and exchange.emitted_metadata:
            response.dynamic_metadata.CopyFrom(envoy.dynamic_metadata(exchange.emitted_metadata))
            exchange.emitted_metadata = {}


def _content_length(length: int) -> HeaderChanges:
    return HeaderChanges(set=(("content-length", str(length)),))
