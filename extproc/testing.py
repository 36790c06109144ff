"""Test a plugin without Envoy: the server's own stream code runs it, a small Envoy stand-in applies the result.

Every exchange goes through `ExchangeStream.handle` with real ext_proc protobuf messages, so the
loader, the plugin chain, contract validation, content-length fixing and failure handling are the
server's, not a copy. The stand-in only does what Envoy does with the replies: apply header and
body mutations, honour mode overrides, stop at an immediate response.

    from extproc.testing import PluginHarness, request, response

    with PluginHarness("examples/header-rewrite/header-rewrite.wasm", config={...}) as plugin:
        result = plugin.run(request("GET", "/api", headers={"x-debug": "1"}))
        assert result.upstream is not None and result.upstream.header("x-debug") is None
"""

from __future__ import annotations

__all__ = [
    "BodyLike",
    "Case",
    "CaseFailure",
    "CasesError",
    "CasesReport",
    "HeadersLike",
    "HttpRequest",
    "HttpResponse",
    "PluginHarness",
    "Result",
    "assert_cases",
    "check",
    "exchange",
    "exchange_async",
    "load_cases",
    "plugin_config",
    "request",
    "response",
    "run_cases",
]

import asyncio
import difflib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeAlias

import yaml
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf import struct_pb2

from extproc import wire
from extproc.config import Config, parse_config
from extproc.contract import Pair
from extproc.errors import ExtprocError
from extproc.fields import value_bytes, value_text
from extproc.plugins.loader import LoadedPlugin, load_plugin
from extproc.plugins.registry import PluginSet
from extproc.plugins.runner import shared_threads
from extproc.plugins.store import KeyValueStore, MemoryStore
from extproc.stream import ExchangeStream

# A value given as bytes is sent as exactly those bytes (which need not be UTF-8).
HeaderValueLike: TypeAlias = str | bytes
HeadersLike: TypeAlias = (
    Mapping[str, HeaderValueLike | Sequence[HeaderValueLike]] | Iterable[tuple[str, HeaderValueLike]]
)
BodyLike: TypeAlias = str | bytes | None

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
_ATTRIBUTES_FILTER = "envoy.filters.http.ext_proc"


@dataclass(frozen=True)
class Message:
    """Headers in wire order (names lower case, pseudo-headers included), a body and trailers.

    Values are text; bytes that are not UTF-8 appear as surrogate escapes (U+DC80-U+DCFF), and
    `header_bytes` gives any value's exact bytes. `chunks` is the body as it travels: one chunk per
    body message (a test gives them to stream a body; a result shows what each chunk became).
    """

    headers: tuple[Pair, ...]
    body: bytes = b""
    trailers: tuple[Pair, ...] = ()
    chunks: tuple[bytes, ...] = ()

    def header(self, name: str) -> str | None:
        """The first value of `name`, or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)

    def header_values(self, name: str) -> list[str]:
        wanted = name.lower()
        return [value for key, value in self.headers if key == wanted]

    def header_bytes(self, name: str) -> bytes | None:
        """The exact bytes of the first value of `name`, or None."""
        value = self.header(name)
        return None if value is None else value_bytes(value)

    def trailer(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.trailers if key == wanted), None)

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def body_chunks(self) -> tuple[bytes, ...]:
        """The body as Envoy streams it: the given chunks, else the body as one chunk."""
        return self.chunks or ((self.body,) if self.body else ())


@dataclass(frozen=True)
class HttpRequest(Message):
    attributes: Mapping[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.header(":method") or ""

    @property
    def path(self) -> str:
        return self.header(":path") or ""


@dataclass(frozen=True)
class HttpResponse(Message):
    @property
    def status(self) -> int:
        return int(self.header(":status") or 0)


@dataclass(frozen=True)
class Result:
    """What happened to one exchange.

    `upstream` is the request as it reached the upstream (None when an immediate response came from a
    request phase); `response` is what the client got: the upstream response after the response
    phases, or the immediate response. `response` is None when the test gave no upstream response
    and no plugin answered.
    """

    upstream: HttpRequest | None
    response: HttpResponse | None
    immediate: bool
    immediate_details: str
    metadata: Mapping[str, Any]
    phases: tuple[str, ...]  # the ext_proc messages the server received, in order

    @property
    def status(self) -> int | None:
        return None if self.response is None else self.response.status


def _pairs(headers: HeadersLike | None) -> list[Pair]:
    if headers is None:
        return []
    if isinstance(headers, Mapping):
        pairs: list[Pair] = []
        for name, value in headers.items():
            values = [value] if isinstance(value, (str, bytes)) else list(value)
            pairs.extend((name.lower(), _value(v)) for v in values)
        return pairs
    return [(name.lower(), _value(value)) for name, value in headers]


def _value(value: HeaderValueLike) -> str:
    # Held as the server holds header values, so exact bytes survive.
    return value_text(value) if isinstance(value, bytes) else str(value)


def _body(body: BodyLike, json_body: Any, chunks: Sequence[str | bytes] | None) -> tuple[bytes, str | None]:
    """The body bytes and, for JSON given as data, the content-type it implies."""
    if sum(given is not None for given in (body, json_body, chunks)) > 1:
        raise ValueError("give one of body, json_body and chunks")
    if json_body is not None:
        return json.dumps(json_body).encode(), "application/json"
    if chunks is not None:
        return b"".join(_chunk_bytes(chunks)), None
    if body is None:
        return b"", None
    return (body.encode() if isinstance(body, str) else bytes(body)), None


def _chunk_bytes(chunks: Sequence[str | bytes] | None) -> tuple[bytes, ...]:
    if chunks is None:
        return ()
    if isinstance(chunks, (str, bytes)) or not all(isinstance(chunk, (str, bytes)) for chunk in chunks):
        raise ValueError("chunks must be a list of strings or bytes")
    return tuple(chunk.encode() if isinstance(chunk, str) else bytes(chunk) for chunk in chunks)


def request(
    method: str = "GET",
    path: str = "/",
    headers: HeadersLike | None = None,
    body: BodyLike = None,
    *,
    json_body: Any = None,
    authority: str = "example.com",
    scheme: str = "http",
    attributes: Mapping[str, Any] | None = None,
    chunks: Sequence[str | bytes] | None = None,
    trailers: HeadersLike | None = None,
) -> HttpRequest:
    """A client request as Envoy would pass it on: pseudo-headers first, content-length when there is a body
    (not for `chunks`: a streamed body is sent chunked). `chunks` streams the body in these pieces."""
    data, content_type = _body(body, json_body, chunks)
    extra = _pairs(headers)
    names = {name for name, _ in extra}
    pairs = [(":authority", authority), (":path", path), (":method", method.upper()), (":scheme", scheme)]
    pairs.extend(extra)
    if content_type is not None and "content-type" not in names:
        pairs.append(("content-type", content_type))
    if data and chunks is None and "content-length" not in names:
        pairs.append(("content-length", str(len(data))))
    return HttpRequest(
        tuple(pairs),
        data,
        tuple(_pairs(trailers)),
        _chunk_bytes(chunks),
        dict(attributes or {"source.address": "127.0.0.1:40000"}),
    )


def response(
    status: int = 200,
    headers: HeadersLike | None = None,
    body: BodyLike = None,
    *,
    json_body: Any = None,
    chunks: Sequence[str | bytes] | None = None,
    trailers: HeadersLike | None = None,
) -> HttpResponse:
    """An upstream response; content-length is added when there is a body (not for `chunks`)."""
    data, content_type = _body(body, json_body, chunks)
    extra = _pairs(headers)
    names = {name for name, _ in extra}
    pairs = [(":status", str(status)), *extra]
    if content_type is not None and "content-type" not in names:
        pairs.append(("content-type", content_type))
    if data and chunks is None and "content-length" not in names:
        pairs.append(("content-length", str(len(data))))
    return HttpResponse(tuple(pairs), data, tuple(_pairs(trailers)), _chunk_bytes(chunks))


# --- the Envoy stand-in -------------------------------------------------------------------------


def _header_map(pairs: Iterable[Pair]) -> Any:
    header_map = base_pb2.HeaderMap()
    for name, value in pairs:
        header_map.headers.add(key=name, raw_value=value_bytes(value))
    return header_map


def _option_value(option: Any) -> str:
    header = option.header
    return value_text(header.raw_value) if header.raw_value else str(header.value)


def _apply_mutation(pairs: list[Pair], mutation: Any) -> list[Pair]:
    """Envoy's order: removals, then each set_headers entry (overwrite or append)."""
    gone = {name.lower() for name in mutation.remove_headers}
    result = [pair for pair in pairs if pair[0] not in gone]
    for option in mutation.set_headers:
        name = option.header.key.lower()
        value = _option_value(option)
        append = option.append.value if option.HasField("append") else option.append_action == wire.APPEND
        if append:
            result.append((name, value))
            continue
        index = next((i for i, (key, _) in enumerate(result) if key == name), None)
        if index is None:
            result.append((name, value))
        else:
            result[index] = (name, value)
            result = [pair for i, pair in enumerate(result) if i <= index or pair[0] != name]
    return result


def _apply_common(pairs: list[Pair], body: bytes, common: Any) -> tuple[list[Pair], bytes]:
    if common.HasField("header_mutation"):
        pairs = _apply_mutation(pairs, common.header_mutation)
    if common.HasField("body_mutation"):
        mutation = common.body_mutation
        kind = mutation.WhichOneof("mutation")
        if kind == "body":
            body = mutation.body
        elif kind == "clear_body" and mutation.clear_body:
            body = b""
        elif kind == "streamed_response":
            body = mutation.streamed_response.body
    return pairs, body


def _immediate(reply: Any) -> HttpResponse:
    pairs = _apply_mutation([(":status", str(reply.status.code))], reply.headers)
    return HttpResponse(tuple(pairs), reply.body)


class _Modes:
    """The processing mode in force for one stream, as Envoy tracks it (defaults: headers only)."""

    def __init__(self) -> None:
        self.request_body: ProcessingMode.BodySendMode.ValueType = ProcessingMode.NONE
        self.response_headers = True
        self.response_body: ProcessingMode.BodySendMode.ValueType = ProcessingMode.NONE
        self.request_trailers = False
        self.response_trailers = False

    def override(self, reply: Any) -> None:
        if not reply.HasField("mode_override"):
            return
        mode = reply.mode_override
        self.request_body = mode.request_body_mode
        self.response_headers = mode.response_header_mode != ProcessingMode.SKIP
        self.response_body = mode.response_body_mode
        self.request_trailers = mode.request_trailer_mode == ProcessingMode.SEND
        self.response_trailers = mode.response_trailer_mode == ProcessingMode.SEND


class _ImmediateSent(ExtprocError):
    """Ends an exchange early: the server answered with an immediate response."""

    def __init__(self, reply: Any) -> None:
        super().__init__("immediate response")
        self.reply = reply


_BODY_FIELDS = {True: ("request_body", "request_trailers"), False: ("response_body", "response_trailers")}


def exchange(plugins: PluginSet, req: HttpRequest, resp: HttpResponse | None = None) -> Result:
    """Run one HTTP exchange through the server's stream code (on an event loop of its own)."""
    return asyncio.run(exchange_async(plugins, req, resp))


async def exchange_async(plugins: PluginSet, req: HttpRequest, resp: HttpResponse | None = None) -> Result:
    """`exchange` for callers already on an event loop."""
    stream = ExchangeStream(plugins, plugins.config.server.max_body_bytes)
    modes = _Modes()
    phases: list[str] = []
    metadata: dict[str, Any] = {}

    async def send(message: ep.ProcessingRequest) -> list[ep.ProcessingResponse]:
        phases.append(str(message.WhichOneof("request")))
        answer = await stream.handle(message)
        replies = list(answer) if isinstance(answer, tuple) else [answer]
        for reply in replies:
            if reply.HasField("dynamic_metadata"):
                metadata.update(wire.struct_to_dict(reply.dynamic_metadata).get(wire.METADATA_NAMESPACE, {}))
            if reply.HasField("immediate_response"):
                raise _ImmediateSent(reply.immediate_response)
            modes.override(reply)
        return replies

    async def message_body(
        is_request: bool, pairs: list[Pair], message: Message, mode: ProcessingMode.BodySendMode.ValueType
    ) -> tuple[list[Pair], tuple[bytes, ...]]:
        """What Envoy does with a body in `mode`: the headers and the body's chunks as they go on."""
        field, _ = _BODY_FIELDS[is_request]
        chunks = message.body_chunks
        if mode == ProcessingMode.NONE or not chunks:
            return pairs, chunks
        if mode in (ProcessingMode.BUFFERED, ProcessingMode.BUFFERED_PARTIAL):
            chunks = (message.body,)
        sent: list[bytes] = []
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1 and not message.trailers
            [reply] = await send(ep.ProcessingRequest(**{field: ep.HttpBody(body=chunk, end_of_stream=last)}))
            pairs, new_chunk = _apply_common(pairs, chunk, getattr(reply, field).response)
            sent.append(new_chunk)
        return pairs, tuple(sent)

    async def message_trailers(is_request: bool, message: Message, wanted: bool) -> tuple[Pair, ...]:
        _, field = _BODY_FIELDS[is_request]
        if not message.trailers or not wanted:
            return message.trailers
        replies = await send(ep.ProcessingRequest(**{field: ep.HttpTrailers(trailers=_header_map(message.trailers))}))
        # Under FULL_DUPLEX_STREAMED a body may come first; the trailers' own reply is the last.
        common = ep.CommonResponse(header_mutation=getattr(replies[-1], field).header_mutation)
        pairs, _ = _apply_common(list(message.trailers), b"", common)
        return tuple(pairs)

    attributes = struct_pb2.Struct()
    attributes.update(dict(req.attributes))
    upstream: HttpRequest | None = None
    try:
        [reply] = await send(
            ep.ProcessingRequest(
                request_headers=ep.HttpHeaders(
                    headers=_header_map(req.headers), end_of_stream=not req.body_chunks and not req.trailers
                ),
                attributes={_ATTRIBUTES_FILTER: attributes},
            )
        )
        pairs, _ = _apply_common(list(req.headers), b"", reply.request_headers.response)
        pairs, chunks = await message_body(True, pairs, req, modes.request_body)
        trailers = await message_trailers(True, req, modes.request_trailers)
        upstream = HttpRequest(tuple(pairs), b"".join(chunks), trailers, chunks, req.attributes)
        if resp is None:
            return Result(upstream, None, False, "", metadata, tuple(phases))
        pairs = list(resp.headers)
        chunks = resp.body_chunks
        trailers = resp.trailers
        if modes.response_headers:
            [reply] = await send(
                ep.ProcessingRequest(
                    response_headers=ep.HttpHeaders(
                        headers=_header_map(pairs), end_of_stream=not chunks and not resp.trailers
                    )
                )
            )
            pairs, _ = _apply_common(pairs, b"", reply.response_headers.response)
            pairs, chunks = await message_body(False, pairs, resp, modes.response_body)
            trailers = await message_trailers(False, resp, modes.response_trailers)
    except _ImmediateSent as sent:
        immediate = sent.reply
        return Result(upstream, _immediate(immediate), True, immediate.details, metadata, tuple(phases))
    return Result(
        upstream, HttpResponse(tuple(pairs), b"".join(chunks), trailers, chunks), False, "", metadata, tuple(phases)
    )


# --- the harness ----------------------------------------------------------------------------------


def plugin_config(
    wasm: Path | str,
    *,
    name: str = "plugin",
    config: Mapping[str, Any] | None = None,
    source: Path | None = None,
    **settings: Any,
) -> Config:
    """A server config with this one plugin, validated by the server's own config loader.

    `settings` are further plugin keys (execution_points, timeout_ms, memory_limit_mb, match, ...).
    """
    wasm_path = Path(wasm).absolute()
    entry: dict[str, Any] = {"name": name, "path": str(wasm_path), **settings}
    if config is not None:
        entry["config"] = dict(config)
    return parse_config({"plugins": [entry]}, source or wasm_path.with_suffix(".test.yaml"))


class PluginHarness:
    """One plugin loaded as the server loads it, with its own key-value store (fresh per harness)."""

    def __init__(
        self,
        wasm: Path | str,
        *,
        config: Mapping[str, Any] | None = None,
        name: str = "plugin",
        store: KeyValueStore | None = None,
        source: Path | None = None,
        **settings: Any,
    ) -> None:
        self.config = plugin_config(wasm, name=name, config=config, source=source, **settings)
        self.store: KeyValueStore = MemoryStore() if store is None else store
        spec = self.config.plugins[0]
        loaded = load_plugin(spec, self.config.server, shared_threads(), self.store)
        self.plugins = PluginSet(self.config, [loaded])

    @property
    def plugin(self) -> LoadedPlugin:
        return self.plugins.plugins[0]

    def run(self, req: HttpRequest, resp: HttpResponse | None = None) -> Result:
        return exchange(self.plugins, req, resp)

    def close(self) -> None:
        self.plugins.close()

    def __enter__(self) -> PluginHarness:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# --- CASES.yaml -----------------------------------------------------------------------------------

CASE_KEYS = ("name", "request", "response", "expect")
REQUEST_KEYS = ("method", "path", "headers", "body", "json", "chunks", "trailers", "authority", "scheme", "attributes")
RESPONSE_KEYS = ("status", "headers", "body", "json", "chunks", "trailers")
EXPECT_KEYS = ("immediate", "status", "details", "upstream", "response", "metadata")
MESSAGE_EXPECT_KEYS = ("method", "path", "headers", "body", "json", "chunks", "trailers")


class CasesError(ExtprocError, ValueError):
    """A CASES.yaml that cannot be used; says which file and which key."""

    def __init__(self, file: Path, key: str, reason: str) -> None:
        super().__init__(f"{file}: {key}: {reason}" if key else f"{file}: {reason}")
        self.file = file
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class Case:
    name: str
    key: str  # "cases[3]", for messages
    request: HttpRequest
    response: HttpResponse | None
    expect: Mapping[str, Any]


@dataclass(frozen=True)
class CaseFailure:
    case: Case
    problems: tuple[str, ...]

    def __str__(self) -> str:
        lines = [f"FAIL {self.case.name} ({self.case.key})"]
        lines.extend("  " + line for problem in self.problems for line in problem.splitlines())
        return "\n".join(lines)


@dataclass(frozen=True)
class CasesReport:
    file: Path
    passed: tuple[Case, ...]
    failed: tuple[CaseFailure, ...]

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        lines = [str(failure) for failure in self.failed]
        lines.append(f"{self.file}: {len(self.passed)} passed, {len(self.failed)} failed")
        return "\n".join(lines)


def load_cases(path: Path) -> tuple[dict[str, Any], tuple[Case, ...]]:
    """The plugin settings (`plugin:`) and the cases of a CASES.yaml file."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CasesError(path, "", f"cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise CasesError(path, "", f"invalid YAML: {exc}") from None
    top = _cases_mapping(path, "", data, ("plugin", "cases"))
    settings = _cases_mapping(path, "plugin", top.get("plugin") or {}, None)
    if "path" in settings:
        raise CasesError(path, "plugin.path", "the plugin file is given on the command line, not here")
    items = top.get("cases")
    if not isinstance(items, list) or not items:
        raise CasesError(path, "cases", "must be a non-empty list")
    return dict(settings), tuple(_case(path, f"cases[{i}]", item) for i, item in enumerate(items))


def _cases_mapping(path: Path, key: str, value: object, allowed: Sequence[str] | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CasesError(path, key, f"must be a mapping, got {type(value).__name__}")
    if allowed is not None:
        for name in value:
            if name not in allowed:
                where = f"{key}.{name}" if key else str(name)
                raise CasesError(path, where, f"unknown key; allowed: {', '.join(allowed)}")
    return value


def _case(path: Path, key: str, value: object) -> Case:
    item = _cases_mapping(path, key, value, CASE_KEYS)
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise CasesError(path, f"{key}.name", "must be a non-empty string")
    req = _cases_mapping(path, f"{key}.request", item.get("request") or {}, REQUEST_KEYS)
    expect = _cases_mapping(path, f"{key}.expect", item.get("expect"), EXPECT_KEYS)
    for side in ("upstream", "response"):
        if side in expect:
            _cases_mapping(path, f"{key}.expect.{side}", expect[side], MESSAGE_EXPECT_KEYS)
    try:
        http_request = request(
            str(req.get("method", "GET")),
            str(req.get("path", "/")),
            req.get("headers"),
            req.get("body"),
            json_body=req.get("json"),
            authority=str(req.get("authority", "example.com")),
            scheme=str(req.get("scheme", "http")),
            attributes=req.get("attributes"),
            chunks=req.get("chunks"),
            trailers=req.get("trailers"),
        )
        http_response = None
        if item.get("response") is not None:
            resp = _cases_mapping(path, f"{key}.response", item["response"], RESPONSE_KEYS)
            http_response = response(
                int(resp.get("status", 200)),
                resp.get("headers"),
                resp.get("body"),
                json_body=resp.get("json"),
                chunks=resp.get("chunks"),
                trailers=resp.get("trailers"),
            )
    except (TypeError, ValueError, AttributeError) as exc:
        raise CasesError(path, key, f"invalid request or response: {exc}") from None
    return Case(name, key, http_request, http_response, expect)


def check(expect: Mapping[str, Any], result: Result) -> list[str]:
    """Differences between `expect` (the CASES.yaml `expect:` mapping) and `result`, readable."""
    problems: list[str] = []
    if "immediate" in expect and bool(expect["immediate"]) != result.immediate:
        got = f"an immediate response {result.status}" if result.immediate else "no immediate response"
        problems.append(f"immediate: expected {expect['immediate']!r}, got {got}")
    if "status" in expect and expect["status"] != result.status:
        problems.append(f"status: expected {expect['status']!r}, got {result.status!r}")
    if "details" in expect and expect["details"] != result.immediate_details:
        problems.append(f"details: expected {expect['details']!r}, got {result.immediate_details!r}")
    for side, message in (("upstream", result.upstream), ("response", result.response)):
        if side not in expect:
            continue
        if message is None:
            reason = "an immediate response came first" if side == "upstream" else "the case gives no response"
            problems.append(f"{side}: expected a message, got none ({reason})")
            continue
        problems.extend(_check_message(side, expect[side], message))
    if "metadata" in expect and expect["metadata"] != dict(result.metadata):
        problems.append(_diff("metadata", expect["metadata"], dict(result.metadata)))
    return problems


def _check_message(side: str, expect: Mapping[str, Any], message: Message) -> list[str]:
    problems: list[str] = []
    for pseudo in ("method", "path"):
        if pseudo in expect and expect[pseudo] != message.header(f":{pseudo}"):
            problems.append(f"{side}.{pseudo}: expected {expect[pseudo]!r}, got {message.header(f':{pseudo}')!r}")
    for part, pairs in (("headers", message.headers), ("trailers", message.trailers)):
        for name, wanted in (expect.get(part) or {}).items():
            values = [value for key, value in pairs if key == name.lower()]
            if wanted is None:
                if values:
                    problems.append(f"{side}.{part}.{name}: expected absent, got {_shown(values)}")
            elif isinstance(wanted, list):
                if values != [str(v) for v in wanted]:
                    problems.append(f"{side}.{part}.{name}: expected {wanted!r}, got {_shown(values)}")
            elif values != [str(wanted)]:
                problems.append(f"{side}.{part}.{name}: expected {str(wanted)!r}, got {_shown(values)}")
    if "chunks" in expect:
        chunks = [chunk.decode("utf-8", errors="replace") for chunk in message.body_chunks]
        if [str(chunk) for chunk in expect["chunks"]] != chunks:
            problems.append(_diff(f"{side}.chunks", [str(chunk) for chunk in expect["chunks"]], chunks))
    if "body" in expect:
        text = message.body.decode("utf-8", errors="replace")
        if str(expect["body"]) != text:
            problems.append(_diff(f"{side}.body", str(expect["body"]), text))
    if "json" in expect:
        try:
            actual = json.loads(message.body)
        except ValueError:
            problems.append(f"{side}.json: body is not JSON: {message.body[:200]!r}")
        else:
            if actual != expect["json"]:
                problems.append(_diff(f"{side}.json", expect["json"], actual))
    return problems


def _shown(values: list[str]) -> str:
    if not values:
        return "absent"
    return repr(values[0]) if len(values) == 1 else repr(values)


def _diff(where: str, expected: Any, actual: Any) -> str:
    def lines(value: Any) -> list[str]:
        text = value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
        return text.splitlines() or [""]

    diff = difflib.unified_diff(lines(expected), lines(actual), "expected", "actual", lineterm="")
    return f"{where} differs:\n" + "\n".join(f"  {line}" for line in diff)


def run_cases(wasm: Path | str, cases_file: Path | str) -> CasesReport:
    """Run every case of `cases_file` in order against one harness (so key-value state carries over)."""
    path = Path(cases_file)
    settings, cases = load_cases(path)
    passed: list[Case] = []
    failed: list[CaseFailure] = []
    with PluginHarness(wasm, source=path.absolute(), **settings) as harness:
        for case in cases:
            problems = check(case.expect, harness.run(case.request, case.response))
            if problems:
                failed.append(CaseFailure(case, tuple(problems)))
            else:
                passed.append(case)
    return CasesReport(path, tuple(passed), tuple(failed))


def assert_cases(wasm: Path | str, cases_file: Path | str) -> None:
    """For pytest: run the cases and fail with the readable report when any case fails."""
    report = run_cases(wasm, cases_file)
    if not report.ok:
        raise AssertionError(str(report))
