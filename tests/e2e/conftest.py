"""Fixtures for the end-to-end tests (real processes on loopback ports)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import Stack, Upstream, start_stack, start_upstream

_UPSTREAM_LOG_TAIL_LINES = 60

StackFactory = Callable[..., contextlib.AbstractContextManager[Stack]]


@pytest.fixture(scope="session")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """One echo upstream for the whole session; tests tell requests apart by path or count()."""
    with start_upstream(tmp_path_factory.mktemp("upstream")) as running:
        yield running


@pytest.fixture
def make_stack(tmp_path: Path, upstream: Upstream) -> StackFactory:
    """``make_stack(config_yaml, **envoy_kwargs)``: :func:`start_stack` bound to this
    test's tmp dir and the session upstream; use it as a context manager."""
    counter = itertools.count()

    def factory(config_yaml: str, **envoy_kwargs: Any) -> contextlib.AbstractContextManager[Stack]:
        envoy_kwargs.setdefault("upstream_port", upstream.port)
        # A fresh directory per stack, so two stacks in one test keep separate logs.
        return start_stack(tmp_path / f"stack{next(counter)}", config_yaml, **envoy_kwargs)

    return factory


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # The upstream outlives single tests, so its log is attached here instead of being
    # printed by a context manager like the stack's logs are.
    if report.when == "call" and report.failed:
        funcargs: dict[str, Any] = getattr(item, "funcargs", {})
        running = funcargs.get("upstream")
        if isinstance(running, Upstream):
            tail = running.log_text().splitlines()[-_UPSTREAM_LOG_TAIL_LINES:]
            report.sections.append(("upstream log (tail)", "\n".join(tail)))
    return report
