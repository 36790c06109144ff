from __future__ import annotations

import pytest

from extproc.config import BreakerConfig
from extproc.plugins.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(clock: Clock, failures: int = 3, cooldown_ms: int = 1000) -> CircuitBreaker:
    return CircuitBreaker("p", BreakerConfig(failures=failures, cooldown_ms=cooldown_ms), clock)


def state(breaker: CircuitBreaker) -> BreakerState:
    # Read through a call: mypy would otherwise keep `breaker.state` narrowed across the breaker's own updates.
    return breaker.state


def changes(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The state changes the breaker logged, as "from -> to"."""
    return [" ".join(record.getMessage().split()[3:6]) for record in caplog.records if record.name == "extproc.breaker"]


def test_opens_after_consecutive_failures(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    breaker = make(clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert state(breaker) is BreakerState.CLOSED
    breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.allow()
    assert changes(caplog) == ["closed -> open"]


def test_success_resets_the_count(clock: Clock) -> None:
    breaker = make(clock)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert state(breaker) is BreakerState.CLOSED


def test_one_probe_after_cooldown_closes_on_success(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 0.999
    assert not breaker.allow()
    clock.now += 0.001
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else waits for the probe's outcome
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED
    assert breaker.allow()
    assert changes(caplog) == ["closed -> open", "open -> half_open", "half_open -> closed"]


def test_failed_probe_reopens_for_a_full_cooldown(clock: Clock) -> None:
    breaker = make(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 1
    assert breaker.allow()
    breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN
    clock.now += 0.5
    assert not breaker.allow()


def test_zero_failures_never_opens(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    breaker = make(clock, failures=0)
    for _ in range(100):
        breaker.record_failure()
    assert breaker.allow()
    assert changes(caplog) == []
