"""The loaded plugin set: which plugins a request meets, and which phases they need from Envoy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from extproc.config import Config, StateBackend
from extproc.contract import Pair
from extproc.phases import Phase
from extproc.plugins.loader import LoadedPlugin, load_plugin
from extproc.plugins.runner import PluginThreads
from extproc.plugins.store import KeyValueStore, default_store

if TYPE_CHECKING:
    from extproc.rollout import Observe, Rollout


@dataclass(frozen=True, slots=True)
class Selection:
    """The plugins one request runs through, in config order, and the phases they need."""

    plugins: tuple[LoadedPlugin, ...]
    request_body: bool  # some plugin reads the request body whole
    request_chunks: bool  # some plugin reads it chunk by chunk
    request_trailers: bool
    generate_response: bool
    response_headers: bool  # some plugin works on the response at all
    response_body: bool
    response_chunks: bool
    response_trailers: bool
    # How exchanges of this selection flow, by Envoy's configured body modes (filled in by extproc.stream).
    plans: dict[int, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, plugins: tuple[LoadedPlugin, ...]) -> Selection:
        exports = frozenset().union(*(plugin.exports for plugin in plugins))
        return cls(
            plugins=plugins,
            request_body=any(plugin.request_body_phases for plugin in plugins),
            request_chunks=Phase.REQUEST_BODY_CHUNK in exports,
            request_trailers=Phase.REQUEST_TRAILERS in exports,
            generate_response=Phase.GENERATE_RESPONSE in exports,
            response_headers=any(phase.is_response for phase in exports),
            response_body=Phase.RESPONSE_BODY in exports,
            response_chunks=Phase.RESPONSE_BODY_CHUNK in exports,
            response_trailers=Phase.RESPONSE_TRAILERS in exports,
        )


def state_store(config: Config) -> KeyValueStore:
    """The store behind the key-value host functions; the same one across reloads with equal settings."""
    if config.state.backend is StateBackend.MEMORY:
        return default_store()
    from extproc.plugins.redis_store import shared_store  # redis is imported only when configured

    # Calls of plugins that use a remote store run on plugin threads, each needing one connection at a time.
    return shared_store(config.state, config.server.plugin_threads)


class PluginSet:
    """An immutable snapshot of loaded plugins. A reload builds a new set; streams keep theirs."""

    def __init__(self, config: Config, plugins: Sequence[LoadedPlugin], rollout: Rollout | None = None) -> None:
        self.config = config
        self.plugins = tuple(plugins)
        # Candidate versions and what is watched per exchange (extproc/rollout.py); None: nothing.
        self.rollout = rollout
        self._unconditional = tuple(p for p in self.plugins if p.spec.match.is_empty)
        self._all_unconditional = len(self._unconditional) == len(self.plugins)
        self._needs_header_map = any(p.spec.match.headers for p in self.plugins)
        # Requests that match the same plugins share one Selection.
        self._selections: dict[tuple[int, ...], Selection] = {}
        self._everything = Selection.of(self.plugins)

    @classmethod
    def load(cls, config: Config, threads: PluginThreads, observe: Observe | None = None) -> PluginSet:
        """Load every enabled plugin and its candidate; their calls that leave the event loop run on `threads`.
        `observe`: what the server watches per exchange (none by default)."""
        from extproc.rollout import Observe, Rollout  # it builds on this module

        loaded: list[LoadedPlugin] = []
        store = state_store(config)
        try:
            for spec in config.plugins:
                if spec.enabled:
                    loaded.append(load_plugin(spec, config.server, threads, store))
            rollout = Rollout.build(config, loaded, threads, store, observe or Observe())
        except BaseException:
            for plugin in loaded:
                plugin.close()
            raise
        return cls(config, loaded, rollout)

    def select(self, method: str, path: str, authority: str, headers: Sequence[Pair]) -> Selection:
        if self._all_unconditional:
            return self._everything
        by_name: Mapping[str, str] = {}
        if self._needs_header_map:
            first_values: dict[str, str] = {}
            for name, value in headers:
                first_values.setdefault(name, value)
            by_name = first_values
        chosen = tuple(
            index
            for index, plugin in enumerate(self.plugins)
            if plugin.spec.match.is_empty or plugin.spec.match.matches(method, path, authority, by_name)
        )
        selection = self._selections.get(chosen)
        if selection is None:
            selection = Selection.of(tuple(self.plugins[index] for index in chosen))
            self._selections[chosen] = selection
        return selection

    @property
    def versions(self) -> tuple[LoadedPlugin, ...]:
        """Every loaded module: the plugins, then their candidates (NAME@candidate)."""
        if self.rollout is None:
            return self.plugins
        return (*self.plugins, *(candidate.plugin for candidate in self.rollout.candidates.values()))

    @property
    def observe(self) -> Observe | None:
        return None if self.rollout is None else self.rollout.observe

    def close(self) -> None:
        for plugin in self.plugins:
            plugin.close()
        if self.rollout is not None:
            self.rollout.close()
