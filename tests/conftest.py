"""Shared fixtures: the test plugins, built from source in tests/plugins."""

from __future__ import annotations

from pathlib import Path

import pytest
from _pytest.terminal import TerminalReporter

from tests.plugins.build import ensure_built
from tests.redis_server import MISSING as REDIS_MISSING


@pytest.fixture(scope="session")
def plugin_dir() -> Path:
    """Folder holding the built test plugins (<name>.wasm); builds them when stale."""
    return ensure_built()


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    # pytest lists skip reasons only with -rs: say it at the end, where a passing run is read.
    skipped = [report for report in terminalreporter.stats.get("skipped", []) if REDIS_MISSING in str(report.longrepr)]
    if skipped:
        terminalreporter.write_sep("=", "Redis was not tested", yellow=True)
        terminalreporter.write_line(f"{len(skipped)} test(s) skipped: {REDIS_MISSING}", yellow=True)
