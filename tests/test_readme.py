"""README.md links every page in docs/, and every relative link in it leads to a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
# Markdown links [text](target); external ones carry a scheme.
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links() -> list[str]:
    return [target for target in _LINK.findall(README) if "://" not in target and not target.startswith("#")]


def test_every_docs_page_is_linked() -> None:
    linked = {Path(target.partition("#")[0]) for target in relative_links()}
    pages = sorted(page.relative_to(REPO) for page in (REPO / "docs").glob("*.md"))
    missing = [str(page) for page in pages if page not in linked]
    assert not missing, f"README.md's Documentation list does not link {missing}"


def test_relative_links_resolve() -> None:
    broken = [target for target in relative_links() if not (REPO / target.partition("#")[0]).exists()]
    assert not broken, f"README.md links to missing paths: {broken}"
