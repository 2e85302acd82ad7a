"""Group commit: changes that arrive together share one store call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from realtime.batching import CommitBatcher
from realtime.state.memory import MemoryStore
from realtime.state.model import Event, new_session
from realtime.state.store import Commit, CommitResult

EXAM = "e1"


class CountingStore(MemoryStore):
    """The memory store, counting commit calls and able to fail them on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.fail: Exception | None = None
        self.gate: asyncio.Event | None = None
        self.called = asyncio.Event()

    async def commit(self, commits: list[Commit]) -> list[CommitResult]:
        self.calls.append(len(commits))
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return await super().commit(commits)


def _commit(sid: str, version: int = 0, **changes: Any) -> Commit:
    event = Event(exam_id=EXAM, session_id=sid, kind="progress", actor="a", at=1.0)
    return Commit(EXAM, sid, version, changes, [event])


@pytest.fixture
async def store() -> CountingStore:
    store = CountingStore()
    await store.add_sessions([new_session(id=f"s{i}", exam_id=EXAM) for i in range(100)])
    return store


async def test_commits_of_one_loop_turn_share_one_store_call(store: CountingStore) -> None:
    batcher = CommitBatcher(store)
    results = await asyncio.gather(
        *(batcher.commit([_commit(f"s{i}", position=i)]) for i in range(100))
    )
    assert store.calls == [100]
    assert all(r.ok for [r] in results)
    assert [r.events[0].seq for [r] in results] == list(range(1, 101))


async def test_what_arrives_during_a_call_goes_in_the_next_one(store: CountingStore) -> None:
    """At most `max_in_flight` calls at once: under load batches grow, calls do not."""
    store.gate = asyncio.Event()
    batcher = CommitBatcher(store, max_in_flight=1)
    first = asyncio.ensure_future(batcher.commit([_commit("s0")]))
    await store.called.wait()
    later = [asyncio.ensure_future(batcher.commit([_commit(f"s{i}")])) for i in range(1, 40)]
    await asyncio.sleep(0)
    store.gate.set()
    await asyncio.gather(first, *later)
    assert store.calls == [1, 39]


async def test_a_failed_call_fails_only_its_own_callers(store: CountingStore) -> None:
    store.gate = asyncio.Event()
    batcher = CommitBatcher(store, max_in_flight=1)
    store.fail = ConnectionError("store down")
    doomed = [asyncio.ensure_future(batcher.commit([_commit(f"s{i}")])) for i in range(3)]
    await store.called.wait()
    store.gate.set()
    outcomes = await asyncio.gather(*doomed, return_exceptions=True)
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    store.fail = None
    [result] = await batcher.commit([_commit("s9")])
    assert result.ok


async def test_a_huge_batch_is_split_by_caller(store: CountingStore) -> None:
    batcher = CommitBatcher(store, max_batch=30)
    results = await asyncio.gather(
        *(batcher.commit([_commit(f"s{i * 20 + k}") for k in range(20)]) for i in range(4))
    )
    assert all(r.ok for batch in results for r in batch)
    assert sum(store.calls) == 80 and max(store.calls) <= 30


async def test_a_commit_reaches_the_store_in_the_next_loop_turn(store: CountingStore) -> None:
    """Each loop turn a change waits in costs its caller a whole turn of everybody else's work
    on a busy process: the store call starts in the turn after the commit, not two later."""
    store.gate = asyncio.Event()
    batcher = CommitBatcher(store)
    caller = asyncio.ensure_future(batcher.commit([_commit("s0")]))
    await asyncio.sleep(0)  # the caller runs: its commit is queued, the store call scheduled
    await asyncio.sleep(0)  # the next turn: the call is made
    assert store.calls == [1]
    store.gate.set()
    [result] = await caller
    assert result.ok
