"""Group commit: changes that arrive together share one store call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ClusterError

from realtime.batching import CommitBatcher
from realtime.state.memory import MemoryStore
from realtime.state.model import Event, new_session
from realtime.state.store import Commit, CommitResult, CommitsFailed

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


# -- commits refused whole while their exam's slot moves ----------------------------------------

OTHER = "e2"


class MovingStore(MemoryStore):
    """The memory store, refusing whole (before anything of them ran, as a Redis Cluster does
    while a slot moves) the commits of the exams in `moving`, and applying the others' of the
    same call, as `RedisStore.commit` reports it."""

    def __init__(self, refusal: BaseException | None = None) -> None:
        super().__init__()
        self.moving: set[str] = set()
        self.refusal = refusal or ClusterError("TTL exhausted.")
        self.resendable = True
        self.sent: list[list[str]] = []  # session ids of each call, in order
        self.refused = asyncio.Event()

    async def commit(self, commits: list[Commit]) -> list[CommitResult]:
        self.sent.append([c.session_id for c in commits])
        going = [c for c in commits if c.exam_id not in self.moving]
        applied = iter(await super().commit(going))
        results: list[CommitResult | None] = [
            None if c.exam_id in self.moving else next(applied) for c in commits]
        stopped = {c.exam_id for c in commits} & self.moving
        if not stopped:
            return [r for r in results if r is not None]
        self.refused.set()
        raise CommitsFailed(results, dict.fromkeys(stopped, self.refusal),
                            stopped if self.resendable else ())


@pytest.fixture
async def moving() -> MovingStore:
    store = MovingStore()
    await store.add_sessions([new_session(id=f"s{i}", exam_id=exam)
                              for exam in (EXAM, OTHER) for i in range(4)])
    return store


def _guarded(exam: str, sid: str, position: int) -> Commit:
    event = Event(exam_id=exam, session_id=sid, kind="progress", actor="a", at=1.0)
    return Commit(exam, sid, None, {"position": position}, [event], guard={"conn_id": ""})


async def _until(check: Any) -> None:
    """Let the loop run until `check()` holds (bounded: a test fails rather than hang)."""
    for _ in range(100_000):
        if check():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("never happened")


async def test_a_refused_commit_goes_again_in_order_while_other_exams_go_on(
    moving: MovingStore,
) -> None:
    """An exam's commits refused whole (its slot is moving) wait and go again, those of it
    that came since queue behind them; the other exam's commits, in the same store call and
    later ones, are answered meanwhile. Once the slot settles every one is applied once, in
    the order they came."""
    moving.moving.add(EXAM)
    batcher = CommitBatcher(moving, retry_budget=60)
    first = asyncio.ensure_future(batcher.commit([_guarded(EXAM, "s0", 1)]))
    beside = asyncio.ensure_future(batcher.commit([_guarded(OTHER, "s0", 1)]))
    [applied] = await beside  # same call as `first`: answered though `first` was refused
    assert applied.ok and moving.sent[0] == ["s0", "s0"]
    await moving.refused.wait()
    await _until(lambda: batcher.awaiting_retry == 1)
    second = asyncio.ensure_future(batcher.commit([_guarded(EXAM, "s1", 2)]))
    later = await batcher.commit([_guarded(OTHER, "s1", 2)])  # not stalled by EXAM's slot
    assert later[0].ok
    await _until(lambda: batcher.retries >= 1)
    assert not first.done() and not second.done()
    assert batcher.awaiting_retry == 2
    moving.moving.clear()  # the slot settled
    [one], [two] = await asyncio.gather(first, second)
    assert one.ok and two.ok and one.events[0].seq < two.events[0].seq
    events = await moving.events_since(EXAM, 0) or []
    assert [(e.session_id, e.seq) for e in events] == [("s0", 1), ("s1", 2)]
    assert (batcher.awaiting_retry, batcher.retries_given_up) == (0, 0)
    [session] = await moving.get_sessions(EXAM, ["s1"])
    assert session is not None and session["position"] == 2


async def test_a_refusal_that_outlasts_the_budget_fails_as_before(moving: MovingStore) -> None:
    moving.moving.add(EXAM)
    batcher = CommitBatcher(moving, retry_budget=0.2)
    with pytest.raises(ClusterError, match="TTL exhausted"):
        await batcher.commit([_guarded(EXAM, "s0", 1)])
    assert batcher.retries >= 1 and batcher.retries_given_up == 1
    assert batcher.awaiting_retry == 0
    assert await moving.events_since(EXAM, 0) == []
    moving.moving.clear()
    [result] = await batcher.commit([_guarded(EXAM, "s0", 1)])  # as before: resent, applied
    assert result.ok
    await batcher.close()


async def test_a_failure_of_unknown_outcome_is_not_sent_again(moving: MovingStore) -> None:
    """Only a refusal that guarantees nothing ran is sent again: not a connection lost after
    the script may have run."""
    moving.moving.add(EXAM)
    moving.refusal, moving.resendable = ConnectionError("lost after sending"), False
    batcher = CommitBatcher(moving, retry_budget=60)
    with pytest.raises(ConnectionError):
        await batcher.commit([_guarded(EXAM, "s0", 1)])
    assert len(moving.sent) == 1 and batcher.retries == 0


async def test_no_budget_no_retry(moving: MovingStore) -> None:
    moving.moving.add(EXAM)
    batcher = CommitBatcher(moving, retry_budget=0)
    with pytest.raises(ClusterError):
        await batcher.commit([_guarded(EXAM, "s0", 1)])
    assert len(moving.sent) == 1 and batcher.retries == 0


async def test_commits_of_two_exams_in_one_call_are_answered_apart(moving: MovingStore) -> None:
    """One caller's commits of two exams: the moving exam's wait, the other's are applied at
    once and not again; the caller gets both results, in its order."""
    moving.moving.add(EXAM)
    batcher = CommitBatcher(moving, retry_budget=60)
    both = asyncio.ensure_future(
        batcher.commit([_guarded(EXAM, "s2", 5), _guarded(OTHER, "s2", 5)]))
    await _until(lambda: batcher.retries >= 1)
    assert [e.session_id for e in await moving.events_since(OTHER, 0) or []] == ["s2"]
    moving.moving.clear()
    [mine, other] = await both
    assert mine.ok and other.ok
    assert (mine.events[0].exam_id, other.events[0].exam_id) == (EXAM, OTHER)
    assert len(await moving.events_since(OTHER, 0) or []) == 1


async def test_lingering_commits_share_a_call_and_go_with_anything_that_does_not_linger(
    store: CountingStore,
) -> None:
    """Candidate traffic arriving a few milliseconds apart waits (`linger`) for more to share
    its store call; a commit that does not linger takes what waits along at once."""
    batcher = CommitBatcher(store)
    lingering = [asyncio.ensure_future(batcher.commit([_commit(f"s{i}")], linger=3600.0))
                 for i in range(3)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert store.calls == []  # still waiting for company
    [now] = await batcher.commit([_commit("s3")])
    assert now.ok and store.calls == [4]
    assert all(r.ok for [r] in await asyncio.gather(*lingering))


async def test_a_lingering_commit_goes_alone_once_its_linger_is_over(
    store: CountingStore,
) -> None:
    batcher = CommitBatcher(store)
    [result] = await asyncio.wait_for(batcher.commit([_commit("s0")], linger=0.001), 5)
    assert result.ok and store.calls == [1]


async def test_closing_sends_a_lingering_batch(store: CountingStore) -> None:
    """Nothing a caller handed over is left behind at shutdown."""
    batcher = CommitBatcher(store)
    waiting = asyncio.ensure_future(batcher.commit([_commit("s0")], linger=3600.0))
    await asyncio.sleep(0)
    await asyncio.wait_for(batcher.close(), 5)
    assert store.calls == [1]
    [result] = await waiting
    assert result.ok


class RecordingBatcher(CommitBatcher):
    """Records the linger each commit asked for."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__(store)
        self.lingers: list[float] = []

    async def commit(self, commits: list[Commit], linger: float = 0.0) -> list[CommitResult]:
        self.lingers.append(linger)
        return await super().commit(commits, linger)


@pytest.mark.parametrize("gathers", [False, True])
async def test_a_candidates_guarded_commit_lingers_only_where_calls_are_worth_gathering(
    gathers: bool,
) -> None:
    """On Redis (`commits_gather`) a progress report's guarded commit waits a little for
    company; on the memory store, whose calls cost little, it goes at once."""
    from typing import cast

    from realtime import sessions
    from realtime.db.database import Database
    from realtime.state import machine
    from realtime.state.model import Exam

    store = MemoryStore()
    if gathers:
        store.commits_gather = True  # type: ignore[attr-defined]  # as RedisStore says
    await store.put_exam(Exam(id=EXAM, title="Linger"))
    await store.add_sessions([new_session(id="s0", exam_id=EXAM)])
    batcher = RecordingBatcher(store)
    service = sessions.SessionService(store, cast(Database, None), machine.Liveness(),
                                      batcher=batcher)
    opened = await service.open(EXAM, "s0", "conn-1", "")
    view = dict(opened.session)
    outcome = await service.candidate_update(
        EXAM, "s0", lambda s: machine.report_progress(s, "conn-1", "c", 3, 2, 1.0),
        sessions.FastPath(view, {"conn_id": "conn-1"}),
    )
    assert isinstance(outcome, machine.Transition)
    assert batcher.lingers[-1] == (sessions.CANDIDATE_LINGER if gathers else 0.0)
    assert batcher.lingers[0] == 0.0  # the open does not linger
    await batcher.close()
