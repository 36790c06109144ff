"""Hot reload: build a new plugin set from the config file, swap it in only when all of it loads.

Streams already running keep the plugin set they started with, so a reload never mixes two
versions within one HTTP exchange.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from extproc import metrics
from extproc.config import Config, load_config
from extproc.errors import ExtprocError
from extproc.plugins.registry import PluginSet
from extproc.plugins.runner import PluginThreads

log = logging.getLogger("extproc.reload")


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    message: str
    config_hash: str


def config_hash(plugins: PluginSet) -> str:
    """Identifies what is being served: the config file's bytes and every loaded module."""
    digest = hashlib.sha256(plugins.config.source.read_bytes())
    for plugin in plugins.versions:
        digest.update(plugin.sha256.encode())
    return digest.hexdigest()


def _fingerprint(config: Config) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detection: path, mtime and size of the config file and every plugin file."""
    marks = []
    candidates = (spec.candidate.path for spec in config.plugins if spec.candidate is not None)
    for path in (config.source, *(spec.path for spec in config.plugins), *candidates):
        try:
            stat = path.stat()
            marks.append((str(path), stat.st_mtime_ns, stat.st_size))
        except OSError:
            marks.append((str(path), -1, -1))
    return tuple(marks)


class Reloader:
    """Owns the current plugin set and replaces it on request. Thread-safe; one reload at a time."""

    def __init__(self, plugins: PluginSet, install: Callable[[PluginSet], None], threads: PluginThreads) -> None:
        self._current = plugins
        self._install = install
        self._threads = threads
        self._lock = threading.Lock()
        self._fingerprint = _fingerprint(plugins.config)
        self.hash = config_hash(plugins)

    @property
    def current(self) -> PluginSet:
        return self._current

    def changed_on_disk(self) -> bool:
        return _fingerprint(self._current.config) != self._fingerprint

    def reload(self) -> ReloadResult:
        with self._lock:
            source = self._current.config.source
            # Taken before reading, so a write landing during the load is seen by the next poll.
            fingerprint = _fingerprint(self._current.config)
            try:
                config = load_config(source)
                plugins = PluginSet.load(config, self._threads, self._current.observe)
            except (ExtprocError, OSError) as exc:
                self._fingerprint = fingerprint
                log.error("reload failed, still serving the previous configuration: %s", exc)
                metrics.config_reloaded(ok=False)
                return ReloadResult(ok=False, message=str(exc), config_hash=self.hash)
            previous = self._current.config
            if (config.server, config.tracing) != (previous.server, previous.tracing):
                log.warning("server or tracing settings changed in %s; they take effect on restart", source)
            self._install(plugins)
            self._current = plugins
            self._fingerprint = _fingerprint(config)
            self.hash = config_hash(plugins)
            metrics.config_reloaded(ok=True)
            metrics.config_loaded(self.hash)
            log.info("reloaded %s: %d plugin(s), config hash %s", source, len(plugins.plugins), self.hash[:16])
            return ReloadResult(ok=True, message=f"loaded {len(plugins.plugins)} plugin(s)", config_hash=self.hash)


class FileWatcher:
    """Polls the config file and plugin files; a change triggers a reload."""

    def __init__(self, reloader: Reloader, interval_seconds: float) -> None:
        self._reloader = reloader
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="extproc-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if self._reloader.changed_on_disk():
                self._reloader.reload()
