"""An ordered header list that plugins change in turn, and the net change to send to Envoy."""

from __future__ import annotations

from dataclasses import dataclass

from extproc.contract import HeaderChanges, Pair

# Changing any of these makes Envoy's cached route stale.
ROUTING_HEADERS = frozenset({":path", ":authority", "host"})


@dataclass(frozen=True, slots=True)
class HeaderDiff:
    """Names whose values changed (with every new value, in order) and names that disappeared."""

    replaced: tuple[tuple[str, tuple[str, ...]], ...]
    removed: tuple[str, ...]

    @property
    def touches_route(self) -> bool:
        for name, _ in self.replaced:
            if name in ROUTING_HEADERS:
                return True
        return not ROUTING_HEADERS.isdisjoint(self.removed)


class HeaderList:
    """Headers in wire order with repeats kept. Names are lower case, as Envoy sends them."""

    __slots__ = ("_original", "_touched", "pairs")

    def __init__(self, pairs: list[Pair]) -> None:
        self.pairs = pairs
        self._original: list[Pair] | None = None
        # Only names a change mentioned can differ from the original; the diff looks at no others.
        self._touched: set[str] = set()

    def first(self, name: str) -> str | None:
        for key, value in self.pairs:
            if key == name:
                return value
        return None

    @property
    def changed(self) -> bool:
        return self._original is not None and self._original != self.pairs

    def apply(self, changes: HeaderChanges) -> None:
        if self._original is None:
            self._original = list(self.pairs)
        touched = self._touched
        pairs = self.pairs
        if changes.remove:
            gone = frozenset(changes.remove)
            touched.update(gone)
            pairs = [pair for pair in pairs if pair[0] not in gone]
        for name, value in changes.set:
            touched.add(name)
            index = _index(pairs, name)
            if index < 0:
                pairs.append((name, value))
            else:
                # Keep the first occurrence's position so the header order stays stable.
                pairs[index] = (name, value)
                pairs = [pair for i, pair in enumerate(pairs) if i <= index or pair[0] != name]
        for name, value in changes.append:
            touched.add(name)
            pairs.append((name, value))
        self.pairs = pairs

    def rebase(self) -> None:
        """Envoy now has these headers: later diffs start from here."""
        self._original = None
        self._touched = set()

    def diff(self) -> HeaderDiff:
        """The smallest set of per-name replacements and removals turning the original into now."""
        if self._original is None:
            return HeaderDiff((), ())
        before = _values(self._original, self._touched)
        after = _values(self.pairs, self._touched)
        # Loops rather than comprehensions: each comprehension makes a function object per call.
        replaced = []
        for name, values in after.items():
            if before.get(name) != values:
                replaced.append((name, values))
        removed = () if before.keys() <= after.keys() else tuple([name for name in before if name not in after])
        return HeaderDiff(tuple(replaced), removed)


def _index(pairs: list[Pair], name: str) -> int:
    """Where `name` first occurs, or -1 (a plain loop: a generator costs more to set up than the search)."""
    for index, (key, _) in enumerate(pairs):
        if key == name:
            return index
    return -1


def _values(pairs: list[Pair], names: set[str]) -> dict[str, tuple[str, ...]]:
    """Every value of each of `names` present in `pairs`, in order."""
    grouped: dict[str, tuple[str, ...]] = {}
    for name, value in pairs:
        if name in names:
            # Tuples built in place: a name rarely repeats, and no list-to-tuple pass is needed.
            grouped[name] = grouped[name] + (value,) if name in grouped else (value,)
    return grouped
