"""The request path compiled with mypyc (what EXTPROC_MYPYC=1 builds) passes the request path's tests.

The rest of the suite runs the interpreted modules; this builds the compiled ones into a copy of the
checkout and runs the tests that exercise them there, Envoy included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPILED = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["extproc"]["compiled"]
TESTS = [
    "tests/test_grpc_stream.py",
    "tests/test_streaming.py",
    "tests/test_declared_phases.py",
    "tests/test_contract.py",
    "tests/test_headers.py",
    "tests/test_fields.py",
    "tests/test_raw_headers.py",
    "tests/test_testing.py",
    "tests/test_examples.py",
    "tests/e2e/test_core.py",
]


@pytest.fixture(scope="module")
def compiled_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("compiled")
    for name in ("extproc", "support", "tests"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("node_modules", "__pycache__", "*.so"))
    for name in ("pyproject.toml", "setup.py"):
        shutil.copy2(ROOT / name, copy / name)
    for name in ("examples", "envoy", "sdk", "proto", "scripts"):
        (copy / name).symlink_to(ROOT / name)
    (copy / "tests" / "plugins" / "node_modules").symlink_to(ROOT / "tests" / "plugins" / "node_modules")
    build = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace"],
        cwd=copy,
        env={**os.environ, "EXTPROC_MYPYC": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return copy


def test_every_listed_module_is_compiled(compiled_checkout: Path) -> None:
    probe = (
        "import importlib, sys; print(','.join(importlib.import_module('extproc.' + m).__file__ for m in sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *COMPILED],
        cwd=compiled_checkout,
        env={**os.environ, "PYTHONPATH": str(compiled_checkout)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert all(path.endswith(".so") for path in result.stdout.strip().split(",")), result.stdout


def test_the_compiled_request_path_passes_its_tests(compiled_checkout: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
        cwd=compiled_checkout,
        env={**os.environ, "PYTHONPATH": str(compiled_checkout)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
