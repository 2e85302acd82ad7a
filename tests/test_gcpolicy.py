"""The garbage-collection policy: survivors are frozen, garbage is not, and everything is
unfrozen at the end."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from realtime import gcpolicy
from realtime.gcpolicy import GEN0_THRESHOLD, bulk_change, run_gc_policy


async def test_survivors_are_frozen_and_released_when_the_policy_stops(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After an interval the live objects sit in the permanent generation; stopping unfreezes."""
    frozen = asyncio.Event()
    real_freeze = gc.freeze

    def freeze() -> None:
        real_freeze()
        frozen.set()

    monkeypatch.setattr(gc, "freeze", freeze)
    before = gc.get_threshold()
    task = asyncio.create_task(run_gc_policy(freeze_interval=0.01, full_interval=3600))
    try:
        await asyncio.wait_for(frozen.wait(), 10)
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == GEN0_THRESHOLD
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gc.set_threshold(*before)
    assert gc.get_freeze_count() == 0


async def test_a_full_interval_unfreezes_and_collects_cycles() -> None:
    """Cycles that died while frozen are collected at the next full interval."""
    collected = asyncio.Event()

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            collected.set()

    before = gc.get_threshold()
    gc.callbacks.append(watch)
    task = asyncio.create_task(run_gc_policy(freeze_interval=0.01, full_interval=0.05))
    try:
        await asyncio.wait_for(collected.wait(), 10)
    finally:
        gc.callbacks.remove(watch)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gc.set_threshold(*before)
    assert gc.get_freeze_count() == 0


class _Node:
    """An object that can sit in a reference cycle and be watched with a weak reference."""

    def __init__(self) -> None:
        self.other: _Node | None = None


async def test_garbage_is_collected_before_a_freeze_not_frozen() -> None:
    """A reference cycle that died before a freeze is gone after it, not kept frozen until
    the next full collection (the handshake garbage of every reconnect)."""
    before = gc.get_threshold()
    freezes = 0
    real_freeze = gc.freeze
    frozen_twice = asyncio.Event()

    def freeze() -> None:
        nonlocal freezes
        real_freeze()
        freezes += 1
        if freezes == 2:
            frozen_twice.set()

    a, b = _Node(), _Node()
    a.other, b.other = b, a
    watch = weakref.ref(a)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gc, "freeze", freeze)
        task = asyncio.create_task(run_gc_policy(freeze_interval=0.01, full_interval=3600))
        try:
            del a, b  # garbage now, in a cycle: only a collection frees it
            await asyncio.wait_for(frozen_twice.wait(), 10)
            assert watch() is None
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            gc.set_threshold(*before)
    assert gc.get_freeze_count() == 0


async def test_a_pass_waits_for_the_bulk_changes_in_flight(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pass that falls due while a bulk change runs (a "pause all") waits until it is done,
    then runs."""
    passes = 0
    passed = asyncio.Event()
    real_collect = gc.collect

    def collect(*args: int) -> int:
        nonlocal passes
        passes += 1
        passed.set()
        return real_collect(*args)

    monkeypatch.setattr(gc, "collect", collect)
    before = gc.get_threshold()
    with bulk_change():
        task = asyncio.create_task(run_gc_policy(freeze_interval=0.0, full_interval=3600))
        try:
            await passed.wait()  # the one at start, before any traffic
            for _ in range(20):  # due at every turn of the loop: none runs while held
                await asyncio.sleep(0)
            assert passes == 1
            passed.clear()
        except BaseException:
            task.cancel()
            raise
    try:
        await asyncio.wait_for(passed.wait(), 10)
        assert passes >= 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gc.set_threshold(*before)


async def test_passes_space_out_while_candidates_open_in_numbers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pass comes every interval while candidates connect a few at a time, and every
    `OPENING_FACTOR` intervals after one in which `OPENING` handshakes or more arrived (the
    handshakes in flight at a freeze wait for the full collection)."""
    passes: list[int] = []  # sleeps done before each pass
    slept: list[float] = []
    done = asyncio.Event()

    def collect_and_freeze() -> int:
        passes.append(len(slept))
        return 0

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:  # a hall opening during the third interval
            for _ in range(gcpolicy.OPENING):
                gcpolicy.note_handshake()
        elif len(slept) == 6:
            done.set()
            await asyncio.Event().wait()  # until cancelled
        await asyncio.sleep(0)

    monkeypatch.setattr(gcpolicy, "collect_and_freeze", collect_and_freeze)
    before = gc.get_threshold()
    task = asyncio.create_task(run_gc_policy(0.25, 3600, sleep=sleep))
    try:
        await asyncio.wait_for(done.wait(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gc.set_threshold(*before)
    # one pass at the start, one after each quiet interval, none after the busy one until
    # the longer interval is over
    assert passes == [0, 1, 2, 4, 5]
    assert slept[:5] == [0.25, 0.25, 0.25, 0.25 * (gcpolicy.OPENING_FACTOR - 1), 0.25]
