"""A bounded pool of plugin instances, so that no two concurrent calls share one."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PoolExhausted(Exception):
    """Every instance stayed busy for the whole wait."""


class InstancePool(Generic[T]):
    """Creates instances on demand up to `max_size`; a caller over the limit waits for a free one."""

    def __init__(self, factory: Callable[[], T], max_size: int) -> None:
        self._factory = factory
        self._max_size = max_size
        self._idle: list[T] = []
        self._size = 0
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
        with self._cond:
            if not self._cond.wait_for(self._can_acquire, timeout=wait_seconds):
                raise PoolExhausted(f"all {self._max_size} instances busy for {wait_seconds:.3f}s")
            if self._idle:
                return self._idle.pop()
            self._size += 1
        try:
            # Instantiation takes about a millisecond: do it outside the lock.
            return self._factory()
        except BaseException:
            self._forget()
            raise

    def _can_acquire(self) -> bool:
        return bool(self._idle) or self._size < self._max_size

    def release(self, instance: T) -> None:
        with self._cond:
            self._idle.append(instance)
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
        with self._cond:
            self._size -= len(self._idle)
            self._idle.clear()
