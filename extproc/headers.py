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
        return any(name in ROUTING_HEADERS for name, _ in self.replaced) or any(
            name in ROUTING_HEADERS for name in self.removed
        )


class HeaderList:
    """Headers in wire order with repeats kept. Names are lower case, as Envoy sends them."""

    __slots__ = ("_original", "pairs")

    def __init__(self, pairs: list[Pair]) -> None:
        self.pairs = pairs
        self._original: list[Pair] | None = None

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
        pairs = self.pairs
        if changes.remove:
            gone = frozenset(changes.remove)
            pairs = [pair for pair in pairs if pair[0] not in gone]
        for name, value in changes.set:
            index = next((i for i, (key, _) in enumerate(pairs) if key == name), None)
            if index is None:
                pairs.append((name, value))
            else:
                # Keep the first occurrence's position so the header order stays stable.
                pairs[index] = (name, value)
                pairs = [pair for i, pair in enumerate(pairs) if i <= index or pair[0] != name]
        pairs.extend(changes.append)
        self.pairs = pairs

    def rebase(self) -> None:
        """Envoy now has these headers: later diffs start from here."""
        self._original = None

    def diff(self) -> HeaderDiff:
        """The smallest set of per-name replacements and removals turning the original into now."""
        if self._original is None:
            return HeaderDiff((), ())
        before = _group(self._original)
        after = _group(self.pairs)
        replaced = tuple((name, values) for name, values in after.items() if before.get(name) != values)
        removed = tuple(name for name in before if name not in after)
        return HeaderDiff(replaced, removed)


def _group(pairs: list[Pair]) -> dict[str, tuple[str, ...]]:
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    return {name: tuple(values) for name, values in grouped.items()}
