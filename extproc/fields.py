"""HTTP field syntax: which header names and values plugin output may hold (RFC 9110, RFC 3986).

Envoy passes the headers ext_proc sets on to the upstream without checking them against these
grammars: a space or tab in `:path` or `:method` splits the request line an HTTP/1 upstream reads.
So every name and value is checked here by its grammar before it reaches Envoy.

Header values are `str`. Bytes that are not UTF-8 are kept as surrogate escapes (U+DC80-U+DCFF,
PEP 383), so `value_bytes(value_text(raw)) == raw` for any bytes. On the wire every character above
U+007F is obs-text (bytes 0x80-0xFF), which RFC 9110 allows in ordinary field values; pseudo-headers
and `host` must be visible ASCII.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

# RFC 9110 5.1 / 5.6.2: a field name is a token; pseudo-headers are the HTTP/2 ones Envoy knows.
# re.ASCII keeps IGNORECASE from folding U+212A (Kelvin sign) into "k".
_NAME = re.compile(
    r":(?:method|path|authority|scheme|status)|[!#$%&'*+\-.^_`|~0-9a-z]+",
    re.IGNORECASE | re.ASCII,
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")

# RFC 9110 5.5: field-vchar (VCHAR or obs-text) at both ends, SP and HTAB allowed inside. Surrogates
# other than the escapes of single bytes cannot be encoded, so they are not field-vchar. Regex escapes,
# not the characters: mypyc cannot compile a string literal holding surrogates.
_VCHAR = r"!-~\x80-\ud7ff\udc80-\udcff\ue000-\U0010ffff"
_FIELD_VALUE = re.compile(f"(?:[{_VCHAR}](?:[\t {_VCHAR}]*[{_VCHAR}])?)?")

# origin-form (RFC 9112 3.2.1) loosened to any visible ASCII but "#" (a fragment is never part of a
# request-target), or asterisk-form. The method is not known here, so "*" is not tied to OPTIONS.
_PATH = re.compile(r"/[!\"$-~]*|\*")
# RFC 3986 3.1.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
# Three digits, 200-599: it replaces a final response's status, and 1xx statuses are never final.
_STATUS = re.compile(r"[2-5][0-9][0-9]")


def _ipv6_address() -> str:
    """RFC 3986 3.2.2's IPv6address, rule by rule."""
    h16 = "[0-9A-Fa-f]{1,4}"
    dec_octet = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
    ls32 = rf"(?:{h16}:{h16}|{dec_octet}(?:\.{dec_octet}){{3}})"
    forms = [f"(?:{h16}:){{6}}{ls32}", f"::(?:{h16}:){{5}}{ls32}"]
    # [ *n( h16 ":" ) h16 ] "::" and what may follow, for n = 0..6.
    tails = [
        f"(?:{h16}:){{4}}{ls32}",
        f"(?:{h16}:){{3}}{ls32}",
        f"(?:{h16}:){{2}}{ls32}",
        f"{h16}:{ls32}",
        ls32,
        h16,
        "",
    ]
    forms.extend(f"(?:(?:{h16}:){{0,{n}}}{h16})?::{tail}" for n, tail in enumerate(tails))
    return "|".join(forms)


# RFC 3986 3.2.2-3.2.3 without userinfo: reg-name (IPv4 is a special case of it) or an IPv6 literal,
# then an optional port. IPvFuture and zone ids are not accepted. The reg-name loop is unrolled
# (one character class, then pct-encoded runs) so that no input can make the matcher backtrack.
_REG_NAME_CHAR = "[A-Za-z0-9\\-._~!$&'()*+,;=]"
_PCT = "%[0-9A-Fa-f]{2}"
_AUTHORITY = re.compile(
    f"(?:(?:{_REG_NAME_CHAR}|{_PCT}){_REG_NAME_CHAR}*(?:{_PCT}{_REG_NAME_CHAR}*)*|\\[(?:{_ipv6_address()})\\])"
    "(?::[0-9]{1,5})?"
)


def value_text(raw: bytes) -> str:
    """Header bytes as the server holds them: UTF-8, any other byte as its surrogate escape."""
    return raw.decode("utf-8", "surrogateescape")


def value_bytes(value: str) -> bytes:
    """The exact bytes of a header value held as `value_text` made it."""
    return value.encode("utf-8", "surrogateescape")


# A match when `name` is a token or one of the five pseudo-headers, in any ASCII case; else None.
match_header_name = _NAME.fullmatch


_AUTHORITY_FORM = "must be host[:port]: a registered name, an IPv4 or an [IPv6] address, no userinfo"
# `host` is HTTP/1.1's spelling of `:authority` (RFC 9110 7.2), so it gets the same grammar.
# Each check is a compiled pattern's fullmatch: a C call, no Python frame.
_RULES: Mapping[str, tuple[Callable[[str], object], str]] = {
    ":method": (_TOKEN.fullmatch, "must be an HTTP token"),
    ":path": (_PATH.fullmatch, "must be '/' followed by visible ASCII other than '#', or '*'"),
    ":authority": (_AUTHORITY.fullmatch, _AUTHORITY_FORM),
    "host": (_AUTHORITY.fullmatch, _AUTHORITY_FORM),
    ":scheme": (_SCHEME.fullmatch, "must be a URI scheme (a letter, then letters, digits, '+', '-', '.')"),
    ":status": (_STATUS.fullmatch, "must be three digits, 200-599"),
}


def value_problem(name: str, value: str) -> str | None:
    """Why `value` may not be a value of header `name` (lower case), or None when it may."""
    rule = _RULES.get(name)
    if rule is None:
        # Most values are printable ASCII without outer spaces: two C calls and two slices, no regex.
        if value.isascii() and value.isprintable() and value[:1] != " " and value[-1:] != " ":
            return None
        if _FIELD_VALUE.fullmatch(value) is not None:
            return None
        return _field_value_problem(value)
    check, expected = rule
    if check(value):
        return None
    return f"{name} {expected}, got {_shown(value)}"


def _field_value_problem(value: str) -> str:
    for index, char in enumerate(value):
        if char not in " \t" and _FIELD_VALUE.fullmatch(char) is None:
            return f"header value has {char!r} at offset {index}; only visible characters, space and tab may appear"
    # Every character may appear, so the grammar failed at an end.
    return "header value starts or ends with a space or tab"


def _shown(value: str) -> str:
    # The value may be long and comes from a plugin: a bounded repr keeps logs readable and one line.
    return repr(value) if len(value) <= 80 else repr(value[:80]) + "..."
