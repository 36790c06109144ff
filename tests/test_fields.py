"""extproc.fields against the grammars it enforces, with values generated from the RFCs' own terms.

The strategies below spell out RFC 9110 (token, field-value), RFC 3986 (scheme, reg-name, IP literals,
port) and the origin-form of RFC 9112 independently of the module's regular expressions, so a
regular expression that drifts from the grammar fails here.
"""

from __future__ import annotations

import ipaddress
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.fields import match_header_name, value_bytes, value_problem, value_text

TCHAR = "!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters
VCHAR = "".join(chr(c) for c in range(0x21, 0x7F))
UNRESERVED = string.ascii_letters + string.digits + "-._~"
SUB_DELIMS = "!$&'()*+,;="
# Characters no header value may hold: the controls other than HTAB, and DEL.
CONTROLS = [chr(c) for c in range(0x20) if c != 0x09] + ["\x7f"]

tokens = st.text(TCHAR, min_size=1, max_size=20)
# obs-text as it reaches the server: UTF-8 text above U+007F, or bytes that are not UTF-8.
obs_text = st.characters(min_codepoint=0x80, codec="utf-8") | st.sampled_from(
    [value_text(bytes([b])) for b in range(0x80, 0x100)]
)
field_vchar = st.sampled_from(VCHAR) | obs_text


@st.composite
def field_values(draw: st.DrawFn) -> str:
    """RFC 9110 5.5: field-vchar at both ends, SP and HTAB allowed between."""
    inner = draw(st.lists(field_vchar | st.sampled_from(" \t"), max_size=20))
    if not inner and draw(st.booleans()):
        return ""
    return draw(field_vchar) + "".join(inner) + draw(field_vchar)


def pct_encoded() -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(string.hexdigits), st.sampled_from(string.hexdigits)).map(
        lambda h: "%" + "".join(h)
    )


reg_names = st.lists(st.sampled_from(UNRESERVED + SUB_DELIMS) | pct_encoded(), min_size=1, max_size=12).map("".join)
ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.integers(0, 2**128 - 1).flatmap(
    lambda n: st.sampled_from([ipaddress.IPv6Address(n).compressed, ipaddress.IPv6Address(n).exploded])
)
ports = st.integers(0, 65535).map(str)
authorities = st.tuples(reg_names | ipv4 | ipv6.map(lambda a: f"[{a}]"), st.none() | ports).map(
    lambda parts: parts[0] if parts[1] is None else f"{parts[0]}:{parts[1]}"
)
schemes = st.tuples(
    st.sampled_from(string.ascii_letters), st.text(string.ascii_letters + string.digits + "+-.", max_size=10)
).map("".join)
paths = st.just("*") | st.text(VCHAR.replace("#", ""), max_size=30).map(lambda rest: "/" + rest)
statuses = st.integers(200, 599).map(str)

VALID = {
    ":method": tokens,
    ":path": paths,
    ":authority": authorities,
    "host": authorities,
    ":scheme": schemes,
    ":status": statuses,
}


@given(st.data())
@pytest.mark.parametrize("name", sorted(VALID))
def test_values_from_the_grammar_are_accepted(name: str, data: st.DataObject) -> None:
    value = data.draw(VALID[name])
    assert value_problem(name, value) is None


# Names the server holds (lower case) that have no grammar of their own.
ordinary_names = tokens.map(str.lower).filter(lambda name: name not in VALID)


@given(ordinary_names, field_values())
def test_field_values_from_the_grammar_are_accepted(name: str, value: str) -> None:
    assert value_problem(name, value) is None


def insert(value: str, char: str, at: int) -> str:
    at = min(at, len(value))
    return value[:at] + char + value[at:]


@given(st.data(), st.integers(0, 40))
@pytest.mark.parametrize("name", sorted(VALID))
def test_a_forbidden_character_anywhere_in_a_pseudo_header_is_refused(name: str, data: st.DataObject, at: int) -> None:
    """Pseudo-headers and host are visible ASCII: whitespace, controls and non-ASCII all split or smuggle."""
    forbidden = data.draw(st.sampled_from([" ", "\t", *CONTROLS]) | obs_text)
    value = insert(data.draw(VALID[name]), forbidden, at)
    problem = value_problem(name, value)
    assert problem is not None and problem.startswith(name)


@given(ordinary_names, field_values(), st.sampled_from(CONTROLS), st.integers(0, 40))
def test_a_control_character_anywhere_in_a_field_value_is_refused(name: str, value: str, control: str, at: int) -> None:
    problem = value_problem(name, insert(value, control, at))
    assert problem is not None and f"{control!r} at offset" in problem


@given(ordinary_names, field_values(), st.sampled_from(" \t"), st.booleans())
def test_a_field_value_with_outer_whitespace_is_refused(name: str, value: str, space: str, leading: bool) -> None:
    padded = space + value if leading else value + space
    assert value_problem(name, padded) == "header value starts or ends with a space or tab"


@given(tokens)
def test_every_token_is_a_header_name(name: str) -> None:
    assert match_header_name(name) is not None


@given(
    tokens, st.sampled_from([":", " ", "\t", "\n", "\x00", "\x7f", '"', "(", "/", "é", "\u212a"]), st.integers(0, 20)
)
def test_a_name_with_a_non_token_character_is_refused(name: str, bad: str, at: int) -> None:
    assert match_header_name(insert(name, bad, at)) is None


@pytest.mark.parametrize("name", [":method", ":path", ":authority", ":scheme", ":status", ":PATH"])
def test_the_five_pseudo_headers_are_names(name: str) -> None:
    assert match_header_name(name) is not None


@pytest.mark.parametrize("name", [":protocol", ":", "::path", ":path ", ":pa\u212ath", "x\n", "x-\u212a"])
def test_other_names_are_refused(name: str) -> None:
    assert match_header_name(name) is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (":path", "x/a"),  # not origin-form
        (":path", "http://example.com/a"),  # absolute-form is for proxies
        (":path", "/a#frag"),
        (":path", ""),
        (":method", ""),
        (":method", "GET/1"),
        (":authority", ""),
        (":authority", "user@example.com"),
        (":authority", "user:pass@example.com"),
        (":authority", "example.com:"),
        (":authority", "example.com:123456"),
        (":authority", "example.com:80:80"),
        (":authority", "[::1"),
        (":authority", "[::g]"),
        (":authority", "[1:2:3:4:5:6:7:8:9]"),
        (":authority", "[fe80::1%25eth0]"),
        (":authority", "a%2"),
        ("host", "a/b"),
        (":scheme", ""),
        (":scheme", "1http"),
        (":scheme", "ht_tp"),
        (":status", "0200"),
        (":status", "20"),
        (":status", "199"),
        (":status", "600"),
        (":status", "+200"),
        (":status", "٢٠٠"),  # Arabic-Indic digits: str.isdigit() says yes
    ],
)
def test_grammar_violations_without_a_forbidden_character(name: str, value: str) -> None:
    problem = value_problem(name, value)
    assert problem is not None and problem.startswith(name)


@given(st.binary(max_size=40))
def test_any_bytes_survive_text_and_back(raw: bytes) -> None:
    assert value_bytes(value_text(raw)) == raw


def test_bytes_that_are_not_utf8_never_look_like_their_utf8_spelling() -> None:
    assert value_text(b"caf\xe9") != value_text("café".encode())
    assert value_text("café".encode()) == "café"
