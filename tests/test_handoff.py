"""Big batches of events reach the hub after the callers of their commit (a bulk command's
answer is not held up by the thousands of frames and acks its fan-out sets off); order is kept."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from realtime.auth.permissions import ALL_PERMISSIONS
from realtime.auth.principal import Principal
from realtime.batching import CommitBatcher
from realtime.db.database import Database
from realtime.identity.audit import AuditLog
from realtime.identity.audited import AuditedSessionService
from realtime.sessions import Target
from realtime.state import machine
from realtime.state.handoff import HandOff
from realtime.state.memory import MemoryStore
from realtime.state.model import Action, Event, Exam, new_session
from realtime.state.store import Commit, StateStore

EXAM = "e1"


async def test_a_small_batch_is_delivered_at_once() -> None:
    got: list[list[int]] = []
    hand_off = HandOff(got.append, big=3)
    hand_off([1, 2])
    assert got == [[1, 2]]


async def test_a_big_batch_waits_for_the_callers_woken_with_it() -> None:
    order: list[str] = []
    delivered = asyncio.Event()

    def deliver(batch: list[int]) -> None:
        order.append(f"delivered {len(batch)}")
        delivered.set()

    hand_off = HandOff(deliver, big=3)
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[None] = loop.create_future()

    async def caller() -> None:
        await answered
        order.append("caller resumed")

    task = asyncio.ensure_future(caller())
    await asyncio.sleep(0)  # the caller waits on its future
    hand_off([1, 2, 3])  # as a store does when the reply comes...
    answered.set_result(None)  # ...then the batcher wakes the caller
    await delivered.wait()
    await task
    assert order == ["caller resumed", "delivered 3"]


async def test_what_follows_a_deferred_batch_waits_behind_it() -> None:
    got: list[list[int]] = []
    last = asyncio.Event()

    def deliver(batch: list[int]) -> None:
        got.append(batch)
        if batch == [4]:
            last.set()

    hand_off = HandOff(deliver, big=3)
    hand_off([1, 2, 3])
    hand_off([4])
    assert got == [] and hand_off.pending == 2
    await last.wait()
    assert got == [[1, 2, 3], [4]] and hand_off.pending == 0


async def test_a_failing_listener_does_not_strand_the_batches_behind() -> None:
    got: list[list[int]] = []
    last = asyncio.Event()

    def deliver(batch: list[int]) -> None:
        if batch == [1, 2, 3]:
            raise RuntimeError("listener bug")
        got.append(batch)
        last.set()

    hand_off = HandOff(deliver, big=3)
    hand_off([1, 2, 3])
    hand_off([4])
    await last.wait()
    assert got == [[4]]


@pytest.mark.parametrize("sessions", [10, 300])
async def test_the_memory_store_answers_a_bulk_commit_before_its_fan_out(sessions: int) -> None:
    store = MemoryStore()
    await store.add_sessions([new_session(id=f"s{i}", exam_id=EXAM) for i in range(sessions)])
    order: list[str] = []
    seen: list[int] = []
    all_seen = asyncio.Event()

    def listener(event: Event) -> None:
        if not seen:
            order.append("fan-out")
        seen.append(event.seq)
        if len(seen) == sessions:
            all_seen.set()

    store.add_listener(listener)
    batcher = CommitBatcher(store)
    commits = [Commit(EXAM, f"s{i}", 0, {"status": "paused"},
                      [Event(exam_id=EXAM, session_id=f"s{i}", kind="pause", actor="a", at=1.0)])
               for i in range(sessions)]
    results = await batcher.commit(commits)
    order.append("answered")
    await all_seen.wait()
    assert all(r.ok for r in results)
    assert seen == list(range(1, sessions + 1))  # every event, in seq order
    # a hall-sized batch waits for its caller; a handful goes at once, as before
    assert order == (["answered", "fan-out"] if sessions >= 256 else ["fan-out", "answered"])


async def test_a_step_runs_in_line_with_the_batches() -> None:
    """`then`: a step (the Redis echo released) runs where a batch of its size would be
    delivered: behind a deferred batch, and at once when it is small and nothing waits."""
    got: list[object] = []
    done = asyncio.Event()
    hand_off: HandOff[int] = HandOff(got.append, big=3)
    hand_off.then(lambda: got.append("small step"), 1)
    assert got == ["small step"]
    hand_off([1, 2, 3])
    hand_off.then(lambda: got.append("step"), 3)
    hand_off.then(done.set, 1)  # small, but behind what waits
    assert got == ["small step"] and hand_off.pending == 3
    await done.wait()
    assert got == ["small step", [1, 2, 3], "step"] and hand_off.pending == 0


async def test_a_held_line_delivers_once_released() -> None:
    """`hold`: what is deferred waits for the release (and then for the releasing caller's
    turns, as after a commit's reply); a small batch goes at once while nothing is deferred,
    behind what is deferred otherwise; a second release is nothing; a hold nobody releases
    ends by itself."""
    got: list[list[int]] = []
    hand_off = HandOff(got.append, big=3)
    release = hand_off.hold()
    hand_off([1])
    assert got == [[1]]
    hand_off([2, 3, 4])
    hand_off([5])
    for _ in range(5):  # the turns after which an unheld line would have delivered
        await asyncio.sleep(0)
    assert got == [[1]] and hand_off.pending == 2
    done = asyncio.Event()
    hand_off.then(done.set, 1)
    release()
    release()
    assert got == [[1]]  # not in the releasing caller's turn
    await done.wait()
    assert got == [[1], [2, 3, 4], [5]] and hand_off.pending == 0

    hand_off.hold(timeout=0.01)  # never released
    done.clear()
    hand_off([6, 7, 8])
    hand_off.then(done.set, 1)
    await done.wait()
    assert got[-1] == [6, 7, 8] and hand_off.pending == 0


async def test_a_bulk_commands_answer_waits_for_its_audit_row_and_comes_before_its_hall(
    store: StateStore, tmp_path: Path
) -> None:
    """A staff command is answered once its audit row is held (on Redis one more round trip
    after the commit), and a hall-size command's fan-out still comes after that answer: the
    hall waits for the round trip (`hold_fan_out`), not the answer for the hall's frames. (On
    the store committing in chunks of 2, too: its chunks are handed out as one call of them
    all would be.)"""
    db = await Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'rt.db'}")
    try:
        await db.create_all()
        service = AuditedSessionService(store, db, machine.Liveness(15, 60))
        service.audit = AuditLog(db)
        await store.put_exam(Exam(id=EXAM, title="Exam"))
        await store.add_sessions([new_session(id=f"s{i}", exam_id=EXAM, candidate_id=f"c{i}")
                                  for i in range(300)])
        order: list[str] = []
        fanned_out = asyncio.Event()
        append = store.append_audit

        async def noted(exam_id: str, rows: list[dict[str, object]]) -> None:
            await append(exam_id, rows)
            order.append("audit row held")

        store.append_audit = noted  # type: ignore[method-assign]

        def fan_out(*_: object) -> None:
            if not fanned_out.is_set():
                fanned_out.set()
                order.append("fan-out")

        store.add_commit_listener(fan_out)  # Redis: the hand-off's (no echo: not served)
        store.add_listener(fan_out)  # the memory store's hand-off
        staff = Principal(id="p", name="p", kind="staff", permissions=ALL_PERMISSIONS)
        result = await service.command(EXAM, Action.NOTICE, Target(all=True), staff,
                                       {"text": "hello"})
        order.append("answered")
        assert len(result.applied) == 300
        await asyncio.wait_for(fanned_out.wait(), 10)
        assert order == ["audit row held", "answered", "fan-out"]
    finally:
        await db.close()
