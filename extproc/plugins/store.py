"""The key-value store behind the plugins' host functions: its interface, its errors and the in-memory backend.

Plugin instances are pooled and any call may land on any instance, so state that must outlive a call
(rate-limit counters, caches) lives in the server, behind `KeyValueStore`. The Redis backend, which shares
the state between workers and replicas, is plugins.redis_store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from extproc.errors import ExtprocError


class StoreError(ExtprocError, ValueError):
    """A key-value operation that cannot be carried out; `key` says on which key."""

    def __init__(self, key: bytes, reason: str) -> None:
        super().__init__(f"key {key!r}: {reason}")
        self.key = key
        self.reason = reason


class StoreUnavailable(StoreError):
    """The backend could not serve the operation in time (down, slow, no connection); the caller's
    `state_failure` policy decides what the plugin sees."""


class KeyValueStore(Protocol):
    """What the host functions need from a store. Every method is atomic.

    `ttl_ms` 0 means "no expiry". Implemented by MemoryStore and plugins.redis_store.RedisStore; a
    backend raises StoreUnavailable when it cannot answer, StoreError when the operation is wrong.
    """

    # True when an operation waits on the network, so the calls of a plugin using the store never run
    # on the event loop.
    remote: bool

    def get(self, key: bytes) -> bytes | None: ...

    def set(self, key: bytes, value: bytes, ttl_ms: int) -> None: ...

    def delete(self, key: bytes) -> bool: ...

    def incr(self, key: bytes, delta: int, ttl_ms: int) -> int:
        """Add `delta` to the decimal integer at `key` (absent counts as 0) and return the sum.

        `ttl_ms` applies only when this call creates the key, so a counter expires a fixed time after
        its first increment (a fixed window). Raises StoreError when the value is not an integer.
        """
        ...

    def compare_and_set(self, key: bytes, expected: bytes | None, value: bytes, ttl_ms: int) -> bool:
        """Store `value` only if the current value is `expected` (None: the key is absent)."""
        ...


@dataclass(slots=True)
class _Entry:
    value: bytes
    expires_at: float | None  # monotonic seconds


class MemoryStore:
    """An in-process `KeyValueStore`: one lock, lazy expiry plus a sweep, and a bound on the key count.

    When `max_keys` live keys exist, expired keys are swept and then the oldest-written keys are
    evicted: losing a rate-limit counter lets a few extra requests through, running out of memory
    takes the server down.
    """

    remote = False

    def __init__(self, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic) -> None:
        if max_keys <= 0:
            raise ValueError(f"max_keys must be positive, got {max_keys}")
        self._max_keys = max_keys
        self._clock = clock
        self._entries: dict[bytes, _Entry] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            now = self._clock()
            return sum(1 for entry in self._entries.values() if not _expired(entry, now))

    def get(self, key: bytes) -> bytes | None:
        with self._lock:
            entry = self._live(key, self._clock())
            return None if entry is None else entry.value

    def set(self, key: bytes, value: bytes, ttl_ms: int) -> None:
        with self._lock:
            self._put(key, value, ttl_ms, self._clock())

    def delete(self, key: bytes) -> bool:
        with self._lock:
            entry = self._entries.pop(key, None)
            return entry is not None and not _expired(entry, self._clock())

    def incr(self, key: bytes, delta: int, ttl_ms: int) -> int:
        with self._lock:
            now = self._clock()
            entry = self._live(key, now)
            if entry is None:
                self._put(key, str(delta).encode(), ttl_ms, now)
                return delta
            try:
                total = int(entry.value.decode("ascii")) + delta
            except (UnicodeDecodeError, ValueError):
                raise StoreError(key, f"cannot increment {entry.value[:40]!r}: not a decimal integer") from None
            entry.value = str(total).encode()
            return total

    def compare_and_set(self, key: bytes, expected: bytes | None, value: bytes, ttl_ms: int) -> bool:
        with self._lock:
            now = self._clock()
            entry = self._live(key, now)
            if (None if entry is None else entry.value) != expected:
                return False
            self._put(key, value, ttl_ms, now)
            return True

    def _live(self, key: bytes, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and _expired(entry, now):
            del self._entries[key]
            return None
        return entry

    def _put(self, key: bytes, value: bytes, ttl_ms: int, now: float) -> None:
        if ttl_ms < 0:
            raise StoreError(key, f"ttl_ms must be 0 (no expiry) or positive, got {ttl_ms}")
        self._entries.pop(key, None)  # re-inserting moves the key to the young end of the eviction order
        if len(self._entries) >= self._max_keys:
            self._make_room(now)
        self._entries[key] = _Entry(value, now + ttl_ms / 1000 if ttl_ms else None)

    def _make_room(self, now: float) -> None:
        for key in [key for key, entry in self._entries.items() if _expired(entry, now)]:
            del self._entries[key]
        while len(self._entries) >= self._max_keys:
            del self._entries[next(iter(self._entries))]


def _expired(entry: _Entry, now: float) -> bool:
    return entry.expires_at is not None and entry.expires_at <= now


_default_store: KeyValueStore | None = None
_default_lock = threading.Lock()


def default_store() -> KeyValueStore:
    """The process-wide store: every plugin set (also after a reload) shares it."""
    global _default_store
    with _default_lock:
        if _default_store is None:
            _default_store = MemoryStore()
        return _default_store
