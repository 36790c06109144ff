"""What a plugin call gave, in one plain form, and how two such results differ.

A shadow version's output is compared with the live one's (rollout.py), a replayed call's with the one
recorded on real traffic (recording.py, replay.py). The plain form is the plugin output contract's JSON
shape (docs/plugin-abi.md) with empty parts left out, or ``{"failed": KIND}`` for a call that failed, so
it is also what a recording file holds.

A difference has two descriptions: `summary`, safe for the server's log (header names, body digests and
lengths, statuses, metadata keys: never a header value or body text), and `detail`, with the values, for
the replay report a developer reads.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from extproc.contract import Pair, PluginOutput, body_json
from extproc.errors import PluginCallError

# The parts of a result, in the order differences are reported; also a metrics label.
PARTS: Final = ("failed", "headers", "body", "immediate_response", "dynamic_metadata")
_HEADER_OPERATIONS: Final = ("set", "append", "remove")

Result = PluginOutput | PluginCallError | None
Plain = dict[str, Any]


def plain(result: Result) -> Plain:
    """The result in the contract's JSON shape; {} for no change."""
    if isinstance(result, PluginCallError):
        return {"failed": result.kind.value}
    if result is None:
        return {}
    out: Plain = {}
    changes = result.headers
    if changes is not None:
        headers = {
            operation: items
            for operation, items in (
                ("set", _pairs(changes.set)),
                ("append", _pairs(changes.append)),
                ("remove", list(changes.remove)),
            )
            if items
        }
        if headers:
            out["headers"] = headers
    if result.body is not None:
        out["body"] = body_json(result.body)
    reply = result.immediate
    if reply is not None:
        immediate: Plain = {"status": reply.status}
        if reply.headers:
            immediate["headers"] = _pairs(reply.headers)
        if reply.body:
            immediate["body"] = body_json(reply.body)
        if reply.grpc_status is not None:
            immediate["grpc_status"] = reply.grpc_status
        if reply.details:
            immediate["details"] = reply.details
        out["immediate_response"] = immediate
    if result.metadata:
        out["dynamic_metadata"] = dict(result.metadata)
    return out


def _pairs(pairs: Sequence[Pair]) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in pairs]


def changes_anything(result: Result) -> bool:
    """Whether a successful call's output changes the exchange (headers, body, a reply or metadata)."""
    if result is None or isinstance(result, PluginCallError):
        return False
    changes = result.headers
    if changes is not None and (changes.set or changes.append or changes.remove):
        return True
    return result.body is not None or result.immediate is not None or bool(result.metadata)


@dataclass(frozen=True, slots=True)
class Difference:
    part: str  # one of PARTS
    summary: str  # no values: fit for the server's log
    detail: str  # with values: for a developer's report


def differences(expected: Plain, actual: Plain) -> list[Difference]:
    """How `actual` differs from `expected` (both as `plain` gives them), part by part."""
    found: list[Difference] = []
    for part in PARTS:
        want, got = expected.get(part), actual.get(part)
        if want != got:
            found.append(_COMPARERS[part](want, got))
    return found


def _failed(want: str | None, got: str | None) -> Difference:
    def shown(kind: str | None) -> str:
        return "succeeded" if kind is None else f"failed ({kind})"

    text = f"failed: expected {shown(want)}, got {shown(got)}"
    return Difference("failed", text, text)


def _headers(want: Mapping[str, Any] | None, got: Mapping[str, Any] | None) -> Difference:
    names: list[str] = []
    details: list[str] = []
    for operation in _HEADER_OPERATIONS:
        before = _by_name((want or {}).get(operation, []), operation)
        after = _by_name((got or {}).get(operation, []), operation)
        for name in sorted(before.keys() | after.keys()):
            if before.get(name) != after.get(name):
                names.append(f"{operation} {name}")
                details.append(
                    f"headers.{operation} {name}: expected {_shown(before.get(name))}, got {_shown(after.get(name))}"
                )
    return Difference("headers", "headers differ: " + ", ".join(names), "\n".join(details))


def _by_name(items: Sequence[Any], operation: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for item in items:
        if operation == "remove":
            found.setdefault(str(item), []).append("(removed)")
        else:
            found.setdefault(item["name"], []).append(item["value"])
    return found


def _shown(values: list[str] | None) -> str:
    if values is None:
        return "nothing"
    return repr(values[0]) if len(values) == 1 else repr(values)


def _body(want: Mapping[str, str] | None, got: Mapping[str, str] | None) -> Difference:
    summary = f"body differs: expected {_digest(want)}, got {_digest(got)}"
    return Difference("body", summary, f"body: expected {_body_text(want)}, got {_body_text(got)}")


def body_bytes(body: Mapping[str, str]) -> bytes:
    """The bytes of a body in the contract's form ({"text": ...} or {"data": base64})."""
    return body["text"].encode() if "text" in body else base64.b64decode(body["data"])


def _digest(body: Mapping[str, str] | None) -> str:
    if body is None:
        return "no body"
    data = body_bytes(body)
    return f"{len(data)} bytes sha256:{hashlib.sha256(data).hexdigest()[:12]}"


def _body_text(body: Mapping[str, str] | None) -> str:
    if body is None:
        return "no body"
    text = body.get("text")
    if text is None:
        return _digest(body)
    return repr(text) if len(text) <= 200 else f"{text[:200]!r}... ({_digest(body)})"


def _immediate(want: Mapping[str, Any] | None, got: Mapping[str, Any] | None) -> Difference:
    if want is None or got is None:
        status = (got or want or {}).get("status")
        what = "expected none, got one" if want is None else "expected one, got none"
        text = f"immediate response: {what} (status {status})"
        return Difference("immediate_response", text, text)
    fields = sorted(name for name in want.keys() | got.keys() if want.get(name) != got.get(name))
    safe = []
    for name in fields:
        if name == "status":
            safe.append(f"status {want.get('status')} -> {got.get('status')}")
        elif name == "body":
            safe.append(f"body {_digest(want.get('body'))} -> {_digest(got.get('body'))}")
        elif name == "headers":
            changed = {item["name"] for item in want.get("headers", [])} ^ {
                item["name"] for item in got.get("headers", [])
            }
            safe.append(f"headers ({', '.join(sorted(changed)) or 'values'})")
        else:
            safe.append(name)
    detail = "\n".join(
        f"immediate_response.{name}: expected {json.dumps(want.get(name))}, got {json.dumps(got.get(name))}"
        for name in fields
    )
    return Difference("immediate_response", "immediate response differs: " + "; ".join(safe), detail)


def _metadata(want: Mapping[str, Any] | None, got: Mapping[str, Any] | None) -> Difference:
    before, after = want or {}, got or {}
    keys = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
    detail = "\n".join(
        f"dynamic_metadata.{key}: expected {json.dumps(before.get(key))}, got {json.dumps(after.get(key))}"
        for key in keys
    )
    return Difference("dynamic_metadata", "dynamic metadata differs: " + ", ".join(keys), detail)


_COMPARERS: Final[dict[str, Callable[[Any, Any], Difference]]] = {
    "failed": _failed,
    "headers": _headers,
    "body": _body,
    "immediate_response": _immediate,
    "dynamic_metadata": _metadata,
}
