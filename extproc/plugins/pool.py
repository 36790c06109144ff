"""A bounded pool of plugin instances, so that no two concurrent calls share one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PoolExhausted(Exception):
    """Every instance stayed busy for the whole wait."""


class InstancePool(Generic[T]):
    """Creates instances on demand up to `max_size`; a caller over the limit waits for a free one.

    Taking and returning an idle instance costs no lock: `list.pop()` and `list.append()` are
    atomic, and on the request path there is almost always an idle instance. The lock guards the
    size count and the waiters only.
    """

    def __init__(self, factory: Callable[[], T], max_size: int) -> None:
        self._factory = factory
        self._max_size = max_size
        self._idle: list[T] = []
        self._size = 0
        self._waiters = 0
        self._cond = threading.Condition(threading.Lock())

    @property
    def size(self) -> int:
        return self._size

    def add_idle(self, instance: T) -> None:
        """Adopt an instance created outside the pool (the one used to inspect the module)."""
        with self._cond:
            self._size += 1
            self._idle.append(instance)

    def acquire(self, wait_seconds: float) -> T:
        try:
            return self._idle.pop()
        except IndexError:
            pass
        deadline = time.monotonic() + wait_seconds
        with self._cond:
            # Counted before looking at the idle list, so that release() either sees this waiter
            # or appended its instance before the look.
            self._waiters += 1
            try:
                while True:
                    try:
                        return self._idle.pop()
                    except IndexError:
                        pass
                    if self._size < self._max_size:
                        self._size += 1
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise PoolExhausted(f"all {self._max_size} instances busy for {wait_seconds:.3f}s")
                    self._cond.wait(remaining)
            finally:
                self._waiters -= 1
        try:
            # Instantiation takes about a millisecond: do it outside the lock.
            return self._factory()
        except BaseException:
            self._forget()
            raise

    def release(self, instance: T) -> None:
        self._idle.append(instance)
        if self._waiters:
            with self._cond:
                self._cond.notify()

    def discard(self, instance: T) -> None:
        """Drop an instance whose state can no longer be trusted (after a trap or timeout)."""
        del instance
        self._forget()

    def _forget(self) -> None:
        with self._cond:
            self._size -= 1
            self._cond.notify()

    def clear(self) -> None:
        """Drop the idle instances (at shutdown; instances still busy go with the pool itself)."""
        with self._cond:
            # One pop at a time: an instance is either taken here or by a concurrent acquire(), never both.
            while True:
                try:
                    self._idle.pop()
                except IndexError:
                    return
                self._size -= 1
