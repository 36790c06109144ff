"""Structured logging: one line per event, as text or JSON, with the request id of the stream at hand.

A stream binds its first Envoy message to a context variable (one ContextVar.set per stream); the
request id is dug out of that message's headers only when a record is actually written, so requests
that log nothing pay nothing more. grpcio's sync server runs each stream on one thread from start to
end, so the binding is seen by every record emitted while handling the stream.

Whatever a record carries in ``extra=`` (``plugin``, ``phase``, ``kind``, ...) is written as fields.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any, Final

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc import wire

REQUEST_ID_HEADER: Final = "x-request-id"

_STREAM: Final[contextvars.ContextVar[ep.ProcessingRequest | None]] = contextvars.ContextVar(
    "extproc_stream", default=None
)
# Attributes every LogRecord has; anything else came from `extra=` or from us.
_STANDARD_ATTRIBUTES: Final = frozenset(
    (*vars(logging.LogRecord("", 0, "", 0, "", (), None)), "message", "asctime", "taskName")
)


def bind_stream(first: ep.ProcessingRequest) -> None:
    """Make `first` (normally the request headers) the source of the request id for this thread."""
    _STREAM.set(first)


def unbind_stream() -> None:
    # Not ContextVar.reset(token): grpcio may close an abandoned stream's generator on another thread,
    # where the token is not valid.
    _STREAM.set(None)


def current_request_id() -> str | None:
    first = _STREAM.get()
    if first is None or not first.HasField("request_headers"):
        return None
    for name, value in wire.header_pairs(first.request_headers.headers):
        if name == REQUEST_ID_HEADER:
            return value
    return None


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to records emitted while a stream is bound (a handler filter: it sees every record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request_id = current_request_id()
            if request_id is not None:
                record.request_id = request_id
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD_ATTRIBUTES}


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", <extra fields>, "exception"}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger message key=value ...`; a traceback, if any, follows on its own lines."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname, record.name, record.getMessage()]
        for key, value in _fields(record).items():
            text = str(value)
            # Quote only what would split the line into ambiguous tokens.
            parts.append(f"{key}={json.dumps(text) if not text or ' ' in text or '=' in text else text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def configure(level: str, fmt: str, *, worker: int | None = None) -> None:
    """Send every record of the process to stderr in `fmt` ("text" or "json") from `level` up.

    `worker` (in multi-process mode) is added to every record so lines of different workers can be told apart.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    if worker is not None:
        handler.addFilter(_WorkerFilter(worker))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class _WorkerFilter(logging.Filter):
    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True
