"""Shared fixtures: the test plugins, built from source in tests/plugins."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.plugins.build import ensure_built


@pytest.fixture(scope="session")
def plugin_dir() -> Path:
    """Folder holding the built test plugins (<name>.wasm); builds them when stale."""
    return ensure_built()
