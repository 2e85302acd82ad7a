"""Shutdown never hangs on a background loop, even one whose cancel was swallowed below it.

A loop that logs and retries on errors (the sweeper, the heartbeat) would go on forever if a
library under it turned its CancelledError into another exception; shutdown awaited each
cancelled loop with no bound, so such a process never exited (seen twice in benchmark runs:
the sweeper back in its `asyncio.sleep` after the cancel)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from realtime.app import stop_tasks
from realtime.hub.hub import run_sweeper


async def _swallows_first_cancel(ready: asyncio.Event) -> None:
    try:
        ready.set()
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        pass  # what a misbehaving library does: the loop goes on
    await asyncio.Event().wait()


async def test_a_task_that_swallowed_its_cancel_is_cancelled_again() -> None:
    ready = asyncio.Event()
    task = asyncio.create_task(_swallows_first_cancel(ready))
    await ready.wait()
    await stop_tasks([task], timeout=30.0)
    assert task.cancelled()


async def test_a_task_that_never_stops_is_left_behind_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            try:
                await released.wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)  # let it start waiting
    with caplog.at_level(logging.ERROR, logger="realtime.app"):
        await stop_tasks([task], timeout=0.3)
    assert not task.done()
    assert "background task stubborn did not stop" in caplog.text
    released.set()  # the test's own clean-up: leave nothing running
    await task


async def test_the_sweeper_stops_when_its_cancel_comes_back_as_another_error() -> None:
    sweeping = asyncio.Event()

    async def sweep(exam_id: str) -> int:
        sweeping.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("a client library turned the cancel into its own error") from None
        return 0

    hub: Any = SimpleNamespace(watchers={"exam-1": object()})
    sweeper = asyncio.create_task(run_sweeper(hub, 0.01, sweep))
    await sweeping.wait()
    sweeper.cancel()
    done, _ = await asyncio.wait({sweeper}, timeout=30.0)  # a bound, not a wait for timing
    assert sweeper in done and sweeper.cancelled()
