"""A bounded pool of plugin instances, so that no two concurrent calls share one.

The pool lives on the event loop: only the loop's thread takes and returns instances (a call that
runs on a plugin thread gets its instance from the loop and hands it back through the loop), so it
needs no lock, and a caller over the limit waits on a future instead of holding a thread.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from extproc.errors import ExtprocError

T = TypeVar("T")


class PoolExhausted(ExtprocError):
    """Every instance stayed busy for the whole wait."""


class InstancePool(Generic[T]):
    """Up to `max_size` instances of one plugin.

    `acquire()` answers an idle instance, or None when the caller has been granted a new slot and
    must create the instance itself with `factory` (about a millisecond, so it happens where the
    call runs rather than on the loop). Every instance or slot handed out comes back through
    exactly one of `release()` and `discard()`.
    """

    def __init__(self, factory: Callable[[], T], max_size: int) -> None:
        self.factory = factory
        self.max_size = max_size
        self._idle: list[T] = []
        self._size = 0
        self._waiters: deque[asyncio.Future[T | None]] = deque()

    @property
    def size(self) -> int:
        """Instances in existence or being created."""
        return self._size

    @property
    def idle(self) -> int:
        return len(self._idle)

    def add_idle(self, instance: T) -> None:
        """Adopt an instance created outside the pool (the one used to inspect the module)."""
        self._size += 1
        self._release(instance)

    def take_idle(self) -> T | None:
        """An idle instance without waiting or creating one, or None."""
        idle = self._idle
        return idle.pop() if idle else None

    async def acquire(self, wait_seconds: float) -> T | None:
        """An idle instance, None for a new slot, or PoolExhausted after `wait_seconds`."""
        if self._idle:
            return self._idle.pop()
        if self._size < self.max_size:
            self._size += 1
            return None
        waiter: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        received = False
        try:
            async with asyncio.timeout(wait_seconds):
                granted = await waiter
            received = True
            return granted
        except TimeoutError:
            raise PoolExhausted(f"all {self.max_size} instances busy for {wait_seconds:.3f}s") from None
        finally:
            if not received:
                self._abandon(waiter)

    def _abandon(self, waiter: asyncio.Future[T | None]) -> None:
        """A waiter whose caller gave up (timeout or cancellation): what was handed to it goes back."""
        if not waiter.done():
            waiter.cancel()
            self._waiters.remove(waiter)
        elif not waiter.cancelled():
            # Granted just before the caller gave up, so nobody received it.
            granted = waiter.result()
            if granted is None:
                self.discard()
            else:
                self._release(granted)

    def release(self, instance: T) -> None:
        """Give back an instance whose state is sound."""
        self._release(instance)

    def discard(self, instance: T | None = None) -> None:
        """Drop an instance that can no longer be trusted (after a trap, a timeout or a cancellation),
        or a slot whose instance could not be created."""
        del instance
        self._size -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._size += 1
                waiter.set_result(None)  # the waiter creates the replacement
                return

    def _release(self, instance: T) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(instance)
                return
        self._idle.append(instance)

    def clear(self) -> None:
        """Drop the idle instances (at shutdown; instances still busy go with the pool itself)."""
        self._size -= len(self._idle)
        self._idle.clear()
