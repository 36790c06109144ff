"""`extproc check`: validates the config and loads every plugin, failing on the first problem."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from extproc.cli import main


@pytest.fixture
def workdir(tmp_path: Path, plugin_dir: Path) -> Path:
    for name in ("scripted", "echo", "noexports"):
        shutil.copy(plugin_dir / f"{name}.wasm", tmp_path / f"{name}.wasm")
    (tmp_path / "not-wasm.wasm").write_text("hello")
    return tmp_path


def run_check(workdir: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    config = workdir / "extproc.yaml"
    config.write_text(text)
    code = main(["check", "--config", str(config)])
    out, err = capsys.readouterr()
    return code, out, err


def test_valid_config_lists_plugins(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = """
plugins:
  - name: hdr
    path: scripted.wasm
    execution_points: [request_headers]
  - name: gen
    path: echo.wasm
  - name: spare
    path: scripted.wasm
    enabled: false
"""
    code, out, err = run_check(workdir, text, capsys)
    assert code == 0, err
    assert "ok, 3 plugin(s)" in out
    assert "hdr:" in out and "calls: process_request_headers" in out
    assert "gen:" in out and "calls: generate_response" in out
    assert "spare: disabled" in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plugins: [\n  - name: a\n    path: x.wasm\n  bad", "invalid YAML"),
        ("plugins: []\nbogus: 1\n", "unknown key 'bogus'"),
        ("plugins:\n  - name: a\n    path: scripted.wasm\n    timeout: 5\n", "plugins[0].timeout: unknown key"),
        ("plugins:\n  - name: a\n    path: scripted.wasm\n    timeout_ms: fast\n", "plugins[0].timeout_ms"),
        ("plugins:\n  - name: a\n    path: missing.wasm\n", "plugins[0].path: file not found"),
        ("plugins:\n  - name: a\n    path: not-wasm.wasm\n", "not a WebAssembly module"),
        ("plugins:\n  - name: a\n    path: noexports.wasm\n", "exports none of the plugin functions"),
        (
            "plugins:\n  - name: a\n    path: scripted.wasm\n    execution_points: [request_header]\n",
            "plugins[0].execution_points[0]",
        ),
        (
            "plugins:\n  - name: a\n    path: echo.wasm\n    execution_points: [response_body]\n",
            "needs export 'process_response_body'",
        ),
        (
            "plugins:\n  - name: a\n    path: scripted.wasm\n  - name: a\n    path: echo.wasm\n",
            "plugins[1].name",
        ),
        ("plugins:\n  - name: a\n    path: scripted.wasm\n    timeout_ms: -5\n", "plugins[0].timeout_ms"),
        ("plugins:\n  - name: a\n    path: scripted.wasm\n    memory_limit_mb: -1\n", "plugins[0].memory_limit_mb"),
    ],
    ids=[
        "yaml-syntax",
        "unknown-top-key",
        "unknown-plugin-key",
        "wrong-type",
        "missing-wasm",
        "not-wasm",
        "no-exports",
        "unknown-execution-point",
        "point-without-export",
        "duplicate-name",
        "negative-timeout",
        "negative-memory",
    ],
)
def test_bad_config_is_rejected(workdir: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str) -> None:
    code, _, err = run_check(workdir, text, capsys)
    assert code != 0
    assert expected in err
    assert "extproc.yaml" in err or "wasm" in err  # names the file at fault
    assert "Traceback" not in err


def test_check_runs_as_a_command(workdir: Path) -> None:
    config = workdir / "extproc.yaml"
    config.write_text("plugins:\n  - name: a\n    path: noexports.wasm\n")
    result = subprocess.run(
        [sys.executable, "-m", "extproc", "check", "--config", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "plugin 'a'" in result.stderr and "noexports.wasm" in result.stderr
