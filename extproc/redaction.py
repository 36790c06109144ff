"""Masking secrets in text that is printed: config errors, logs, command output, admin answers."""

from __future__ import annotations

import re
from typing import Final

MASK: Final = "***"

# Query parameters that carry credentials (redis-py passes `?password=...` on as the AUTH password).
_SECRET_PARAMETER: Final = re.compile(r"pass|secret|token", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with its password and credential query parameters masked.

    It works on text, not on a parsed URL, because the URLs that are printed most are the ones that do not
    parse (a config error quotes them). Everything before the last ``@`` is taken for the user info, so a
    password holding ``/``, ``?`` or ``#`` is still masked; when the split is ambiguous more is masked,
    never less. A lone user info (``redis://word@host``) is masked whole: clients disagree on whether
    it is a user name or a password.
    """
    scheme, sep, rest = url.partition("://")
    prefix = scheme + sep if sep else ""
    if not sep:
        rest = url
    user_info, at, host_and_more = rest.rpartition("@")
    if at:
        user, colon, _ = user_info.partition(":")
        prefix += (f"{user}:{MASK}" if colon and user else MASK) + "@"
    else:
        host_and_more = rest
    location, question, query = host_and_more.partition("?")
    if question:
        query = "&".join(_redact_parameter(parameter) for parameter in query.split("&"))
    return prefix + location + question + query


def _redact_parameter(parameter: str) -> str:
    name, equals, value = parameter.partition("=")
    if equals and value and _SECRET_PARAMETER.search(name):
        return f"{name}={MASK}"
    return parameter
