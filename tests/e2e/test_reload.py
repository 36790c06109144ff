"""Hot reload and graceful shutdown under steady load through a real Envoy."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from support.plugins import scripted
from support.processes import wait_until

from .conftest import StackFactory
from .harness import Stack, request
from .load import Outcome, run_load

pytestmark = pytest.mark.e2e


def versioned_config(plugin_dir: Path, version: str, **server: Any) -> str:
    """A plugin that stamps `version` on the request (seen upstream) and on the response."""
    stamp = {"headers": {"set": [{"name": "x-version", "value": version}]}}
    plugin = scripted(plugin_dir, "stamp", process_request_headers=stamp, process_response_headers=stamp)
    return json.dumps({"server": server, "plugins": [plugin]})


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@contextmanager
def steady_load(stack: Stack) -> Iterator[list[Outcome]]:
    """Keep 8 clients busy until the block ends; yields the growing list of outcomes."""
    outcomes: list[Outcome] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            outcomes.extend(run_load(stack.url, 80, 8, lambda i: (f"/steady/{i}", [])))

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        yield outcomes
    finally:
        stop.set()
        worker.join()


def versions(outcome: Outcome) -> tuple[str | None, str | None]:
    """The version that stamped the request upstream, and the one that stamped the response."""
    assert outcome.response is not None, outcome.error
    assert outcome.response.status == 200, outcome.response
    upstream = dict(json.loads(outcome.response.body)["headers"])
    return upstream.get("x-version"), outcome.response.header("x-version")


def test_reloads_under_load_fail_nothing_and_never_mix_versions(plugin_dir: Path, make_stack: StackFactory) -> None:
    with make_stack(versioned_config(plugin_dir, "v0", reload_poll_ms=50)) as stack:
        with steady_load(stack) as outcomes:
            # Traffic on the first version before the first reload, which a busy machine may otherwise outrun.
            wait_until(lambda: len(outcomes) >= 40, 30, "traffic on the first version")
            for reload_number in range(1, 11):
                if reload_number == 6:
                    broken = json.loads(versioned_config(plugin_dir, "bad"))
                    broken["plugins"][0]["timeout_ms"] = -1
                    write_atomically(stack.config_path, json.dumps(broken))
                    stack.wait_for_server_log("reload failed")
                version = "a" if reload_number % 2 else "b"
                write_atomically(stack.config_path, versioned_config(plugin_dir, version, reload_poll_ms=50))
                wait_until(
                    lambda n=reload_number: stack.server_log().count("reloaded ") >= n,  # type: ignore[misc]
                    10,
                    f"reload {reload_number}",
                )
                seen = len(outcomes)
                wait_until(lambda s=seen: len(outcomes) >= s + 40, 30, "traffic on the new version")  # type: ignore[misc]
        log = stack.server_log()
    assert "plugins[0].timeout_ms" in log and "still serving the previous configuration" in log
    stamped = [versions(outcome) for outcome in outcomes]
    mixed = [pair for pair in stamped if pair[0] != pair[1]]
    assert not mixed, mixed[:5]
    assert {pair[0] for pair in stamped} >= {"v0", "a", "b"}
    assert "bad" not in {pair[0] for pair in stamped}


def test_sighup_and_wasm_change_reload(plugin_dir: Path, make_stack: StackFactory, tmp_path: Path) -> None:
    wasm = tmp_path / "stamp.wasm"
    wasm.write_bytes((plugin_dir / "scripted.wasm").read_bytes())
    config = json.loads(versioned_config(plugin_dir, "v1", reload_poll_ms=50))
    config["plugins"][0]["path"] = str(wasm)
    with make_stack(json.dumps(config)) as stack:
        # A changed module is picked up by the watcher.
        # Same code plus a custom section (id 0, size 4, name "v2", payload "x"): a new, valid module.
        wasm.write_bytes((plugin_dir / "scripted.wasm").read_bytes() + b"\x00\x04\x02v2x")
        wait_until(lambda: "reloaded " in stack.server_log(), 10, "the .wasm change to reload")
        # SIGHUP reloads on demand.
        config["plugins"][0]["config"]["process_request_headers"] = json.dumps(
            {"headers": {"set": [{"name": "x-version", "value": "v2"}]}}
        )
        config["server"]["reload_poll_ms"] = 0
        stack.config_path.write_text(json.dumps(config))
        assert stack.server.pid is not None
        os.kill(stack.server.pid, signal.SIGHUP)
        stack.wait_for_server_log("SIGHUP: reloading")
        wait_until(lambda: stack.server_log().count("reloaded ") >= 2, 10, "the SIGHUP reload")
        response = request("GET", f"{stack.url}/after-hup")
    assert dict(json.loads(response.body)["headers"])["x-version"] == "v2"


def test_sigterm_under_load_fails_no_request(plugin_dir: Path, make_stack: StackFactory) -> None:
    # With failure_mode_allow, requests that arrive after the server left pass through unprocessed;
    # what must never happen is a request the server took on failing or being half-processed.
    with make_stack(versioned_config(plugin_dir, "v1"), failure_mode_allow=True) as stack:
        with steady_load(stack) as outcomes:
            wait_until(lambda: len(outcomes) >= 200, 30, "steady traffic")
            assert stack.server.pid is not None
            os.kill(stack.server.pid, signal.SIGTERM)
            assert stack.server.wait(timeout=30) == 0
            served_before_exit = len(outcomes)
            wait_until(lambda: len(outcomes) >= served_before_exit + 200, 30, "traffic after the exit")
        log = stack.server_log()
    assert "draining" in log and "stopped" in log
    stamped = [versions(outcome) for outcome in outcomes]
    assert [pair for pair in stamped if pair[0] != pair[1]] == []
    assert ("v1", "v1") in stamped and (None, None) in stamped
