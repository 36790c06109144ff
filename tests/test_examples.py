"""The example plugins: their CASES files pass through extproc.testing, and the committed .wasm files are fresh."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.testing import assert_cases, run_cases
from tests.examples_build import EXAMPLES_DIR, build_example, example_names, example_wasm

CASE_FILES = sorted(EXAMPLES_DIR.glob("*/*CASES.yaml")) + sorted(EXAMPLES_DIR.glob("*/MAINTENANCE.yaml"))


def test_every_example_has_source_readme_snippet_cases_and_wasm() -> None:
    names = example_names()
    assert len(names) >= 5
    for name in names:
        folder = EXAMPLES_DIR / name
        for required in ("assembly/index.ts", "README.md", "plugin.yaml", "CASES.yaml", f"{name}.wasm"):
            assert (folder / required).is_file(), f"examples/{name}/{required} is missing"


@pytest.mark.parametrize("cases", CASE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_cases(cases: Path) -> None:
    assert_cases(example_wasm(cases.parent.name), cases)


def test_a_failing_case_reports_a_readable_diff(tmp_path: Path) -> None:
    cases = tmp_path / "CASES.yaml"
    cases.write_text(
        "plugin: {config: {request: {set: {x-team: payments}}}}\n"
        "cases:\n"
        "  - name: wrong expectation\n"
        "    request: {path: /}\n"
        "    expect: {upstream: {headers: {x-team: marketing, x-other: null}}}\n"
    )
    report = run_cases(example_wasm("header-rewrite"), cases)
    assert not report.ok
    text = str(report)
    assert "FAIL wrong expectation (cases[0])" in text
    assert "upstream.headers.x-team: expected 'marketing', got 'payments'" in text
    assert "0 passed, 1 failed" in text


@pytest.mark.parametrize("name", example_names())
def test_committed_wasm_is_fresh(name: str, tmp_path: Path) -> None:
    rebuilt = build_example(name, tmp_path / f"{name}.wasm")
    committed = example_wasm(name)
    assert rebuilt.read_bytes() == committed.read_bytes(), (
        f"examples/{name}/{name}.wasm is stale: run `npm run build` in examples/{name} and commit the result"
    )
