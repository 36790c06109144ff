"""A per-plugin circuit breaker: stop calling a plugin that keeps failing, probe it after a cooldown."""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from enum import StrEnum

from extproc.config import BreakerConfig

log = logging.getLogger("extproc.breaker")


class BreakerState(StrEnum):
    CLOSED = "closed"  # calls go through
    OPEN = "open"  # calls fail at once until the cooldown ends
    HALF_OPEN = "half_open"  # one probe call is in flight; its outcome decides


class Admission(enum.Enum):
    """What `admit()` decided; a PROBE call's outcome closes or reopens the circuit."""

    REFUSED = 0
    ADMITTED = 1
    PROBE = 2


class CircuitBreaker:
    """Thread-safe; the closed, failure-free path takes no lock.

    Nothing is published on a change: /plugins and the metrics read `state` from the breakers of the
    plugin set in force, so a breaker of a set that never served (a failed reload) or no longer serves
    cannot be shown in place of the live one.
    """

    def __init__(self, plugin: str, config: BreakerConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.plugin = plugin
        self._threshold = config.failures
        self._cooldown = config.cooldown_ms / 1000
        self._clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0

    @property
    def state(self) -> BreakerState:
        return self._state

    def allow(self) -> bool:
        """May a call go through now? In OPEN past the cooldown, the first caller becomes the probe."""
        return self.admit() is not Admission.REFUSED

    def admit(self) -> Admission:
        """As allow(), and whether the admitted call is the probe. An admitted call ends in exactly one
        of record_success(), record_failure() and record_abandoned()."""
        if self._state is BreakerState.CLOSED:
            return Admission.ADMITTED
        with self._lock:
            return self._admit_locked()

    def _admit_locked(self) -> Admission:
        # Another thread may have changed the state between the unlocked check and the lock.
        if self._state is BreakerState.CLOSED:
            return Admission.ADMITTED
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self._cooldown:
            self._set(BreakerState.HALF_OPEN)
            return Admission.PROBE
        return Admission.REFUSED

    def record_success(self) -> None:
        if self._failures == 0 and self._state is BreakerState.CLOSED:
            return
        with self._lock:
            self._failures = 0
            if self._state is not BreakerState.CLOSED:
                self._set(BreakerState.CLOSED)

    def record_abandoned(self, admission: Admission) -> None:
        """An admitted call that ended without an outcome (its stream went away, or a bug of ours): it
        says nothing about the plugin. An abandoned probe lets the next caller probe at once."""
        if admission is not Admission.PROBE:
            return
        with self._lock:
            if self._state is BreakerState.HALF_OPEN:
                self._opened_at = self._clock() - self._cooldown
                self._set(BreakerState.OPEN, reason="its probe call was abandoned; the next call probes")

    def record_failure(self) -> None:
        if self._threshold == 0:
            return
        with self._lock:
            self._failures += 1
            if self._state is BreakerState.HALF_OPEN or (
                self._state is BreakerState.CLOSED and self._failures >= self._threshold
            ):
                self._opened_at = self._clock()
                self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState, reason: str | None = None) -> None:
        previous, self._state = self._state, state
        if reason is not None:
            log.warning(
                "plugin %r circuit %s -> %s: %s",
                self.plugin,
                previous.value,
                state.value,
                reason,
                extra={"plugin": self.plugin},
            )
        elif state is BreakerState.OPEN:
            log.warning(
                "plugin %r circuit %s -> open after %d consecutive failures; next probe in %.1fs",
                self.plugin,
                previous.value,
                self._failures,
                self._cooldown,
                extra={"plugin": self.plugin},
            )
        else:
            log.warning(
                "plugin %r circuit %s -> %s", self.plugin, previous.value, state.value, extra={"plugin": self.plugin}
            )
