"""What Envoy does when the server is down or slow, with the two example configs in envoy/failure-modes/.

The configs are run as committed, with only their ports moved to free ones.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.envoy import envoy_argv
from support.processes import ManagedProcess, free_port, wait_for_http_ready, wait_for_port

from .harness import Upstream, request

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "envoy" / "failure-modes"
# The addresses the committed configs use, by role.
LISTEN, ADMIN, SERVER, UPSTREAM = 10000, 9901, 50051, 8080


def move_ports(node: Any, ports: dict[int, int]) -> None:
    if isinstance(node, dict):
        if node.get("port_value") in ports:
            node["port_value"] = ports[node["port_value"]]
        for value in node.values():
            move_ports(value, ports)
    elif isinstance(node, list):
        for value in node:
            move_ports(value, ports)


@contextlib.contextmanager
def envoy_from_example(name: str, tmp_path: Path, upstream: Upstream, server_port: int) -> Iterator[str]:
    document = yaml.safe_load((EXAMPLES / name).read_text())
    listen, admin = free_port(), free_port()
    move_ports(document, {LISTEN: listen, ADMIN: admin, SERVER: server_port, UPSTREAM: upstream.port})
    bootstrap = tmp_path / name
    bootstrap.write_text(yaml.safe_dump(document))
    with ManagedProcess("envoy", envoy_argv(bootstrap), tmp_path / f"{name}.log") as envoy:
        wait_for_http_ready(f"http://127.0.0.1:{admin}/ready", 30, process=envoy)
        yield f"http://127.0.0.1:{listen}"


@contextlib.contextmanager
def slow_server(tmp_path: Path, plugin_dir: Path, port: int) -> Iterator[None]:
    """A server whose only plugin spins far past Envoy's 200 ms message_timeout."""
    plugin = {"name": "slow", "path": str(plugin_dir / "loop.wasm"), "timeout_ms": 3000}
    config = tmp_path / "slow.yaml"
    config.write_text(json.dumps({"plugins": [plugin]}))
    argv = [sys.executable, "-m", "extproc", "serve", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    with ManagedProcess("extproc", argv, tmp_path / "server.log") as server:
        wait_for_port("127.0.0.1", port, 30, process=server)
        yield


def reached_upstream_unprocessed(response: Any) -> bool:
    seen = dict(json.loads(response.body)["headers"])
    return response.status == 200 and "x-team" not in seen


def test_fail_closed_when_server_is_down(tmp_path: Path, upstream: Upstream) -> None:
    with envoy_from_example("envoy-fail-closed.yaml", tmp_path, upstream, free_port()) as url:
        before = upstream.count()
        response = request("GET", f"{url}/down")
        assert upstream.count() == before
    assert response.status == 500


def test_fail_open_when_server_is_down(tmp_path: Path, upstream: Upstream) -> None:
    with envoy_from_example("envoy-fail-open.yaml", tmp_path, upstream, free_port()) as url:
        response = request("GET", f"{url}/down")
    assert reached_upstream_unprocessed(response)


def test_fail_closed_when_server_is_slow(tmp_path: Path, upstream: Upstream, plugin_dir: Path) -> None:
    port = free_port()
    with (
        slow_server(tmp_path, plugin_dir, port),
        envoy_from_example("envoy-fail-closed.yaml", tmp_path, upstream, port) as url,
    ):
        before = upstream.count()
        response = request("GET", f"{url}/slow")
        assert upstream.count() == before
    assert response.status == 504


def test_fail_open_when_server_is_slow(tmp_path: Path, upstream: Upstream, plugin_dir: Path) -> None:
    port = free_port()
    with (
        slow_server(tmp_path, plugin_dir, port),
        envoy_from_example("envoy-fail-open.yaml", tmp_path, upstream, port) as url,
    ):
        response = request("GET", f"{url}/slow")
    assert reached_upstream_unprocessed(response)
