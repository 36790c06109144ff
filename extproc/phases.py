"""The phases of an HTTP exchange a plugin can take part in, under each of their names.

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
    REQUEST_BODY_CHUNK = "process_request_body_chunk"
    REQUEST_BODY = "process_request_body"
    GENERATE_RESPONSE = "generate_response"
    REQUEST_TRAILERS = "process_request_trailers"
    RESPONSE_HEADERS = "process_response_headers"
    RESPONSE_BODY_CHUNK = "process_response_body_chunk"
    RESPONSE_BODY = "process_response_body"
    RESPONSE_TRAILERS = "process_response_trailers"

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
        return self in (Phase.RESPONSE_HEADERS, Phase.RESPONSE_BODY_CHUNK, Phase.RESPONSE_BODY, Phase.RESPONSE_TRAILERS)

    @functools.cached_property
    def is_body(self) -> bool:
        """The phase carries a body, whole or one chunk, which its output may replace."""
        return self in (Phase.REQUEST_BODY_CHUNK, Phase.REQUEST_BODY, Phase.RESPONSE_BODY_CHUNK, Phase.RESPONSE_BODY)

    @functools.cached_property
    def is_chunk(self) -> bool:
        return self in (Phase.REQUEST_BODY_CHUNK, Phase.RESPONSE_BODY_CHUNK)

    @functools.cached_property
    def is_trailers(self) -> bool:
        return self in (Phase.REQUEST_TRAILERS, Phase.RESPONSE_TRAILERS)

    @classmethod
    def named(cls, config_name: str) -> Phase:
        """The phase of a config name; ValueError for a name that is none."""
        try:
            return _BY_CONFIG_NAME[config_name]
        except KeyError:
            raise ValueError(f"no phase is called {config_name!r}") from None


CONFIG_NAMES = tuple(phase.config_name for phase in Phase)
_BY_CONFIG_NAME = {phase.config_name: phase for phase in Phase}
