"""The test plugins (tests/plugins), built on demand, and the entry of the scripted one in a server config.

``ensure_built()`` returns ``tests/plugins/build``, holding one ``<name>.wasm``
per ``src/plugins/<name>.ts``. It runs ``npm ci`` when ``node_modules`` is
missing (or older than ``package-lock.json``) and ``npm run build`` when a wasm
is missing or older than any input. Safe to call from several threads or
processes (e.g. pytest-xdist workers) at once.
"""

from __future__ import annotations

import fcntl
import json
import pathlib
import threading
from typing import Any

from support.npm import npm
from support.processes import REPO_ROOT

PLUGINS_DIR = REPO_ROOT / "tests" / "plugins"
BUILD_DIR = PLUGINS_DIR / "build"
SRC_DIR = PLUGINS_DIR / "src"
NODE_MODULES = PLUGINS_DIR / "node_modules"

# Files besides src/**/*.ts whose change means the plugins must be rebuilt.
_BUILD_INPUTS = ("package.json", "package-lock.json", "build.mjs")

_lock = threading.Lock()


def plugin_names() -> list[str]:
    """Names of all plugins, i.e. the stems of ``src/plugins/*.ts``."""
    return sorted(p.stem for p in (SRC_DIR / "plugins").glob("*.ts"))


def wasm_path(name: str) -> pathlib.Path:
    """Where the plugin ``name`` is built (it may not exist yet)."""
    return BUILD_DIR / f"{name}.wasm"


def _inputs() -> list[pathlib.Path]:
    files = sorted(SRC_DIR.rglob("*.ts"))
    files.extend(PLUGINS_DIR / name for name in _BUILD_INPUTS)
    return [f for f in files if f.is_file()]


def _stale() -> bool:
    newest_input = max(f.stat().st_mtime for f in _inputs())
    for name in plugin_names():
        wasm = wasm_path(name)
        if not wasm.is_file() or wasm.stat().st_mtime < newest_input:
            return True
    return False


def _npm(*args: str) -> None:
    npm(list(args), PLUGINS_DIR)


def _needs_npm_ci() -> bool:
    # npm records what it installed in node_modules/.package-lock.json.
    installed = NODE_MODULES / ".package-lock.json"
    if not installed.is_file():
        return True
    return installed.stat().st_mtime < (PLUGINS_DIR / "package-lock.json").stat().st_mtime


def ensure_built() -> pathlib.Path:
    """Make sure every test plugin is built and up to date; return the build directory."""
    with _lock:
        BUILD_DIR.mkdir(exist_ok=True)
        with (BUILD_DIR / ".lock").open("w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                if _needs_npm_ci():
                    _npm("ci")
                if _stale():
                    _npm("run", "build")
                    missing = [name for name in plugin_names() if not wasm_path(name).is_file()]
                    if missing:
                        raise RuntimeError(f"`npm run build` succeeded but did not produce: {', '.join(missing)}")
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)
    return BUILD_DIR


def scripted(plugin_dir: pathlib.Path, name: str = "s", **outputs: Any) -> dict[str, Any]:
    """A server config entry of the scripted plugin: each ``process_<phase>`` or ``generate_response`` output
    given is answered, as JSON, by that export, and only those phases run. With a ``declare_phases`` output
    the plugin declares its phases itself (and the entry has no execution_points)."""
    entry: dict[str, Any] = {
        "name": name,
        "path": str(plugin_dir / "scripted.wasm"),
        "config": {export: json.dumps(output) for export, output in outputs.items()},
    }
    if "declare_phases" not in outputs:
        entry["execution_points"] = sorted(export.removeprefix("process_") for export in outputs)
    return entry
