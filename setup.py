"""Build steps that pyproject.toml cannot declare.

1. The wheel carries the demo's files as package data. They live outside the package in the repository
   (envoy/demo/ and the examples' .wasm files), so build_py copies them in, below
   extproc/deploy/demo_files/ (see extproc/deploy/demo_bundle.py).
2. With EXTPROC_MYPYC=1 the request path's modules (`[tool.extproc] compiled` in pyproject.toml) are
   compiled to C extensions with mypyc: the same code, about 40 % fewer instructions per call
   (docs/performance.md). Without it the wheel is pure Python, as an editable install must be: a
   compiled module would shadow later edits of its source.

Everything else about the build is in pyproject.toml.
"""

import os
import runpy
import tomllib
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# Run as a plain file: the package's dependencies are not installed while it builds.
BUNDLE = runpy.run_path(str(ROOT / "extproc" / "deploy" / "demo_bundle.py"))


class BuildPyWithDemo(build_py):
    def run(self) -> None:
        super().run()
        target_dir = Path(self.build_lib) / "extproc" / "deploy" / BUNDLE["BUNDLE_DIR"]
        for relative in BUNDLE["bundle_files"](ROOT):
            target = target_dir / relative
            self.mkpath(str(target.parent))
            self.copy_file(str(ROOT / relative), str(target))


def compiled_extensions() -> list[Any]:
    if os.environ.get("EXTPROC_MYPYC") != "1":
        return []
    from mypyc.build import mypycify  # ships with mypy, a build requirement

    modules = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["extproc"]["compiled"]
    return list(mypycify([f"extproc/{name}.py" for name in modules], opt_level="3"))


setup(cmdclass={"build_py": BuildPyWithDemo}, ext_modules=compiled_extensions())
