"""The example plugins in examples/: their names, and building them from source with npm."""

from __future__ import annotations

import fcntl
import tempfile
import threading
from pathlib import Path

from support.npm import npm

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = REPO_ROOT / "examples"
NODE_MODULES = EXAMPLES_DIR / "node_modules"

_lock = threading.Lock()


def example_names() -> list[str]:
    """Every examples/<name>/ with a package.json."""
    return sorted(p.parent.name for p in EXAMPLES_DIR.glob("*/package.json"))


def example_wasm(name: str) -> Path:
    """The committed build of an example."""
    return EXAMPLES_DIR / name / f"{name}.wasm"


def ensure_installed() -> None:
    """`npm ci` in examples/ when node_modules is missing or older than the lock file."""
    with _lock:
        # Outside the work tree, so no stray file shows up in git status.
        lock_path = Path(tempfile.gettempdir()) / "extproc-examples-npm-ci.lock"
        with lock_path.open("w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                installed = NODE_MODULES / ".package-lock.json"
                lock = EXAMPLES_DIR / "package-lock.json"
                if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
                    npm(["ci", "--no-audit"], EXAMPLES_DIR)
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)


def build_example(name: str, out: Path) -> Path:
    """Build examples/<name> with its own `npm run build`, writing the module to `out` instead."""
    ensure_installed()
    npm(["run", "build", "--", "-o", str(out)], EXAMPLES_DIR / name)
    return out
