"""The garbage-collection policy: survivors are frozen, and everything is unfrozen at the end."""

from __future__ import annotations

import asyncio
import gc

import pytest

from realtime.gcpolicy import GEN0_THRESHOLD, run_gc_policy


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
