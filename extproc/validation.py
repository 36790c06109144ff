"""Checks of parsed YAML data, section by section, that name the key path of what is wrong.

A section is a table from each key it allows, in the order an error lists them, to the parser of the key's
value. A parser gets the value and its key path (``plugins[2].timeout_ms``), returns the value as the
program keeps it, and raises Invalid naming that path and the problem. The reader of the file adds its name
(config.parse_config). The messages quote the value and, for a mistyped key or choice, suggest the
closest known one: users fix their files from them.
"""

from __future__ import annotations

import difflib
import enum
import math
from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import Any, TypeAlias, TypeVar

from extproc.errors import ExtprocError

_T = TypeVar("_T")
_D = TypeVar("_D")
_E = TypeVar("_E", bound=enum.StrEnum)

Parser: TypeAlias = Callable[[object, str], Any]
# None: the section's own code parses that key, because what another key means depends on it.
Table: TypeAlias = Mapping[str, Parser | None]


class Invalid(ExtprocError):
    """A bad value, named by its key path; the reader of the file turns it into an error naming the file."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(key, reason)
        self.key = key
        self.reason = reason


def child(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (boolean)"
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else f"{value[:60]!r}..."
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{value} ({type(value).__name__})"


def _did_you_mean(value: str, choices: Collection[str]) -> str:
    close = difflib.get_close_matches(value, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def optional(m: Mapping[str, object], key: str, name: str, parse: Callable[[object, str], _T], default: _D) -> _T | _D:
    value = m.get(name)
    return default if value is None else parse(value, child(key, name))


def mapping(value: object, key: str, allowed: Collection[str], required: Collection[str] = ()) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise Invalid(key, f"must be a mapping, got {describe(value)}")
    for name in value:
        if not isinstance(name, str):
            raise Invalid(key, f"keys must be strings, got {describe(name)}")
        if name not in allowed:
            hint = _did_you_mean(name, allowed) or "."
            raise Invalid(child(key, name), f"unknown key {name!r}{hint} Allowed keys: {', '.join(allowed)}")
    for name in required:
        if name not in value:
            raise Invalid(child(key, name), "required key is missing")
    return value


def section(value: object, key: str, table: Table, required: Collection[str] = ()) -> dict[str, Any]:
    return parse_keys(mapping(value, key, table, required), key, table, required)


def parse_keys(m: Mapping[str, object], key: str, table: Table, required: Collection[str] = ()) -> dict[str, Any]:
    """The section's keys that have a value, parsed in table order; the others keep their field's default.
    A required key is parsed even when null, so that its error says what it must be."""
    values: dict[str, Any] = {}
    for name, parse in table.items():
        value = m.get(name)
        if parse is not None and (value is not None or name in required):
            values[name] = parse(value, child(key, name))
    return values


def as_list(value: object, key: str) -> list[object]:
    if not isinstance(value, list):
        raise Invalid(key, f"must be a list, got {describe(value)}")
    return value


def string(value: object, key: str) -> str:
    if not isinstance(value, str):
        hint = "; quote it" if isinstance(value, int | float) and not isinstance(value, bool) else ""
        raise Invalid(key, f"must be a string, got {describe(value)}{hint}")
    return value


def non_empty_string(value: object, key: str) -> str:
    text = string(value, key)
    if not text:
        raise Invalid(key, "must not be empty")
    return text


def boolean(value: object, key: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid(key, f"must be true or false, got {describe(value)}")
    return value


def positive_int(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise Invalid(key, f"must be a positive integer, got {describe(value)}")
    return value


def non_negative_int(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise Invalid(key, f"must be a non-negative integer, got {describe(value)}")
    return value


def one_of(value: object, key: str, choices: Collection[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        hint = _did_you_mean(value, choices) if isinstance(value, str) else ""
        raise Invalid(key, f"must be one of {', '.join(choices)}, got {describe(value)}{hint}")
    return value


def choice(choices: tuple[str, ...]) -> Callable[[object, str], str]:
    return lambda value, key: one_of(value, key, choices)


def enum_choice(kind: type[_E]) -> Callable[[object, str], _E]:
    """A parser of `kind`'s values, listed in the order the enum defines them."""
    values = tuple(member.value for member in kind)
    return lambda value, key: kind(one_of(value, key, values))


def string_list(value: object, key: str, item: Callable[[object, str], str], *, empty_hint: str) -> tuple[str, ...]:
    """A list of strings normalised by ``item``. Empty lists are refused because "none allowed" and "no
    condition" would both be plausible readings."""
    items = as_list(value, key)
    if not items:
        raise Invalid(key, f"must not be empty; {empty_hint}")
    seen: dict[str, int] = {}
    for i, raw in enumerate(items):
        text = item(raw, f"{key}[{i}]")
        if text in seen:
            raise Invalid(f"{key}[{i}]", f"duplicate value {text!r} (same as {key}[{seen[text]}])")
        seen[text] = i
    return tuple(seen)


def json_mapping(value: object, key: str) -> Mapping[str, object]:
    """A mapping of JSON data, copied read-only all the way down (mappings become MappingProxyType, lists
    tuples); json.dumps writes it back with ``default=thaw``."""
    if not isinstance(value, Mapping):
        raise Invalid(key, f"must be a mapping, got {describe(value)}")
    try:
        return _freeze_mapping(value, key)
    except RecursionError:
        raise Invalid(key, "is nested too deeply (or refers to itself through a YAML alias)") from None


def _freeze_mapping(value: Mapping[object, object], key: str) -> Mapping[str, object]:
    frozen: dict[str, object] = {}
    for name, item in value.items():
        if not isinstance(name, str):
            raise Invalid(key, f"keys must be strings, got {describe(name)}")
        frozen[name] = _freeze(item, child(key, name))
    return MappingProxyType(frozen)


def _freeze(value: object, key: str) -> object:
    """A read-only copy of the value, which must be JSON data so that writing it back cannot fail."""
    if isinstance(value, Mapping):
        return _freeze_mapping(value, key)
    if isinstance(value, list):
        return tuple(_freeze(item, f"{key}[{i}]") for i, item in enumerate(value))
    if isinstance(value, float) and not math.isfinite(value):
        raise Invalid(key, f"must be a finite number, got {value}")
    if value is None or isinstance(value, str | int | float):  # bool is an int
        return value
    raise Invalid(
        key,
        f"must be a string, number, boolean, null, list or mapping, got {describe(value)}; quote it to pass a string",
    )


def thaw(value: object) -> object:
    # json.dumps only knows dict, not MappingProxyType.
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
