"""The five phases of an HTTP exchange a plugin can take part in, under each of their names.

One phase has three spellings: the function the plugin exports (`process_request_headers`, the
enum's value), the name the config and the plugin's phase declaration use (`request_headers`), and
the `phase` field of the plugin's input (`REQUEST_HEADERS`).
"""

from __future__ import annotations

import functools
from enum import StrEnum


class Phase(StrEnum):
    """In the order a request meets them."""

    REQUEST_HEADERS = "process_request_headers"
    REQUEST_BODY = "process_request_body"
    GENERATE_RESPONSE = "generate_response"
    RESPONSE_HEADERS = "process_response_headers"
    RESPONSE_BODY = "process_response_body"

    # Cached: read on every request, and a cached value is a plain attribute read.
    @functools.cached_property
    def config_name(self) -> str:
        """How `execution_points` and a plugin's phase declaration name it."""
        return self.value.removeprefix("process_")

    @functools.cached_property
    def wire_name(self) -> str:
        """The `phase` value the plugin sees in its input."""
        return self.config_name.upper()

    @functools.cached_property
    def is_response(self) -> bool:
        return self in (Phase.RESPONSE_HEADERS, Phase.RESPONSE_BODY)

    @functools.cached_property
    def is_body(self) -> bool:
        return self in (Phase.REQUEST_BODY, Phase.RESPONSE_BODY)

    @classmethod
    def named(cls, config_name: str) -> Phase:
        """The phase of a config name; ValueError for a name that is none."""
        try:
            return _BY_CONFIG_NAME[config_name]
        except KeyError:
            raise ValueError(f"no phase is called {config_name!r}") from None


CONFIG_NAMES = tuple(phase.config_name for phase in Phase)
_BY_CONFIG_NAME = {phase.config_name: phase for phase in Phase}
