"""Per-key locks: one holder per key at a time, other keys free, nothing left behind."""

from __future__ import annotations

import asyncio

from realtime.locks import KeyedLocks


async def test_one_holder_per_key_and_nothing_left_behind() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    inside = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with locks.hold("s1"):
            order.append("first in")
            inside.set()
            await release.wait()
            order.append("first out")

    async def second() -> None:
        await inside.wait()
        async with locks.hold("s1"):
            order.append("second in")

    async def other_key() -> None:
        await inside.wait()
        async with locks.hold("s2"):
            order.append("other key in")

    tasks = [asyncio.create_task(f()) for f in (first, second, other_key)]
    await tasks[2]  # another key is not held up by "s1"
    assert order == ["first in", "other key in"]
    release.set()
    await asyncio.gather(*tasks)
    assert order == ["first in", "other key in", "first out", "second in"]
    assert locks._locks == {}


async def test_a_wait_with_a_timeout_gives_up_and_leaves_nothing_behind() -> None:
    locks = KeyedLocks()
    inside, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with locks.hold("s1"):
            inside.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await inside.wait()
    assert locks.held("s1") and not locks.held("s2")
    try:
        async with locks.hold("s1", timeout=0.01):
            raise AssertionError("the lock is held")
    except TimeoutError:
        pass
    async with locks.hold("s2", timeout=0.01):  # a free key is taken at once
        pass
    release.set()
    await task
    async with locks.hold("s1", timeout=0.01):
        pass
    assert locks._locks == {} and not locks.held("s1")
