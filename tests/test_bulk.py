"""Bulk changes in flight, and waiting for them (the GC policy's passes, the drainer)."""

from __future__ import annotations

import asyncio
import contextlib

from realtime.bulk import after_bulk_changes, bulk_change, busy


async def test_a_wait_ends_when_the_last_bulk_change_in_flight_ends() -> None:
    """Two commands in flight: the wait outlives the first, ends with the second."""
    with contextlib.ExitStack() as first:
        first.enter_context(bulk_change())
        with bulk_change():
            waiting = asyncio.create_task(after_bulk_changes(3600))
            await asyncio.sleep(0)
            first.close()
            await asyncio.sleep(0)
            assert busy() and not waiting.done()
        await asyncio.wait_for(waiting, 30)
    assert not busy()


async def test_a_wait_lasts_the_linger_after_the_last_bulk_change_at_most_its_patience() -> None:
    """After a bulk change ends, `busy(linger)` holds for `linger` seconds (its fan-out and
    acks follow it); a wait for it never outlasts its patience."""
    with bulk_change():
        pass
    assert busy(3600) and not busy()
    await asyncio.wait_for(after_bulk_changes(0.01, linger=3600), 30)  # its patience: 10 ms
    with bulk_change():
        await asyncio.wait_for(after_bulk_changes(0.01), 30)
