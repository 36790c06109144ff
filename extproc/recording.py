"""Record what plugins receive on real traffic (`extproc serve --record DIR`), and read it back.

A sampled exchange has each of its plugin calls written as one JSON file,
``DIR/<plugin>/<time>-<pid>-<sequence>-<phase>.json``: the plugin's input as it got it, its output in the
contract's shape (comparison.plain) or how it failed, and the call's time. `extproc plugin replay` runs a
module against these files; `extproc plugin cases` turns them into a CASES.yaml.

Secrets stay out: the values of the configured header names (and the usual credential headers) become
``***`` in input and output, and so do the configured fields of JSON bodies, at any depth. A body that is
not JSON is written as it is: leave plugins whose bodies carry secrets in another form out of the
recording (``--record-plugin``).

The request path only samples and queues; one writer thread redacts, encodes and writes, so a slow disk
never holds up a request (a full queue drops the record, and says so once). Once the files written reach
the size cap, recording stops.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from extproc.comparison import Plain, Result, body_bytes, plain
from extproc.config import Config, ConfigError
from extproc.contract import HeaderChanges
from extproc.errors import ExtprocError
from extproc.headers import HeaderList
from extproc.phases import Phase
from extproc.redaction import MASK

log = logging.getLogger("extproc.recording")

FORMAT: Final = "extproc-record/1"
# Credentials that no recording should hold, whatever the command line says.
ALWAYS_REDACTED: Final = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"})
# Records waiting for the writer; beyond it a record is dropped rather than queued without bound.
_QUEUE_RECORDS: Final = 1000


@dataclass(frozen=True)
class RecordOptions:
    directory: Path
    fraction: float = 1.0  # of exchanges
    max_bytes: int = 100 * 1024 * 1024  # of files written, then recording stops
    redact_headers: frozenset[str] = frozenset()  # lower case; added to ALWAYS_REDACTED
    redact_fields: frozenset[str] = frozenset()  # JSON object keys, at any depth
    plugins: frozenset[str] = frozenset()  # names to record; empty: every plugin

    @property
    def headers(self) -> frozenset[str]:
        return ALWAYS_REDACTED | self.redact_headers


def add_arguments(serve: argparse.ArgumentParser, positive: Callable[[str], int]) -> None:
    """`extproc serve --record DIR` and its options; `positive` parses the command line's positive integers."""
    serve.add_argument("--record", type=Path, metavar="DIR", help="write what plugins receive, per call, under DIR")
    serve.add_argument(
        "--record-fraction", type=_fraction, default=1.0, metavar="F", help="share of exchanges recorded (default 1)"
    )
    serve.add_argument(
        "--record-max-mb", type=positive, default=100, metavar="N", help="stop after N MiB of files (default 100)"
    )
    serve.add_argument(
        "--record-redact-header",
        action="append",
        default=[],
        metavar="NAME",
        help=f"also mask this header's values (always: {', '.join(sorted(ALWAYS_REDACTED))}); repeat for more",
    )
    serve.add_argument(
        "--record-redact-field",
        action="append",
        default=[],
        metavar="NAME",
        help="mask this key of JSON bodies, at any depth; repeat for more",
    )
    serve.add_argument(
        "--record-plugin", action="append", default=[], metavar="NAME", help="record only this plugin; repeat for more"
    )


def options_from(args: argparse.Namespace, config: Config) -> RecordOptions | None:
    """The recording the command line asks for, or None; the plugins it names must be in the config."""
    given = [flag for flag in _OPTIONS if getattr(args, flag) not in (None, [], _DEFAULTS.get(flag))]
    if args.record is None:
        if given:
            raise ConfigError(config.source, f"--{given[0].replace('_', '-')}", "applies only with --record DIR")
        return None
    names = [spec.name for spec in config.plugins]
    for name in args.record_plugin:
        if name not in names:
            hint = difflib.get_close_matches(name, names, n=1)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(config.source, "--record-plugin", f"no plugin is called {name!r}{suggestion}")
    return RecordOptions(
        directory=args.record,
        fraction=args.record_fraction,
        max_bytes=args.record_max_mb * 1024 * 1024,
        redact_headers=frozenset(name.lower() for name in args.record_redact_header),
        redact_fields=frozenset(args.record_redact_field),
        plugins=frozenset(args.record_plugin),
    )


_OPTIONS: Final = ("record_fraction", "record_max_mb", "record_redact_header", "record_redact_field", "record_plugin")
_DEFAULTS: Final[dict[str, object]] = {"record_fraction": 1.0, "record_max_mb": 100}


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number above 0 and at most 1, got {text!r}")
    return value


class RecordError(ExtprocError):
    """A recording that cannot be read or written; names the file."""


@dataclass(frozen=True)
class Record:
    """One recorded plugin call."""

    path: Path
    plugin: str
    version: str  # "live" or "candidate"
    phase: Phase
    input: Mapping[str, Any]
    output: Plain  # comparison.plain of what the call gave
    latency_us: int
    redact_headers: frozenset[str]
    redact_fields: frozenset[str]

    @property
    def case(self) -> str:
        return f"{self.plugin}/{self.path.stem}"

    def redact(self, result: Plain) -> Plain:
        """`result` redacted as this record's output was, so that the two compare."""
        return redact_output(result, self.redact_headers, self.redact_fields)


# --- redaction ------------------------------------------------------------------------------------


def redact_input(payload: Mapping[str, Any], headers: frozenset[str], fields: frozenset[str]) -> dict[str, Any]:
    """A copy of a plugin input with the secrets masked."""
    out = dict(payload)
    for side in ("request", "response"):
        message = payload.get(side)
        if message is not None:
            copy = dict(message)
            copy["headers"] = _redact_pairs(message.get("headers", []), headers)
            if "body" in message:
                copy["body"] = _redact_body(message["body"], fields)
            out[side] = copy
    return out


def redact_output(result: Plain, headers: frozenset[str], fields: frozenset[str]) -> Plain:
    """comparison.plain output with the same secrets masked as in its input."""
    out = dict(result)
    changes = result.get("headers")
    if changes is not None:
        out["headers"] = {
            operation: items if operation == "remove" else _redact_pairs(items, headers)
            for operation, items in changes.items()
        }
    if "body" in result:
        out["body"] = _redact_body(result["body"], fields)
    reply = result.get("immediate_response")
    if reply is not None:
        reply = dict(reply)
        if "headers" in reply:
            reply["headers"] = _redact_pairs(reply["headers"], headers)
        if "body" in reply:
            reply["body"] = _redact_body(reply["body"], fields)
        out["immediate_response"] = reply
    return out


def _redact_pairs(pairs: Iterable[Mapping[str, str]], names: frozenset[str]) -> list[dict[str, str]]:
    # A masked value drops raw_value too: it holds the same bytes.
    return [{"name": pair["name"], "value": MASK} if pair["name"] in names else dict(pair) for pair in pairs]


def _redact_body(body: Mapping[str, str], fields: frozenset[str]) -> dict[str, str]:
    if not fields or "text" not in body:
        return dict(body)
    try:
        document = json.loads(body["text"])
    except ValueError:
        return dict(body)
    redacted, changed = _redact_fields(document, fields)
    # Re-encoded only when a field was masked: the plugin should see the bytes it saw, where possible.
    return {"text": json.dumps(redacted, ensure_ascii=False, separators=(",", ":"))} if changed else dict(body)


def _redact_fields(value: Any, fields: frozenset[str]) -> tuple[Any, bool]:
    if isinstance(value, dict):
        changed = False
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in fields:
                out[key], changed = MASK, True
            else:
                out[key], inner = _redact_fields(item, fields)
                changed = changed or inner
        return out, changed
    if isinstance(value, list):
        items = [_redact_fields(item, fields) for item in value]
        return [item for item, _ in items], any(inner for _, inner in items)
    return value, False


# --- writing --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    plugin: str
    version: str
    sha256: str
    phase: Phase
    payload: Mapping[str, Any]  # not changed after the call: build_input makes a new one per call
    result: Result
    seconds: float
    request_id: str
    at: float


class Recorder:
    """Samples exchanges and writes their plugin calls; `record` is safe to call from the event loop."""

    def __init__(self, options: RecordOptions) -> None:
        self.options = options
        self._headers = options.headers
        self._queue: queue.Queue[_Call | None] = queue.Queue(_QUEUE_RECORDS)
        self.written_bytes = 0
        self.recorded = 0
        self.dropped = 0
        # Set by the writer once the size cap is reached; read without a lock (a late read records one more).
        self.full = False
        self._sequence = 0
        options.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._write_all, name="extproc-record", daemon=True)
        self._thread.start()

    def sample(self) -> bool:
        """Whether to record the exchange that begins now."""
        return not self.full and random.random() < self.options.fraction

    def wants(self, plugin: str) -> bool:
        return not self.options.plugins or plugin in self.options.plugins

    def record(
        self,
        plugin: str,
        version: str,
        sha256: str,
        phase: Phase,
        payload: Mapping[str, Any],
        result: Result,
        seconds: float,
        request_id: str,
    ) -> None:
        call = _Call(plugin, version, sha256, phase, payload, result, seconds, request_id, time.time())
        try:
            self._queue.put_nowait(call)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("recording: the writer is behind; records are dropped (counted at the end)")

    def close(self) -> None:
        """Write what is queued, then stop the writer."""
        self._queue.put(None)
        self._thread.join()
        log.info(
            "recording: %d call(s) written to %s (%d bytes), %d dropped",
            self.recorded,
            self.options.directory,
            self.written_bytes,
            self.dropped,
        )

    def _write_all(self) -> None:
        while (call := self._queue.get()) is not None:
            if self.full:
                continue
            try:
                self._write(call)
            except (OSError, TypeError, ValueError) as exc:
                log.error("recording: cannot write a record of plugin %r: %s", call.plugin, exc)

    def _write(self, call: _Call) -> None:
        options = self.options
        document = {
            "format": FORMAT,
            "plugin": call.plugin,
            "version": call.version,
            "sha256": call.sha256,
            "phase": call.phase.config_name,
            "request_id": call.request_id,
            "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(call.at))
            + f".{int(call.at % 1 * 1000):03d}Z",
            "latency_us": round(call.seconds * 1e6),
            "redacted": {"headers": sorted(self._headers), "body_fields": sorted(options.redact_fields)},
            "input": redact_input(call.payload, self._headers, options.redact_fields),
            "output": redact_output(plain(call.result), self._headers, options.redact_fields),
        }
        data = json.dumps(document, indent=2).encode() + b"\n"
        if self.written_bytes + len(data) > options.max_bytes:
            self.full = True
            log.warning("recording: stopped at the size cap of %d bytes in %s", options.max_bytes, options.directory)
            return
        self._sequence += 1
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(call.at))
        folder = options.directory / call.plugin
        folder.mkdir(exist_ok=True)
        path = folder / f"{stamp}-{os.getpid()}-{self._sequence:06d}-{call.phase.config_name}.json"
        # Renamed into place: a reader (replay) never sees half a file.
        partial = path.with_suffix(".partial")
        partial.write_bytes(data)
        partial.rename(path)
        self.written_bytes += len(data)
        self.recorded += 1


# --- reading --------------------------------------------------------------------------------------


def load_records(directory: Path, plugin: str | None = None) -> list[Record]:
    """The records under `directory` (a recording, or one plugin's folder of it), oldest first; only
    `plugin`'s when given, and then there must be some. Without `plugin`, they must all be of one."""
    if not directory.is_dir():
        raise RecordError(f"{directory}: not a directory")
    records = [_read(path) for path in sorted(directory.rglob("*.json"), key=lambda p: p.name)]
    names = sorted({record.plugin for record in records})
    if plugin is not None:
        records = [record for record in records if record.plugin == plugin]
        if not records:
            have = f" (it has records of {', '.join(names)})" if names else ""
            raise RecordError(f"{directory}: no records of plugin {plugin!r}{have}")
    elif len(names) > 1:
        raise RecordError(f"{directory}: records of several plugins ({', '.join(names)}); choose one with --plugin")
    if not records:
        raise RecordError(f"{directory}: no records (files *.json written by extproc serve --record)")
    return records


def _read(path: Path) -> Record:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise RecordError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise RecordError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RecordError(f"{path}: not a record (format {FORMAT!r})")
    try:
        redacted = data["redacted"]
        return Record(
            path=path,
            plugin=str(data["plugin"]),
            version=str(data["version"]),
            phase=Phase.named(data["phase"]),
            input=_mapping(data["input"]),
            output=dict(_mapping(data["output"])),
            latency_us=int(data["latency_us"]),
            redact_headers=frozenset(redacted["headers"]),
            redact_fields=frozenset(redacted["body_fields"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RecordError(f"{path}: malformed record: {exc!r}") from None


def _mapping(value: object) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return value


# --- CASES.yaml -----------------------------------------------------------------------------------


def to_cases(records: Iterable[Record]) -> dict[str, Any]:
    """A CASES.yaml document (extproc plugin test) whose cases expect what each recorded call did.

    Only the recorded phases run (`execution_points`), so a case checks exactly one recorded call: the
    headers it changed as they reach the upstream or the client, its body, its immediate response and
    its metadata.
    """
    records = list(records)
    phases = sorted({record.phase for record in records}, key=list(Phase).index)
    cases = [_case(record) for record in records if "failed" not in record.output]
    return {
        "plugin": {"name": records[0].plugin, "execution_points": [phase.config_name for phase in phases]},
        "cases": cases,
    }


def _case(record: Record) -> dict[str, Any]:
    given = record.input
    request = _message(given["request"])
    http_request = {
        "method": _pseudo(given["request"], "method"),
        "path": _pseudo(given["request"], "path"),
        "authority": _pseudo(given["request"], "authority"),
        "scheme": _pseudo(given["request"], "scheme"),
        **request,
    }
    if given.get("attributes"):
        http_request["attributes"] = dict(given["attributes"])
    case: dict[str, Any] = {"name": record.case, "request": http_request}
    response = given.get("response")
    if response is not None:
        case["response"] = {"status": response.get("status", 200), **_message(response)}
    case["expect"] = _expect(record, given)
    return case


def _pseudo(message: Mapping[str, Any], name: str) -> str:
    return str(message.get(name, ""))


def _message(message: Mapping[str, Any]) -> dict[str, Any]:
    headers: dict[str, list[str]] = {}
    for pair in message.get("headers", []):
        if not pair["name"].startswith(":"):
            headers.setdefault(pair["name"], []).append(pair["value"])
    out: dict[str, Any] = {
        "headers": {name: values[0] if len(values) == 1 else values for name, values in headers.items()}
    }
    if "body" in message:
        out["body"] = body_bytes(message["body"]).decode("utf-8", "replace")
    return out


def _expect(record: Record, given: Mapping[str, Any]) -> dict[str, Any]:
    output = record.output
    reply = output.get("immediate_response")
    if reply is not None:
        expect: dict[str, Any] = {"immediate": True, "status": reply["status"]}
        if reply.get("details"):
            expect["details"] = reply["details"]
        expect["response"] = {"body": body_bytes(reply["body"]).decode("utf-8", "replace") if "body" in reply else ""}
        return expect
    side = "response" if record.phase.is_response else "upstream"
    message: dict[str, Any] = {}
    changes = output.get("headers")
    if changes is not None:
        before = given["response" if record.phase.is_response else "request"]["headers"]
        message["headers"] = _headers_after(before, changes)
    if "body" in output:
        message["body"] = body_bytes(output["body"]).decode("utf-8", "replace")
    expect = {side: message} if message else {}
    if "dynamic_metadata" in output:
        expect["metadata"] = {record.plugin: output["dynamic_metadata"]}
    if not expect:
        # A call that changed nothing: the request reaches the upstream (the response phases need none).
        expect = {"immediate": False}
    return expect


def _headers_after(before: list[Mapping[str, str]], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Each header the changes touch, with the values it ends with (None: absent), applied as the server does."""
    headers = HeaderList([(pair["name"], pair["value"]) for pair in before])
    change = HeaderChanges(
        set=tuple((pair["name"], pair["value"]) for pair in changes.get("set", [])),
        append=tuple((pair["name"], pair["value"]) for pair in changes.get("append", [])),
        remove=tuple(changes.get("remove", [])),
    )
    headers.apply(change)
    result: dict[str, Any] = {}
    for name in dict.fromkeys(
        [*change.remove, *(name for name, _ in change.set), *(name for name, _ in change.append)]
    ):
        values = [value for key, value in headers.pairs if key == name]
        result[name] = None if not values else values[0] if len(values) == 1 else values
    return result
