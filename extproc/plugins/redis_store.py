"""The Redis backend of the key-value host functions: one state for every worker and replica.

Each operation is one Redis round trip: plain commands where Redis has them (GET, SET PX, DEL), and a
Lua script, which Redis runs atomically, for increment-with-TTL-on-create and compare-and-set. EVAL is
sent with the script text every time rather than EVALSHA: Redis caches the compiled script by its hash
either way, and EVAL never needs the second round trip EVALSHA does after a Redis restart.

A Redis that is down or slow must not hold requests: every command has `timeout_ms` (connect and reply),
redis-py's retries are off, a command starts only if the plugin call has time for it (host.time_left),
and after a failure commands fail at once for RETRY_AFTER_S before the next one tries Redis again. A
failure raises StoreUnavailable; the calling plugin's `state_failure` policy decides what it sees.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final, TypeVar, cast

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError
from redis.retry import Retry

from extproc import metrics
from extproc.config import StateConfig
from extproc.plugins.host import time_left
from extproc.plugins.store import StoreError, StoreUnavailable
from extproc.redaction import redact_url

log = logging.getLogger("extproc.state")

BACKEND: Final = "redis"
# While Redis is failing, one command per this period tries it; the others fail without waiting.
RETRY_AFTER_S: Final = 0.5

# KEYS[1] key; ARGV delta, ttl_ms. The TTL is set only by the increment that creates the key (a fixed window).
_INCR: Final = """
local created = redis.call('EXISTS', KEYS[1]) == 0
local n = redis.call('INCRBY', KEYS[1], ARGV[1])
if created and ARGV[2] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
"""
# KEYS[1] key; ARGV expect_absent ('1' or '0'), expected, value, ttl_ms. Returns 1 when swapped.
_CAS: Final = """
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current then return 0 end
elseif current ~= ARGV[2] then
  return 0
end
if ARGV[4] == '0' then redis.call('SET', KEYS[1], ARGV[3]) else redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4]) end
return 1
"""
_NOT_AN_INTEGER: Final = "not an integer"

_T = TypeVar("_T")


class RedisStore:
    """A `KeyValueStore` in Redis. Thread-safe: redis-py's pool gives each command its own connection."""

    remote = True

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str,
        timeout_ms: int,
        max_connections: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        timeout = timeout_ms / 1000
        # Every message and log line of the store names it by this: the URL may carry the password.
        self.url = redact_url(url)
        self._prefix = key_prefix.encode()
        # Connect plus one reply: the longest a command can take.
        self._budget_s = 2 * timeout
        self._clock = clock
        # A full pool raises at once instead of waiting: with one connection per plugin thread it never fills.
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            max_connections=max_connections,
        )
        self._lock = threading.Lock()
        self._retry_at = 0.0
        self._down: str | None = None  # why Redis is considered down; None while it answers
        metrics.state_backend_up(BACKEND, True)

    def get(self, key: bytes) -> bytes | None:
        # redis-py types replies as bytes or str; without decode_responses they are bytes.
        return cast("bytes | None", self._run(key, lambda k: self._client.get(k)))

    def set(self, key: bytes, value: bytes, ttl_ms: int) -> None:
        _check_ttl(key, ttl_ms)
        self._run(key, lambda k: self._client.set(k, value, px=ttl_ms or None))

    def delete(self, key: bytes) -> bool:
        deleted: int = self._run(key, lambda k: self._client.delete(k))
        return deleted > 0

    def incr(self, key: bytes, delta: int, ttl_ms: int) -> int:
        _check_ttl(key, ttl_ms)
        total: int = self._run(key, lambda k: self._client.eval(_INCR, 1, k, delta, ttl_ms))
        return total

    def compare_and_set(self, key: bytes, expected: bytes | None, value: bytes, ttl_ms: int) -> bool:
        _check_ttl(key, ttl_ms)
        absent = b"1" if expected is None else b"0"
        swapped: int = self._run(key, lambda k: self._client.eval(_CAS, 1, k, absent, expected or b"", value, ttl_ms))
        return swapped == 1

    def close(self) -> None:
        self._client.close()

    def _run(self, key: bytes, command: Callable[[bytes], _T]) -> _T:
        if self._down is not None and self._clock() < self._retry_at:
            raise StoreUnavailable(key, f"Redis at {self.url} is unavailable ({self._down})")
        left = time_left()
        if left < self._budget_s:
            raise StoreUnavailable(
                key,
                f"{max(left, 0) * 1000:.0f} ms of the plugin's timeout left, a Redis command may take "
                f"{self._budget_s * 1000:.0f} ms",
            )
        try:
            result = command(self._prefix + key)
        except ResponseError as exc:
            if _NOT_AN_INTEGER in str(exc):
                raise StoreError(key, "cannot increment: the value is not a decimal integer") from None
            self._failed(exc)
            raise StoreUnavailable(key, f"Redis at {self.url}: {exc}") from None
        except RedisError as exc:
            self._failed(exc)
            raise StoreUnavailable(key, f"Redis at {self.url}: {exc}") from None
        if self._down is not None:
            self._recovered()
        return result

    def _failed(self, exc: RedisError) -> None:
        with self._lock:
            self._retry_at = self._clock() + RETRY_AFTER_S
            if self._down is not None:
                return
            self._down = f"{type(exc).__name__}: {exc}"
        metrics.state_backend_up(BACKEND, False)
        log.warning(
            "state backend Redis at %s failed (%s); plugins apply their state_failure policy until it answers again",
            self.url,
            self._down,
        )

    def _recovered(self) -> None:
        with self._lock:
            if self._down is None:
                return
            self._down = None
        metrics.state_backend_up(BACKEND, True)
        log.warning("state backend Redis at %s answers again", self.url)


def _check_ttl(key: bytes, ttl_ms: int) -> None:
    if ttl_ms < 0:
        raise StoreError(key, f"ttl_ms must be 0 (no expiry) or positive, got {ttl_ms}")


_shared: dict[tuple[StateConfig, int], RedisStore] = {}
_shared_lock = threading.Lock()


def shared_store(state: StateConfig, max_connections: int) -> RedisStore:
    """The process's store for these settings: a reload that keeps them keeps the connection pool."""
    if state.url is None:
        raise ValueError("the redis state backend needs a url")
    with _shared_lock:
        store = _shared.get((state, max_connections))
        if store is None:
            # Settings changed: the old store stays usable by streams of the old plugin set, and its
            # connections close when the last of them lets go of it.
            _shared.clear()
            store = _shared[(state, max_connections)] = RedisStore(
                state.url, key_prefix=state.key_prefix, timeout_ms=state.timeout_ms, max_connections=max_connections
            )
        return store
