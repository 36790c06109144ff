"""Running npm for the builds the tests depend on (test plugins, examples)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def npm(args: list[str], cwd: Path) -> str:
    """Run npm and return its output; RuntimeError with the output when it fails."""
    found = shutil.which("npm")
    if found is None:
        raise RuntimeError(f"npm was not found on PATH; Node.js >= 20 and npm are needed to build {cwd}")
    proc = subprocess.run(
        [found, *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "npm_config_update_notifier": "false", "npm_config_fund": "false"},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"`npm {' '.join(args)}` in {cwd} exited with {proc.returncode}:\n{proc.stdout}")
    return proc.stdout
