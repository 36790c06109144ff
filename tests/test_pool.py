"""InstancePool: bounded size, reuse, waiting for a free instance, and accounting under threads."""

from __future__ import annotations

import itertools
import threading

import pytest

from extproc.plugins.pool import InstancePool, PoolExhausted
from tests.e2e.harness import wait_until


def _counting_pool(max_size: int) -> tuple[InstancePool[int], itertools.count[int]]:
    created = itertools.count()
    return InstancePool(lambda: next(created), max_size), created


def test_reuses_the_last_released_instance() -> None:
    pool, _ = _counting_pool(4)
    first = pool.acquire(1.0)
    second = pool.acquire(1.0)
    pool.release(first)
    pool.release(second)
    assert pool.acquire(1.0) == second
    assert pool.size == 2


def test_a_full_pool_raises_after_the_wait() -> None:
    pool, _ = _counting_pool(1)
    pool.acquire(1.0)
    with pytest.raises(PoolExhausted, match="all 1 instances busy"):
        pool.acquire(0.01)


def test_a_waiter_gets_the_released_instance() -> None:
    pool, _ = _counting_pool(1)
    held = pool.acquire(1.0)
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire(30.0)))
    waiter.start()
    # Release only once the waiter is inside the slow path, so the notify is what wakes it.
    wait_until(lambda: pool._waiters == 1, 30.0, "the waiter to block")
    pool.release(held)
    waiter.join(30.0)
    assert got == [held]


def test_a_discarded_instance_makes_room_for_a_new_one() -> None:
    pool, _ = _counting_pool(1)
    broken = pool.acquire(1.0)
    pool.discard(broken)
    assert pool.acquire(0.01) != broken
    assert pool.size == 1


def test_a_failing_factory_does_not_leak_a_slot() -> None:
    def explode() -> int:
        raise RuntimeError("instantiation failed")

    pool: InstancePool[int] = InstancePool(explode, 1)
    with pytest.raises(RuntimeError):
        pool.acquire(0.01)
    assert pool.size == 0


def test_clear_drops_idle_instances() -> None:
    pool, _ = _counting_pool(3)
    instances = [pool.acquire(1.0) for _ in range(3)]
    for instance in instances[:2]:
        pool.release(instance)
    pool.clear()
    assert pool.size == 1


def test_concurrent_callers_never_share_an_instance_or_exceed_the_limit() -> None:
    pool, created = _counting_pool(3)
    in_use: set[int] = set()
    guard = threading.Lock()
    errors: list[str] = []
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        for _ in range(2000):
            instance = pool.acquire(30.0)
            with guard:
                if instance in in_use:
                    errors.append(f"instance {instance} handed out twice")
                in_use.add(instance)
            with guard:
                in_use.discard(instance)
            pool.release(instance)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60.0)
    assert errors == []
    assert pool.size <= 3
    assert next(created) <= 3
