"""What the bench runs: the plugin choice (one table) and the cases."""

from __future__ import annotations

import enum
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.envoy_configs import BENCH_HEADER
from bench.loadgen import Load

KIB = 1024


@dataclass(frozen=True)
class PluginChoice:
    """One plugin entry of a bench config; ``wasm`` is a file name in the plugin folder."""

    wasm: str
    execution_points: tuple[str, ...]
    config: dict[str, Any] = field(default_factory=dict)
    memory_limit_mb: int | None = None
    # Extism's timeout is wall-clock: with 16 calls sharing 2 cores a 64 KiB body call can pass
    # the 100 ms default, so the body plugins get more (the bench measures cost, not timeouts).
    timeout_ms: int | None = None
    match: dict[str, Any] | None = None


def _set_header(name: str, value: str) -> dict[str, str]:
    # The scripted plugin answers each export with the JSON stored under the export's name.
    return {"process_request_headers": json.dumps({"headers": {"set": [{"name": name, "value": value}]}})}


_GENERATED = {
    "immediate_response": {
        "status": 200,
        "headers": [{"name": "content-type", "value": "text/plain"}],
        "body": {"text": "generated\n"},
    }
}

# The plugins of every case, by role. Built test plugins today (tests/plugins); swap in
# examples/ plugins here and every case follows.
PLUGINS: dict[str, PluginChoice] = {
    "header": PluginChoice("scripted.wasm", ("request_headers",), _set_header(*BENCH_HEADER)),
    "header2": PluginChoice("scripted.wasm", ("request_headers",), _set_header("x-bench-2", "2")),
    "header3": PluginChoice("scripted.wasm", ("request_headers",), _set_header("x-bench-3", "3")),
    "request_body": PluginChoice("transform.wasm", ("request_body",), {"suffix": "-bench"}, 64, 2000),
    "response_body": PluginChoice("transform.wasm", ("response_body",), {"prefix": "bench-"}, 64, 2000),
    "generate": PluginChoice("scripted.wasm", ("generate_response",), {"generate_response": json.dumps(_GENERATED)}),
    "header_matched": PluginChoice(
        "scripted.wasm", ("request_headers",), _set_header(*BENCH_HEADER), match={"path_prefix": "/matched"}
    ),
}


def server_config(roles: tuple[str, ...], plugin_dir: Path) -> dict[str, Any]:
    """The server's YAML config (as a dict) for plugins ``roles``, in chain order."""
    entries = []
    for index, role in enumerate(roles):
        choice = PLUGINS[role]
        entry: dict[str, Any] = {
            "name": f"{index}-{role}",
            "path": str(plugin_dir / choice.wasm),
            "execution_points": list(choice.execution_points),
            "config": choice.config,
        }
        if choice.memory_limit_mb is not None:
            entry["memory_limit_mb"] = choice.memory_limit_mb
        if choice.timeout_ms is not None:
            entry["timeout_ms"] = choice.timeout_ms
        if choice.match is not None:
            entry["match"] = choice.match
        entries.append(entry)
    return {"server": {"log_level": "warning"}, "plugins": entries}


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """A server config written as the YAML file `extproc serve --config` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Kind(enum.Enum):
    ENVOY = "Envoy, no filter"
    LUA = "Envoy + Lua filter"
    NOOP = "grpcio no-op ext_proc"
    SERVER = "extproc serve"


@dataclass(frozen=True)
class Case:
    name: str
    title: str
    kind: Kind
    load: Load = field(default_factory=Load)
    plugins: tuple[str, ...] = ()
    bypass_prefixes: tuple[str, ...] = ()
    workers: int | None = None  # passed as --workers N when set
    # Kind.NOOP only: the module the server runs as (`python -m MODULE ARGS --port P`), with its arguments.
    noop_command: tuple[str, ...] = ("bench.noop_server",)

    def noop_argv(self, port: int) -> list[str]:
        """Kind.NOOP: the no-op server's command line."""
        return [sys.executable, "-m", *self.noop_command, "--port", str(port)]

    @property
    def body_bytes(self) -> int:
        """Bytes a body plugin handles per request (request or response body)."""
        if self.load.body_bytes:
            return self.load.body_bytes
        prefix = "/body/"
        return int(self.load.path.removeprefix(prefix)) if self.load.path.startswith(prefix) else 0


CASES: tuple[Case, ...] = (
    Case("envoy", "Envoy, no filter (ceiling)", Kind.ENVOY),
    Case("lua", "Envoy + Lua header filter", Kind.LUA),
    Case("noop", "grpcio no-op ext_proc (floor)", Kind.NOOP),
    Case("header", "1 header plugin", Kind.SERVER, plugins=("header",)),
    Case("header3", "3 chained header plugins", Kind.SERVER, plugins=("header", "header2", "header3")),
    Case("req_body_1k", "request body plugin, 1 KiB", Kind.SERVER, Load("/", KIB), ("request_body",)),
    Case("req_body_64k", "request body plugin, 64 KiB", Kind.SERVER, Load("/", 64 * KIB), ("request_body",)),
    Case("resp_body_1k", "response body plugin, 1 KiB", Kind.SERVER, Load(f"/body/{KIB}"), ("response_body",)),
    Case("resp_body_64k", "response body plugin, 64 KiB", Kind.SERVER, Load(f"/body/{64 * KIB}"), ("response_body",)),
    Case("generate", "generated response", Kind.SERVER, plugins=("generate",)),
    Case(
        "nomatch_bypass",
        "no plugin matches, per-route bypass on",
        Kind.SERVER,
        Load("/nomatch"),
        ("header_matched",),
        bypass_prefixes=("/nomatch",),
    ),
    Case("nomatch", "no plugin matches, bypass off", Kind.SERVER, Load("/nomatch"), ("header_matched",)),
    Case("workers1", "1 header plugin, --workers 1", Kind.SERVER, plugins=("header",), workers=1),
    Case("workers2", "1 header plugin, --workers 2", Kind.SERVER, plugins=("header",), workers=2),
)

# Memory check: five plugins loaded, all five run on every request (a POST whose 1 KiB request
# body and 1 KiB response body both go through a body plugin).
MEMORY_CASE = Case(
    "memory",
    "5 plugins, POST 1 KiB, 1 KiB response",
    Kind.SERVER,
    Load(f"/body/{KIB}", KIB),
    ("header", "header2", "header3", "request_body", "response_body"),
)
