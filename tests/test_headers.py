from __future__ import annotations

import pytest

from extproc.contract import HeaderChanges
from extproc.headers import HeaderList


def test_unchanged_list_has_empty_diff() -> None:
    headers = HeaderList([("a", "1")])
    assert not headers.changed
    diff = headers.diff()
    assert diff.replaced == () and diff.removed == ()


def test_set_replaces_every_value_at_first_position() -> None:
    headers = HeaderList([("a", "1"), ("b", "x"), ("a", "2")])
    headers.apply(HeaderChanges(set=(("a", "new"),)))
    assert headers.pairs == [("a", "new"), ("b", "x")]
    assert headers.diff().replaced == (("a", ("new",)),)


def test_append_keeps_repeats_and_remove_drops_all() -> None:
    headers = HeaderList([("set-cookie", "a=1"), ("x", "1"), ("x", "2")])
    headers.apply(HeaderChanges(append=(("set-cookie", "b=2"),), remove=("x",)))
    assert headers.pairs == [("set-cookie", "a=1"), ("set-cookie", "b=2")]
    diff = headers.diff()
    assert diff.replaced == (("set-cookie", ("a=1", "b=2")),)
    assert diff.removed == ("x",)


def test_chained_changes_diff_against_the_original() -> None:
    headers = HeaderList([("a", "1")])
    headers.apply(HeaderChanges(set=(("b", "2"),)))
    headers.apply(HeaderChanges(remove=("b",)))
    assert not headers.changed
    assert headers.diff().replaced == ()


def test_rebase_starts_a_new_diff() -> None:
    headers = HeaderList([("a", "1")])
    headers.apply(HeaderChanges(set=(("a", "2"),)))
    headers.rebase()
    headers.apply(HeaderChanges(set=(("c", "3"),)))
    assert headers.diff().replaced == (("c", ("3",)),)


@pytest.mark.parametrize(
    ("changes", "touches"),
    [
        (HeaderChanges(set=((":path", "/new"),)), True),
        (HeaderChanges(set=(("host", "h"),)), True),
        (HeaderChanges(set=((":authority", "h"),)), True),
        (HeaderChanges(set=(("x-other", "h"),)), False),
    ],
    ids=[":path", "host", ":authority", "other"],
)
def test_route_headers_are_detected(changes: HeaderChanges, touches: bool) -> None:
    headers = HeaderList([(":path", "/"), (":authority", "a")])
    headers.apply(changes)
    assert headers.diff().touches_route is touches
