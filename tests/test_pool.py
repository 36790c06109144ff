"""InstancePool on the event loop: bounded size, reuse, slots for new instances, waiting, giving back."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from extproc.plugins.pool import InstancePool, PoolExhausted


def _counting_pool(max_size: int) -> InstancePool[int]:
    created = itertools.count()
    return InstancePool(lambda: next(created), max_size)


async def _take(pool: InstancePool[int], wait: float = 1.0) -> int:
    """An instance, creating it when the pool grants a new slot (as a plugin call does)."""
    instance = await pool.acquire(wait)
    return pool.factory() if instance is None else instance


def test_a_slot_is_granted_until_the_limit_then_idle_instances_are_reused() -> None:
    async def scenario() -> None:
        pool = _counting_pool(2)
        assert await pool.acquire(1.0) is None  # a new slot: the caller creates the instance
        assert await pool.acquire(1.0) is None
        assert pool.size == 2
        pool.release(7)
        pool.release(8)
        assert await pool.acquire(1.0) == 8
        assert pool.take_idle() == 7
        assert pool.take_idle() is None

    asyncio.run(scenario())


def test_a_full_pool_raises_after_the_wait() -> None:
    async def scenario() -> None:
        pool = _counting_pool(1)
        await _take(pool)
        with pytest.raises(PoolExhausted, match=r"all 1 instances busy for 0\.010s"):
            await pool.acquire(0.01)
        assert pool.size == 1

    asyncio.run(scenario())


def test_a_waiter_gets_the_released_instance_in_arrival_order() -> None:
    async def scenario() -> None:
        pool = _counting_pool(1)
        held = await _take(pool)
        first = asyncio.create_task(pool.acquire(30.0))
        second = asyncio.create_task(pool.acquire(30.0))
        await asyncio.sleep(0)  # both are waiting now
        pool.release(held)
        assert await first == held
        assert not second.done()
        pool.discard(held)  # the first caller's instance trapped: the second gets a slot instead
        assert await second is None
        assert pool.size == 1

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_no_trace() -> None:
    async def scenario() -> None:
        pool = _counting_pool(1)
        held = await _take(pool)
        waiter = asyncio.create_task(pool.acquire(30.0))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        pool.release(held)
        assert pool.take_idle() == held  # not handed to the waiter that left

    asyncio.run(scenario())


def test_an_instance_granted_to_a_waiter_that_left_goes_back() -> None:
    async def scenario() -> None:
        pool = _counting_pool(1)
        held = await _take(pool)
        waiter = asyncio.create_task(pool.acquire(30.0))
        await asyncio.sleep(0)
        pool.release(held)  # granted, but the waiter has not resumed yet...
        waiter.cancel()  # ...and leaves before it does
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert pool.take_idle() == held
        assert pool.size == 1

    asyncio.run(scenario())


def test_a_discarded_instance_makes_room_for_a_new_one() -> None:
    async def scenario() -> None:
        pool = _counting_pool(1)
        broken = await _take(pool)
        pool.discard(broken)
        assert pool.size == 0
        assert await pool.acquire(0.01) is None

    asyncio.run(scenario())


def test_clear_drops_idle_instances() -> None:
    async def scenario() -> None:
        pool = _counting_pool(3)
        instances = [await _take(pool) for _ in range(3)]
        for instance in instances[:2]:
            pool.release(instance)
        pool.clear()
        assert (pool.size, pool.idle) == (1, 0)

    asyncio.run(scenario())


def test_concurrent_callers_never_share_an_instance_or_exceed_the_limit() -> None:
    async def scenario() -> None:
        pool = _counting_pool(3)
        in_use: set[int] = set()
        errors: list[str] = []
        rng = random.Random(7)

        async def caller() -> None:
            for _ in range(300):
                instance = await _take(pool, 30.0)
                if instance in in_use:
                    errors.append(f"instance {instance} handed out twice")
                in_use.add(instance)
                await asyncio.sleep(0)  # others run while this one holds it
                in_use.discard(instance)
                if rng.random() < 0.1:
                    pool.discard(instance)
                else:
                    pool.release(instance)
                assert pool.size <= 3

        await asyncio.gather(*(caller() for _ in range(8)))
        assert errors == []
        assert pool.size <= 3

    asyncio.run(scenario())
