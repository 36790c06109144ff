"""The plugin contract: export names, the input a plugin receives and the output it may return.

The schema is proto/extproc/plugin/v1/plugin.proto. JSON plugins exchange its proto3 JSON
mapping (snake_case names); protobuf plugins exchange the binary encoding. Both decode into
the same validated `PluginOutput`, so the rest of the server never sees wire formats.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from google.protobuf import json_format

from extproc._pb.extproc.plugin.v1 import plugin_pb2
from extproc.errors import OutputError
from extproc.fields import match_header_name, value_bytes, value_problem, value_text
from extproc.phases import Phase

Pair = tuple[str, str]


# The most a plugin may hand from one phase to the next in `state` (docs/plugin-abi.md).
MAX_STATE_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class HeaderChanges:
    set: tuple[Pair, ...] = ()
    append: tuple[Pair, ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ImmediateReply:
    status: int
    headers: tuple[Pair, ...] = ()
    body: bytes = b""
    grpc_status: int | None = None
    details: str = ""


@dataclass(frozen=True, slots=True)
class PluginOutput:
    headers: HeaderChanges | None = None
    body: bytes | None = None
    immediate: ImmediateReply | None = None
    metadata: Mapping[str, Any] | None = None
    state: bytes | None = None  # None: unchanged; b"": dropped


@dataclass(frozen=True, slots=True)
class MessageView:
    """One side of the exchange as a plugin sees it."""

    headers: Sequence[Pair]
    body: bytes | None = None
    trailers: Sequence[Pair] | None = None


@dataclass(frozen=True, slots=True)
class Chunk:
    """Where a chunk phase's body sits in its message body."""

    index: int
    end_of_stream: bool


# --- input ---------------------------------------------------------------------------------


def body_json(body: bytes) -> dict[str, str]:
    try:
        return {"text": body.decode()}
    except UnicodeDecodeError:
        return {"data": base64.b64encode(body).decode("ascii")}


# A header value holds bytes that are not UTF-8 as these surrogate escapes (see extproc.fields). Written
# as regex escapes: mypyc cannot compile a string literal holding surrogates.
_ESCAPED_BYTE = re.compile(r"[\udc80-\udcff]")


def _headers_json(headers: Sequence[Pair]) -> list[dict[str, str]]:
    # Nearly every value is ASCII, which needs no further look.
    return [{"name": name, "value": value} if value.isascii() else _header_json(name, value) for name, value in headers]


def _header_json(name: str, value: str) -> dict[str, str]:
    """A header whose bytes are not UTF-8 carries them exactly in `raw_value`, and `value` shows them as text."""
    if _ESCAPED_BYTE.search(value) is None:
        return {"name": name, "value": value}
    return {"name": name, "value": _text(value), "raw_value": base64.b64encode(value_bytes(value)).decode("ascii")}


def _text(value: str) -> str:
    """`value` as Unicode text: each invalid UTF-8 sequence becomes U+FFFD."""
    return value_bytes(value).decode("utf-8", "replace")


def _pseudo_headers(headers: Sequence[Pair]) -> dict[str, str]:
    """The first value of each pseudo-header as text, in one pass."""
    found: dict[str, str] = {}
    for key, value in headers:
        # Envoy sends pseudo-headers first, so the search can stop at the first regular header.
        # (A slice, not str.startswith: a method call parses its arguments on every header.)
        if key[:1] != ":":
            break
        if key not in found:
            found[key] = value if value.isascii() else _text(value)
    return found


def build_input(
    export: Phase,
    plugin_name: str,
    request: MessageView,
    response: MessageView | None,
    attributes: Mapping[str, Any],
    metadata: Mapping[str, Any],
    *,
    state: bytes | None = None,
    route: Mapping[str, Any] | None = None,
    chunk: Chunk | None = None,
) -> dict[str, Any]:
    """The plugin input in its proto3 JSON shape; empty fields are left out as proto3 JSON does."""
    req_headers = request.headers
    pseudo = _pseudo_headers(req_headers).get
    http_request: dict[str, Any] = {
        "method": pseudo(":method", ""),
        "path": pseudo(":path", ""),
        "scheme": pseudo(":scheme", ""),
        "authority": pseudo(":authority", ""),
        "headers": _headers_json(req_headers),
    }
    if request.body is not None:
        http_request["body"] = body_json(request.body)
    if request.trailers is not None:
        http_request["trailers"] = _headers_json(request.trailers)
    data: dict[str, Any] = {"phase": export.wire_name, "plugin_name": plugin_name, "request": http_request}
    if response is not None:
        status = _pseudo_headers(response.headers).get(":status", "")
        http_response: dict[str, Any] = {
            # Three digits or 0: a longer digit string (nothing guarantees Envoy checked it) would overflow
            # the field's integer type, and the input could not be encoded.
            "status": int(status) if len(status) == 3 and status.isascii() and status.isdigit() else 0,
            "headers": _headers_json(response.headers),
        }
        if response.body is not None:
            http_response["body"] = body_json(response.body)
        if response.trailers is not None:
            http_response["trailers"] = _headers_json(response.trailers)
        data["response"] = http_response
    if attributes:
        data["attributes"] = attributes
    if metadata:
        data["metadata"] = metadata
    if state is not None:
        data["state"] = body_json(state)
    if route is not None:
        data["route"] = route
    if chunk is not None:
        if chunk.end_of_stream:
            data["end_of_stream"] = True
        if chunk.index:
            data["chunk_index"] = chunk.index
    return data


def encode_json(data: Mapping[str, Any]) -> bytes:
    return orjson.dumps(data)


def encode_protobuf(data: Mapping[str, Any]) -> bytes:
    message = json_format.ParseDict(data, plugin_pb2.PluginInput())
    return bytes(message.SerializeToString())


# --- output --------------------------------------------------------------------------------

_BAD_DETAILS = re.compile(r"[\r\n\x00]")
_OUTPUT_KEYS = frozenset({"headers", "body", "immediate_response", "dynamic_metadata", "state"})
_MUTATION_KEYS = frozenset({"set", "append", "remove"})
_IMMEDIATE_KEYS = frozenset({"status", "headers", "body", "grpc_status", "details"})
_PAIR_KEYS = frozenset({"name", "value", "raw_value"})
_BODY_KEYS = frozenset({"text", "data"})
MAX_HEADER_VALUE = 64 * 1024


def decode_json(raw: bytes) -> PluginOutput | None:
    """Parse a JSON plugin output; empty output (or `{}`) means no change."""
    if not raw.strip():
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OutputError("", f"output is not valid JSON: {exc}") from None
    return validate_output(data)


def decode_protobuf(raw: bytes) -> PluginOutput | None:
    if not raw:
        return None
    message = plugin_pb2.PluginOutput()
    try:
        message.ParseFromString(raw)
    except Exception as exc:  # the upb parser raises a bare DecodeError subclass of Exception
        raise OutputError("", f"output is not a valid PluginOutput protobuf: {exc}") from None
    return validate_output(json_format.MessageToDict(message, preserving_proto_field_name=True))


# --- the phase declaration ---------------------------------------------------------------

DECLARE_PHASES = "declare_phases"


def declared_phases_json(raw: bytes) -> frozenset[Phase]:
    """`declare_phases`' output in the JSON encoding: {"phases": ["request_headers", ...]}."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise OutputError("", f"output is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or set(data) - {"phases"}:
        raise OutputError("", 'must be {"phases": [...]} and nothing else')
    return _declared(data.get("phases", []))


def declared_phases_protobuf(raw: bytes) -> frozenset[Phase]:
    message = plugin_pb2.PhaseDeclaration()
    try:
        message.ParseFromString(raw)
    except Exception as exc:  # the upb parser raises a bare DecodeError subclass of Exception
        raise OutputError("", f"output is not a valid PhaseDeclaration protobuf: {exc}") from None
    return _declared(list(message.phases))


def _declared(names: object) -> frozenset[Phase]:
    if not isinstance(names, list):
        raise OutputError("phases", "must be a list of phase names")
    phases = set()
    for index, name in enumerate(names):
        try:
            phases.add(Phase.named(name if isinstance(name, str) else ""))
        except ValueError:
            choices = ", ".join(phase.config_name for phase in Phase)
            raise OutputError(f"phases[{index}]", f"{name!r} is not a phase; phases are {choices}") from None
    return frozenset(phases)


def validate_output(data: object) -> PluginOutput | None:
    """Check untrusted plugin output against the contract and HTTP's rules."""
    obj = _mapping(data, "", _OUTPUT_KEYS)
    if not obj:
        return None
    headers = _header_changes(obj["headers"]) if "headers" in obj else None
    body = _body(obj["body"], "body") if "body" in obj else None
    immediate = _immediate(obj["immediate_response"]) if "immediate_response" in obj else None
    metadata = None
    if "dynamic_metadata" in obj:
        metadata = _mapping(obj["dynamic_metadata"], "dynamic_metadata", None)
    state = _state(obj["state"]) if "state" in obj else None
    # Positional: a dataclass __init__ called with keywords costs a third more.
    return PluginOutput(headers, body, immediate, metadata, state)


def _mapping(value: object, where: str, allowed: frozenset[str] | None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise OutputError(where, f"must be an object, got {type(value).__name__}")
    if allowed is not None and not value.keys() <= allowed:
        unknown = sorted(set(value) - allowed)
        raise OutputError(where, f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")
    return value


def _list(value: object, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise OutputError(where, f"must be a list, got {type(value).__name__}")
    return value


def header_name(value: object, where: str, *, pseudo: bool = True) -> str:
    """The lower-case name; a token, or (when `pseudo`) one of the five pseudo-headers."""
    if not isinstance(value, str) or not value:
        raise OutputError(where, "header name must be a non-empty string")
    if match_header_name(value) is None:
        what = "unknown pseudo-header" if value[:1] == ":" else "invalid header name"
        raise OutputError(where, f"{what} {value!r}")
    if not pseudo and value[:1] == ":":
        raise OutputError(where, f"pseudo-header {value!r} may not be set here")
    return value.lower()


def _raw_value(entry: dict[str, Any]) -> str:
    if "value" in entry:
        raise OutputError("", "has both value and raw_value; give one")
    return value_text(_base64(entry["raw_value"], "raw_value"))


def _at(where: str, index: int, exc: OutputError) -> OutputError:
    """`exc`, raised about one list item, located at `where[index]`.

    Item paths are built only for the error: on the request path every item is valid.
    """
    item = f"{where}[{index}]"
    return OutputError(f"{item}.{exc.where}" if exc.where else item, exc.reason)


def _pairs(value: object, where: str, *, pseudo: bool = True) -> tuple[Pair, ...]:
    """`{"name", "value"}` or `{"name", "raw_value"}` items, each value checked by its name's grammar."""
    pairs = []
    for index, item in enumerate(_list(value, where)):
        # Checked inline, not in a helper per item: measured, that call cost about 600 instructions a header.
        try:
            entry = _mapping(item, "", _PAIR_KEYS)
            name = header_name(entry.get("name"), "name", pseudo=pseudo)
            if "raw_value" in entry:
                field, text = "raw_value", _raw_value(entry)
            else:
                # Typed as object until checked: compiled (mypyc), a str variable would refuse the int itself.
                field, given = "value", entry.get("value", "")
                if not isinstance(given, str):
                    raise OutputError(field, f"header value must be a string, got {type(given).__name__}")
                text = given
            if len(text) > MAX_HEADER_VALUE:
                raise OutputError(field, f"header value longer than {MAX_HEADER_VALUE} bytes")
            problem = value_problem(name, text)
            if problem is not None:
                raise OutputError(field, problem)
            pairs.append((name, text))
        except OutputError as exc:
            raise _at(where, index, exc) from None
    return tuple(pairs)


def _names(value: object, where: str) -> tuple[str, ...]:
    names = []
    for index, name in enumerate(_list(value, where)):
        try:
            names.append(header_name(name, ""))
        except OutputError as exc:
            raise _at(where, index, exc) from None
    return tuple(names)


def _header_changes(value: object) -> HeaderChanges:
    obj = _mapping(value, "headers", _MUTATION_KEYS)
    # Most outputs use one of the three lists; an absent one costs no call.
    return HeaderChanges(
        _pairs(obj["set"], "headers.set") if "set" in obj else (),
        _pairs(obj["append"], "headers.append") if "append" in obj else (),
        _names(obj["remove"], "headers.remove") if "remove" in obj else (),
    )


def _body(value: object, where: str) -> bytes:
    obj = _mapping(value, where, _BODY_KEYS)
    if len(obj) != 1:
        raise OutputError(where, "must have exactly one of 'text' or 'data'")
    if "text" in obj:
        text = obj["text"]
        if not isinstance(text, str):
            raise OutputError(f"{where}.text", "must be a string")
        return text.encode()
    return _base64(obj["data"], f"{where}.data")


def _state(value: object) -> bytes:
    # An empty Body (protobuf's set-but-empty message) drops the state like empty text does.
    state = _body(value, "state") if value else b""
    if len(state) > MAX_STATE_BYTES:
        raise OutputError("state", f"{len(state)} bytes is over the {MAX_STATE_BYTES}-byte limit")
    return state


def _base64(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise OutputError(where, "must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise OutputError(where, "is not valid base64") from None


def _int(value: object, where: str, low: int, high: int) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit():  # proto3 JSON allows numbers as strings
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise OutputError(where, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise OutputError(where, f"must be between {low} and {high}, got {value}")
    return value


def _immediate(value: object) -> ImmediateReply:
    where = "immediate_response"
    obj = _mapping(value, where, _IMMEDIATE_KEYS)
    if "status" not in obj:
        raise OutputError(f"{where}.status", "is required")
    details = obj.get("details", "")
    if not isinstance(details, str) or _BAD_DETAILS.search(details):
        raise OutputError(f"{where}.details", "must be a single-line string")
    # Envoy sets :status from `status`; no other pseudo-header belongs in a response.
    headers = _pairs(obj.get("headers"), f"{where}.headers", pseudo=False)
    grpc_status = obj.get("grpc_status")
    return ImmediateReply(
        status=_int(obj["status"], f"{where}.status", 200, 599),
        headers=headers,
        body=_body(obj["body"], f"{where}.body") if obj.get("body") is not None else b"",
        grpc_status=None if grpc_status is None else _int(grpc_status, f"{where}.grpc_status", 0, 16),
        details=details,
    )


def check_body_sizes(output: PluginOutput, limit: int) -> None:
    """Plugin-made bodies obey the same cap as bodies the server accepts from Envoy."""
    if output.body is not None and len(output.body) > limit:
        raise OutputError("body", f"{len(output.body)} bytes is over the {limit}-byte limit")
    if output.immediate is not None and len(output.immediate.body) > limit:
        raise OutputError(
            "immediate_response.body", f"{len(output.immediate.body)} bytes is over the {limit}-byte limit"
        )


# Pseudo-headers a plugin may replace, per side; removing or appending them is never allowed.
SETTABLE_REQUEST_PSEUDO = frozenset({":path", ":authority", ":method", ":scheme"})
SETTABLE_RESPONSE_PSEUDO = frozenset({":status"})


def check_for_export(output: PluginOutput, export: Phase) -> None:
    """Reject changes the phase cannot carry: bodies outside body phases, headers in chunk phases,
    forbidden pseudo-headers (any, in trailers).

    Values were checked by their grammar when the output was decoded.
    """
    if output.body is not None and not export.is_body:
        raise OutputError("body", f"a body can only be replaced in body phases, not in {export.value}")
    changes = output.headers
    if changes is None:
        return
    if export.is_chunk:
        raise OutputError("headers", f"headers cannot change in {export.value}: they went on before the first chunk")
    if export.is_trailers:
        settable: frozenset[str] = frozenset()
    else:
        settable = SETTABLE_RESPONSE_PSEUDO if export.is_response else SETTABLE_REQUEST_PSEUDO
    for index, (name, _) in enumerate(changes.set):
        if name[:1] == ":" and name not in settable:
            raise OutputError(f"headers.set[{index}].name", f"pseudo-header {name!r} may not be changed here")
    if changes.append or changes.remove:
        for field, names in (("append", [name for name, _ in changes.append]), ("remove", list(changes.remove))):
            for index, name in enumerate(names):
                if name.startswith(":"):
                    raise OutputError(f"headers.{field}[{index}]", f"pseudo-header {name!r} may only be set")
