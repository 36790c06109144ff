"""Shared fixtures: the test plugins, built from source in tests/plugins, and loading one outside a server."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _pytest.terminal import TerminalReporter

from extproc.config import parse_config
from extproc.plugins.loader import LoadedPlugin, load_plugin
from extproc.plugins.runner import PluginThreads
from extproc.plugins.store import MemoryStore
from support.plugins import ensure_built
from tests.redis_server import MISSING as REDIS_MISSING


@pytest.fixture(scope="session")
def plugin_dir() -> Path:
    """Folder holding the built test plugins (<name>.wasm); builds them when stale."""
    return ensure_built()


_LOADED = itertools.count()


@pytest.fixture
def threads() -> Iterator[PluginThreads]:
    running = PluginThreads(8, name="test-plugin")
    yield running
    running.close()


@pytest.fixture
def load(tmp_path: Path, threads: PluginThreads) -> Iterator[Any]:
    """load(wasm, server settings, **plugin keys): a LoadedPlugin, closed after the test. Its name is used
    by no other test, so the metrics of the name are its own."""
    loaded: list[LoadedPlugin] = []

    def make(wasm: Path, server: dict[str, Any] | None = None, **fields: Any) -> LoadedPlugin:
        name = f"calls-{next(_LOADED)}-{wasm.stem}"
        entry = {"name": name, "path": str(wasm), **fields}
        config = parse_config({"server": server or {}, "plugins": [entry]}, tmp_path / "c.yaml")
        plugin = load_plugin(config.plugins[0], config.server, threads, MemoryStore())
        loaded.append(plugin)
        return plugin

    yield make
    for plugin in loaded:
        plugin.close()


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    # pytest lists skip reasons only with -rs: say it at the end, where a passing run is read.
    skipped = [report for report in terminalreporter.stats.get("skipped", []) if REDIS_MISSING in str(report.longrepr)]
    if skipped:
        terminalreporter.write_sep("=", "Redis was not tested", yellow=True)
        terminalreporter.write_line(f"{len(skipped)} test(s) skipped: {REDIS_MISSING}", yellow=True)
