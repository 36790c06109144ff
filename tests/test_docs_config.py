"""docs/configuration.md documents every key the config loader accepts.

The key lists come from extproc/config/parse.py's key tables, so a key added there without a line in the docs
fails here. A section is a heading naming it in backticks (## `server`, ### `server.tls`); its keys are
the first cells of the table rows under that heading, up to the next heading.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from extproc.config import parse as config

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

# Section heading -> the key table in config/parse.py that the loader checks that section's mapping against.
SECTIONS: dict[str, str] = {
    "server": "_SERVER_KEYS",
    "server.tls": "_TLS_KEYS",
    "plugins": "_PLUGIN_KEYS",
    "circuit_breaker": "_BREAKER_KEYS",
    "candidate": "_CANDIDATE_KEYS",
    "match": "_MATCH_KEYS",
    "match.headers": "_HEADER_RULE_KEYS",
    "state": "_STATE_KEYS",
    "tracing": "_TRACING_KEYS",
}
_HEADING = re.compile(r"^(#+)\s+(.*)$")
_ROW_KEY = re.compile(r"^\|\s*`([^`]+)`\s*\|")


def key_tables() -> dict[str, tuple[str, ...]]:
    """The keys of every `_..._KEYS` table of config/parse.py."""
    return {
        name: tuple(value)
        for name, value in vars(config).items()
        if name.startswith("_") and name.endswith("_KEYS") and isinstance(value, Mapping)
    }


def documented() -> dict[str, set[str]]:
    """Section name (the heading's backticked text) -> keys in the first column of its tables."""
    sections: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        heading = _HEADING.match(line)
        if heading is not None:
            named = re.fullmatch(r"`([^`]+)`", heading.group(2).strip())
            current = sections.setdefault(named.group(1), set()) if named else None
            continue
        row = _ROW_KEY.match(line)
        if current is not None and row is not None:
            current.add(row.group(1))
    return sections


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_every_key_of_a_section_is_documented(section: str) -> None:
    keys = key_tables()[SECTIONS[section]]
    found = documented()
    assert section in found, f"{DOC.name} has no heading `{section}` (for config.{SECTIONS[section]})"
    missing = [key for key in keys if key not in found[section]]
    assert not missing, f"{DOC.name}, section `{section}`: no table row for {missing}"
    unknown = sorted(found[section] - set(keys))
    assert not unknown, f"{DOC.name}, section `{section}`: documents keys the loader refuses: {unknown}"


def test_every_top_level_key_has_a_section() -> None:
    missing = [key for key in config._TOP_KEYS if key not in documented()]
    assert not missing, f"{DOC.name}: no `## \\`key\\`` heading for top-level keys {missing}"


def test_every_key_table_is_checked_here() -> None:
    # A new key table in config/parse.py is a new section of the file: map it in SECTIONS.
    mapped = {SECTIONS[section] for section in SECTIONS} | {"_TOP_KEYS"}
    tables = key_tables()
    unmapped = sorted(set(tables) - mapped)
    assert not unmapped, f"config/parse.py key tables with no docs section in this test: {unmapped}"
    assert mapped <= set(tables), f"SECTIONS names tables config/parse.py lacks: {mapped - set(tables)}"
