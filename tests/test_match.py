"""A plugin's match rules against requests (the config loader's side is in test_config.py)."""

import re

import pytest

from extproc.plugins.match import HeaderRule, MatchRules

RULES = MatchRules(
    path_prefix="/api",
    path_regex=re.compile(r"/v[0-9]+/"),
    hosts=("example.com", "*.example.org"),
    methods=frozenset({"GET", "POST"}),
    headers=(
        HeaderRule("x-debug", present=True),
        HeaderRule("x-test", present=False),
        HeaderRule("x-env", equals="prod"),
    ),
)
GOOD = {
    "method": "GET",
    "path": "/api/v1/items",
    "authority": "example.com",
    "headers": {"x-debug": "", "x-env": "prod"},
}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, True),
        ({"path": "/api/v1/items?q=/x"}, True),
        ({"path": "/other/v1/?x=/api/v1/"}, False),
        ({"path": "/api/items?v=/v1/"}, False),
        ({"authority": "EXAMPLE.com:8443"}, True),
        ({"authority": "example.com.evil"}, False),
        ({"authority": "a.example.org:80"}, True),
        ({"authority": "a.b.example.org"}, True),
        ({"authority": "example.org"}, False),
        ({"authority": "badexample.org"}, False),
        ({"method": "post"}, True),
        ({"method": "DELETE"}, False),
        ({"headers": {"x-env": "prod"}}, False),
        ({"headers": {"x-debug": "1", "x-env": "prod", "x-test": "1"}}, False),
        ({"headers": {"x-debug": "1", "x-env": "Prod"}}, False),
    ],
    ids=[
        "all-match",
        "query-with-slash",
        "prefix-only-in-query",
        "version-only-in-query",
        "host-any-case-with-port",
        "host-suffix-forged",
        "wildcard-host-with-port",
        "wildcard-deeper-host",
        "wildcard-bare-domain",
        "wildcard-no-dot",
        "method-lowercase",
        "method-other",
        "required-header-missing",
        "forbidden-header-present",
        "header-value-case",
    ],
)
def test_match_rules(change: dict[str, object], expected: bool) -> None:
    request = {**GOOD, **change}
    assert RULES.matches(**request) is expected  # type: ignore[arg-type]


def test_ipv6_host_match() -> None:
    rules = MatchRules(hosts=("[::1]",))

    assert rules.matches("GET", "/", "[::1]:8080", {})
    assert not rules.matches("GET", "/", "[::2]:8080", {})


def test_empty_match_rules_match_everything() -> None:
    assert MatchRules().is_empty
    assert MatchRules().matches("BREW", "", "", {})
    assert not RULES.is_empty
