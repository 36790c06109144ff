"""Which plugin set `extproc demo` loads without --config: the checkout's, else the wheel's (issue 19)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from extproc.config import ConfigError
from extproc.deploy import commands, demo_bundle


def args(config: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(command="demo", config=config)


@pytest.fixture
def bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the installed package's copy would be; the test decides whether it exists."""
    path = tmp_path / "site" / demo_bundle.BUNDLE_DIR / demo_bundle.CONFIG
    monkeypatch.setattr(demo_bundle, "bundled_config", lambda: path)
    monkeypatch.chdir(tmp_path)
    return path


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("plugins: []\n")
    return path


def test_an_explicit_config_wins(bundled: Path) -> None:
    touch(bundled)
    touch(Path(demo_bundle.CONFIG))
    assert commands.config_path(args("mine.yaml")) == Path("mine.yaml")


def test_a_checkouts_config_wins_over_the_bundled_one(bundled: Path) -> None:
    touch(bundled)
    local = touch(Path(demo_bundle.CONFIG))
    assert commands.config_path(args()) == local


def test_elsewhere_the_bundled_config_is_used(bundled: Path) -> None:
    touch(bundled)
    assert commands.config_path(args()) == bundled


def test_without_either_the_error_says_what_to_do(bundled: Path) -> None:
    with pytest.raises(ConfigError, match="run the demo from the repository root, or give --config"):
        commands.config_path(args())
