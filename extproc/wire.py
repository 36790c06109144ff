"""The wire: translation between Envoy's ext_proc messages and the server's own values.

Only this module and stream.py know Envoy's protobuf types; plugins never see them. (Named so as not to be
taken for the `envoy` package of those types, imported beside it.)
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf import struct_pb2, text_format

from extproc.contract import ImmediateReply, Pair
from extproc.fields import value_bytes, value_text
from extproc.headers import HeaderDiff

OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
APPEND = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
METADATA_NAMESPACE = "extproc"


def header_pairs(header_map: Any) -> list[Pair]:
    """Envoy's header map as (name, value) pairs, in order, repeats kept."""
    headers = header_map.headers
    try:
        # Envoy 1.27+ sends raw_value (older ones `value`); valid UTF-8 is the common case.
        return [(header.key, header.raw_value.decode() or header.value) for header in headers]
    except UnicodeDecodeError:
        return [(header.key, _decode_value(header)) for header in headers]


def _decode_value(header: Any) -> str:
    raw = header.raw_value
    # Header bytes outside UTF-8 are legal on the wire (obs-text): value_text keeps each one exactly,
    # apart from every UTF-8 spelling, so a plugin can write them back unchanged.
    return value_text(raw) if raw else str(header.value)


def fill_header_mutation(mutation: ep.HeaderMutation, diff: HeaderDiff) -> None:
    if diff.removed:
        mutation.remove_headers.extend(diff.removed)
    set_headers = mutation.set_headers
    for name, values in diff.replaced:
        for index, value in enumerate(values):
            option = set_headers.add()
            option.header.key = name
            option.header.raw_value = value_bytes(value)
            _set_append(option, index > 0)


def _set_append(option: Any, append: bool) -> None:
    # Envoy's ext_proc reads the legacy `append` flag and treats it as false when unset,
    # whatever append_action says, so both are set.
    option.append.value = append
    option.append_action = APPEND if append else OVERWRITE


def _fill_pairs(mutation: ep.HeaderMutation, pairs: Iterable[Pair]) -> None:
    set_headers = mutation.set_headers
    for name, value in pairs:
        option = set_headers.add()
        option.header.key = name
        option.header.raw_value = value_bytes(value)
        _set_append(option, True)


# HTTP status -> gRPC status, after grpc/doc/http-grpc-status-mapping.md.
_GRPC_FROM_HTTP = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
GRPC_UNKNOWN = 2


def immediate_response(reply: ImmediateReply, is_grpc: bool) -> ep.ProcessingResponse:
    # Filled in place: constructing the nested messages first would copy each into its parent.
    response = ep.ProcessingResponse()
    immediate = response.immediate_response
    immediate.status.code = reply.status
    if reply.headers:
        _fill_pairs(immediate.headers, reply.headers)
    if reply.body:
        immediate.body = reply.body
    if reply.details:
        immediate.details = reply.details
    if is_grpc:
        grpc_status = reply.grpc_status
        if grpc_status is None:
            grpc_status = 0 if reply.status == 200 else _GRPC_FROM_HTTP.get(reply.status, GRPC_UNKNOWN)
        immediate.grpc_status.status = grpc_status
    return response


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {key: _value(value) for key, value in struct.fields.items()}


def _value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_value(item) for item in value.list_value.values]
    if kind == "null_value" or kind is None:
        return None
    return getattr(value, kind)


def attributes(request: ep.ProcessingRequest) -> dict[str, Any]:
    """Envoy groups attributes by filter name; plugins get one flat map keyed by attribute name."""
    flat: dict[str, Any] = {}
    if not request.attributes:
        return flat
    for struct in request.attributes.values():
        flat.update(struct_to_dict(struct))
    return flat


def metadata_context(request: ep.ProcessingRequest) -> dict[str, Any]:
    if not request.HasField("metadata_context"):
        return {}
    return {name: struct_to_dict(struct) for name, struct in request.metadata_context.filter_metadata.items()}


def dynamic_metadata(per_plugin: Mapping[str, Mapping[str, Any]]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update({METADATA_NAMESPACE: dict(per_plugin)})
    return struct


def headers_reply_bytes(
    request_body: ProcessingMode.BodySendMode.ValueType,
    response_headers: bool,
    response_body: ProcessingMode.BodySendMode.ValueType,
    request_trailers: bool,
    response_trailers: bool,
) -> bytes:
    """A reply to request headers (no change yet) asking Envoy for exactly these phases, serialized: a
    stream parses it from these bytes, half the cost of building it or of copying a cached message."""
    mode = ProcessingMode(
        request_header_mode=ProcessingMode.SEND,
        response_header_mode=ProcessingMode.SEND if response_headers else ProcessingMode.SKIP,
        request_body_mode=request_body,
        response_body_mode=response_body,
        request_trailer_mode=ProcessingMode.SEND if request_trailers else ProcessingMode.SKIP,
        response_trailer_mode=ProcessingMode.SEND if response_trailers else ProcessingMode.SKIP,
    )
    reply = ep.ProcessingResponse(mode_override=mode)
    reply.request_headers.SetInParent()
    return bytes(reply.SerializeToString())


def empty_reply(kind: str | None) -> ep.ProcessingResponse:
    """The reply that changes nothing, to a message of `kind` (a ProcessingRequest field name)."""
    serialized = _EMPTY_REPLIES.get(kind or "")
    if serialized is None:
        raise ValueError(f"ProcessingRequest without a known message (got {kind!r})")
    return ep.ProcessingResponse.FromString(serialized)


def _empty(kind: str, reply: Any) -> bytes:
    response = ep.ProcessingResponse(**{kind: reply})
    return bytes(response.SerializeToString())


_EMPTY_REPLIES = {
    "request_headers": _empty("request_headers", ep.HeadersResponse()),
    "response_headers": _empty("response_headers", ep.HeadersResponse()),
    "request_body": _empty("request_body", ep.BodyResponse()),
    "response_body": _empty("response_body", ep.BodyResponse()),
    "request_trailers": _empty("request_trailers", ep.TrailersResponse()),
    "response_trailers": _empty("response_trailers", ep.TrailersResponse()),
}

# The request attribute holding the route's metadata; Envoy sends it in protobuf text format.
ROUTE_METADATA_ATTRIBUTE = "xds.route_metadata"


@functools.lru_cache(maxsize=1024)  # a route sends the same text every time; parsing it takes 100+ us
def route_values(text: str) -> Mapping[str, Any] | None:
    """The values a route gives each plugin: its metadata under namespace "extproc", by plugin name.
    None when the route has none or the text does not parse."""
    metadata = base_pb2.Metadata()
    try:
        text_format.Parse(text, metadata)
    except text_format.ParseError:
        return None
    if METADATA_NAMESPACE not in metadata.filter_metadata:
        return None
    values = struct_to_dict(metadata.filter_metadata[METADATA_NAMESPACE])
    return MappingProxyType({name: value for name, value in values.items() if isinstance(value, dict)})
