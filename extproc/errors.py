"""Typed errors. Each one says what failed and where (file, key, plugin, phase).

`ExtprocError` is the base of every error the package raises on purpose, so a caller catches one type.
The errors about one module live beside it (PlaintextRefused in tls, StoreError in plugins.store, ...);
ConfigError is here because config and tls both raise it, and config imports tls.
Those that began as ValueError keep it as a second base: code that catches ValueError still catches them.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path


class ExtprocError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(ExtprocError, ValueError):
    """A configuration problem, located by file, key path (``plugins[2].timeout_ms``) and, for YAML
    syntax errors, 1-based line and column."""

    def __init__(
        self, file: Path, key: str, reason: str, *, line: int | None = None, column: int | None = None
    ) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        self.line = line
        self.column = column
        where = str(file) if line is None else f"{file}:{line}:{column}"
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")


class PluginLoadError(ExtprocError):
    """A plugin could not be compiled or does not fit the contract."""

    def __init__(self, plugin: str, path: Path, reason: str) -> None:
        super().__init__(f"plugin {plugin!r} ({path}): {reason}")
        self.plugin = plugin
        self.path = path
        self.reason = reason


class FailureKind(StrEnum):
    """Why a plugin call failed; used in logs and, later, metrics labels."""

    TIMEOUT = "timeout"
    MEMORY = "memory"
    TRAP = "trap"
    BAD_OUTPUT = "bad_output"
    POOL_EXHAUSTED = "pool_exhausted"
    CIRCUIT_OPEN = "circuit_open"
    STATE_UNAVAILABLE = "state_unavailable"  # the state backend failed and the plugin's state_failure is fail_closed


class PluginCallError(ExtprocError):
    """A call into a plugin failed, or its output broke the contract."""

    def __init__(self, plugin: str, function: str, kind: FailureKind, reason: str) -> None:
        super().__init__(f"plugin {plugin!r} {function}: {kind.value}: {reason}")
        self.plugin = plugin
        self.function = function
        self.kind = kind
        self.reason = reason


class OutputError(ExtprocError, ValueError):
    """Plugin output that does not parse or breaks HTTP rules; `where` is the field path."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}" if where else reason)
        self.where = where
        self.reason = reason
