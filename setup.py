"""Build step that pyproject.toml cannot declare: the wheel carries the demo's files as package data.

They live outside the package in the repository (envoy/demo/ and the examples' .wasm files), so build_py
copies them in, below extproc/deploy/demo_files/ (see extproc/deploy/demo_bundle.py). Everything else
about the build is in pyproject.toml.
"""

import runpy
from pathlib import Path

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


setup(cmdclass={"build_py": BuildPyWithDemo})
