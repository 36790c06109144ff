"""A plugin's `match` rules: which requests it runs for.

The config loader builds them; the registry checks them on every request, so they hold what the checks
need already normalised (lower-case hosts and header names, upper-case methods, a compiled regex).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class HeaderRule:
    name: str  # lower case
    present: bool | None = None
    equals: str | None = None

    def matches(self, headers: Mapping[str, str]) -> bool:
        if self.present is not None:
            return (self.name in headers) == self.present
        return headers.get(self.name) == self.equals


@dataclasses.dataclass(frozen=True)
class MatchRules:
    """Conditions on a request that must all hold for a plugin to run; no conditions match everything."""

    path_prefix: str | None = None
    path_regex: re.Pattern[str] | None = None
    hosts: tuple[str, ...] = ()  # lower case, exact or "*.suffix"
    methods: frozenset[str] = frozenset()  # upper case
    headers: tuple[HeaderRule, ...] = ()

    @property
    def is_empty(self) -> bool:
        return (
            self.path_prefix is None
            and self.path_regex is None
            and not self.hosts
            and not self.methods
            and not self.headers
        )

    def matches(self, method: str, path: str, authority: str, headers: Mapping[str, str]) -> bool:
        """``headers`` maps lower-case names to their first value."""
        path = path.partition("?")[0]
        if self.path_prefix is not None and not path.startswith(self.path_prefix):
            return False
        if self.path_regex is not None and self.path_regex.search(path) is None:
            return False
        if self.hosts:
            host = _strip_port(authority).lower()
            if not any(host_matches(pattern, host) for pattern in self.hosts):
                return False
        # Methods are compared case-insensitively so a lower-case client is not silently let through.
        if self.methods and method.upper() not in self.methods:
            return False
        return all(rule.matches(headers) for rule in self.headers)


def _strip_port(authority: str) -> str:
    if authority.startswith("["):  # [v6]:port
        return authority.partition("]")[0] + "]"
    return authority.partition(":")[0]


def host_matches(pattern: str, host: str) -> bool:
    """`host` (lower case, no port) against an exact name or a "*.suffix" pattern."""
    if pattern.startswith("*."):
        # Like Envoy's virtual hosts: "*.example.org" needs at least one label before the suffix.
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern
