"""What plugin calls leave in memory: outputs over max_output_bytes are refused, an instance that moved a lot
of bytes is not pooled again, and a real server's RSS comes back near where it was after large calls."""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from extproc.errors import FailureKind, PluginCallError
from extproc.metrics import REGISTRY
from extproc.phases import Phase
from extproc.plugins import loader, runner
from extproc.plugins.loader import LoadedPlugin, default_max_output_bytes
from extproc.plugins.runner import RawResult
from support.processes import ManagedProcess, free_port, server_env, wait_for_port
from tests.test_grpc_stream import REQUEST, body, exchange, headers

HEADERS_INPUT: dict[str, Any] = {"phase": "REQUEST_HEADERS", "request": {"headers": []}}


def header_output(value_bytes: int, count: int = 1) -> str:
    """A valid JSON output setting `count` headers of `value_bytes` each."""
    entries = [{"name": f"x-big-{i}", "value": "v" * value_bytes} for i in range(count)]
    return json.dumps({"headers": {"set": entries}}, separators=(",", ":"))


def body_input(size: int) -> dict[str, Any]:
    return {"phase": "REQUEST_BODY", "request": {"headers": [], "body": {"text": "a" * size}}}


@pytest.mark.parametrize(("over_by", "fails"), [(-1, False), (0, False), (1, True), (1000, True)])
def test_an_output_over_max_output_bytes_is_bad_output(plugin_dir: Path, load: Any, over_by: int, fails: bool) -> None:
    output = header_output(2000)
    plugin = load(
        plugin_dir / "scripted.wasm",
        config={"process_request_headers": output},
        max_output_bytes=len(output) - over_by,
    )
    if not fails:
        assert asyncio.run(plugin.call(Phase.REQUEST_HEADERS, HEADERS_INPUT)) is not None
        return
    with pytest.raises(PluginCallError, match=rf"output of {len(output)} bytes is over max_output_bytes") as info:
        asyncio.run(plugin.call(Phase.REQUEST_HEADERS, HEADERS_INPUT))
    assert info.value.kind is FailureKind.BAD_OUTPUT


def test_max_output_bytes_defaults_to_room_for_the_largest_body(plugin_dir: Path, load: Any) -> None:
    plugin = load(plugin_dir / "scripted.wasm", {"max_body_bytes": 1000})
    assert plugin.max_output_bytes == default_max_output_bytes(1000) == 2000 + 1024 * 1024


def recycled(plugin: LoadedPlugin) -> float:
    return REGISTRY.get_sample_value("extproc_plugin_instances_recycled_total", {"plugin": plugin.name}) or 0.0


# (plugin, its settings, the call's export and input, whether its instance is pooled again)
RECYCLING_CASES = {
    "small-call-kept": ("transform.wasm", {}, Phase.REQUEST_BODY, body_input(100 * 1024), True),
    # Input and output each under RECYCLE_AFTER_BYTES, together over it.
    "large-input-and-output": ("transform.wasm", {}, Phase.REQUEST_BODY, body_input(600 * 1024), False),
    # On the loop: a tiny input, an output of 20 headers of 60 KB.
    "large-output": (
        "scripted.wasm",
        {"config": {"process_request_headers": header_output(60 * 1024, 20)}},
        Phase.REQUEST_HEADERS,
        HEADERS_INPUT,
        False,
    ),
}


@pytest.mark.parametrize(
    ("wasm", "settings", "export", "payload", "kept"), RECYCLING_CASES.values(), ids=RECYCLING_CASES
)
def test_an_instance_that_moved_over_a_mib_is_dropped_and_freed(
    plugin_dir: Path,
    load: Any,
    monkeypatch: pytest.MonkeyPatch,
    wasm: str,
    settings: dict[str, Any],
    export: Phase,
    payload: dict[str, Any],
    kept: bool,
) -> None:
    plugin = load(plugin_dir / wasm, memory_limit_mb=64, timeout_ms=10_000, **settings)
    used: list[weakref.ref[Any]] = []
    invoke = runner.invoke

    def watched(instance: runner.Instance, *args: Any) -> RawResult:
        used.append(weakref.ref(instance.plugin))
        return invoke(instance, *args)

    monkeypatch.setattr(loader, "invoke", watched)
    monkeypatch.setattr(runner, "invoke", watched)
    asyncio.run(plugin.call(export, payload))
    gc.collect()
    [instance] = used
    assert (plugin.pool.idle, plugin.pool.size) == ((1, 1) if kept else (0, 0))
    assert recycled(plugin) == (0 if kept else 1)
    # Nothing else holds a dropped instance (an idle plugin thread once kept its last call), so its memory goes.
    assert (instance() is not None) is kept


MIB = 1024 * 1024
LARGE_BODY = 8 * MIB


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


@pytest.fixture
def server_process(tmp_path: Path, plugin_dir: Path) -> Iterator[tuple[ManagedProcess, Any]]:
    plugin = {
        "name": "grow",
        "path": str(plugin_dir / "transform.wasm"),
        "execution_points": ["request_body"],
        "config": {"suffix": "!"},
        "memory_limit_mb": 1024,
        "timeout_ms": 60_000,
    }
    config = tmp_path / "extproc.yaml"
    config.write_text(json.dumps({"server": {"max_body_bytes": 2 * LARGE_BODY}, "plugins": [plugin]}))
    port = free_port()
    argv = [sys.executable, "-m", "extproc", "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    # What docs/operations.md advises for large bodies: glibc hands freed large buffers back at once instead
    # of keeping them for reuse, so RSS shows what the server holds rather than what the allocator caches.
    env = server_env() | {"MALLOC_MMAP_THRESHOLD_": "131072"}
    with ManagedProcess("extproc", argv, tmp_path / "server.log", env=env) as process:
        wait_for_port("127.0.0.1", port, 30, process=process)
        options = [("grpc.max_receive_message_length", 4 * LARGE_BODY)]
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
            yield process, ep_grpc.ExternalProcessorStub(channel)


def test_a_server_gives_back_the_memory_of_large_calls(server_process: tuple[ManagedProcess, Any]) -> None:
    process, stub = server_process
    assert process.pid is not None

    def rewrite(size: int) -> None:
        payload = b"y" * size
        # In chunks, as Envoy configured STREAMED sends a body: the server holds them and the plugin sees the whole.
        step = 256 * 1024
        chunks = [body(payload[at : at + step], end_of_stream=at + step >= size) for at in range(0, size, step)]
        streamed = ep.ProtocolConfiguration(request_body_mode=ProcessingMode.STREAMED)
        replies = exchange(stub, headers(*REQUEST, protocol_config=streamed), *chunks)
        assert replies[-1].request_body.response.body_mutation.body == payload + b"!"

    for _ in range(3):  # pooled instances, grpc and the codecs warmed up by calls under RECYCLE_AFTER_BYTES
        rewrite(64 * 1024)
    before = rss_mib(process.pid)
    for _ in range(2):
        rewrite(LARGE_BODY)
    after_large = rss_mib(process.pid)
    for _ in range(3):
        rewrite(64 * 1024)
    after_small = rss_mib(process.pid)
    print(f"RSS MiB: before {before:.0f}, after two 8 MiB calls {after_large:.0f}, after small ones {after_small:.0f}")
    # An instance of this plugin grows by over 100 MiB for an 8 MiB body; a pooled one would keep that.
    assert after_large - before < 32, (before, after_large)
    assert after_small - before < 32, (before, after_small)


def test_streams_ended_early_do_not_keep_their_last_message(server_process: tuple[ManagedProcess, Any]) -> None:
    # A buffered body arrives whole; the server ends the stream after answering it. grpc.aio kept each such
    # stream's last message until the next full garbage collection while the request iterator stayed open.
    process, stub = server_process
    assert process.pid is not None
    payload = b"y" * (2 * MIB)
    exchange(stub, headers(*REQUEST), body(payload, end_of_stream=True))
    before = rss_mib(process.pid)
    for _ in range(24):
        exchange(stub, headers(*REQUEST), body(payload, end_of_stream=True))
    grown = rss_mib(process.pid) - before
    assert grown < 24, f"RSS grew {grown:.0f} MiB over 24 streams of 2 MiB"
