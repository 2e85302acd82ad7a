"""The drainer writes each exam's outbox to SQL: in order, idempotently, only then acknowledged."""

from __future__ import annotations

from typing import Any

import pytest

from realtime.db.database import Database
from realtime.drainer import Drainer
from realtime.state.model import Event, Exam, new_session
from realtime.state.store import Commit, StateStore

EXAM = "e1"


async def _exam(db: Database, store: StateStore, count: int = 2) -> None:
    exam = Exam(id=EXAM, title="Exam")
    await db.save_exam(exam)
    sessions = [new_session(id=f"s{i}", exam_id=EXAM, candidate_id=f"c{i}") for i in range(count)]
    await db.add_sessions(sessions)
    await store.add_sessions(sessions)
    await store.put_exam(exam)


def _event(sid: str, kind: str = "progress", **details: Any) -> Event:
    return Event(exam_id=EXAM, session_id=sid, kind=kind, actor="candidate:c", at=1000.5,
                 details=details, changes={"position": details.get("n", 0)})


async def _commit(store: StateStore, *events: Event) -> list[Event]:
    results = await store.commit([Commit(EXAM, e.session_id, None, {}, [e]) for e in events])
    return [e for r in results for e in r.events]


async def test_drained_history_equals_the_event_log(db: Database, store: StateStore) -> None:
    await _exam(db, store)
    committed = await _commit(store, *(_event(f"s{i % 2}", n=i) for i in range(30)))
    await store.append_audit(EXAM, [{"at": 5.0, "actor": "staff:1", "ip": "", "subject": "x",
                                     "action": "session_command", "details": {"n": 1}}])
    drainer = Drainer(store, db)
    await drainer.drain_all()

    stored = await db.exam_events(EXAM)
    assert [(e.seq, e.session_id, e.kind) for e in stored] == [
        (e.seq, e.session_id, e.kind) for e in committed
    ]
    assert drainer.written == 30 and drainer.backlog.events == 0
    assert (await store.outbox_backlog(now=2000.0)).events == 0
    state = await db.get_session_row("s1")
    assert state is not None and state["position"] == 29


async def test_a_crash_between_sql_and_acknowledgement_writes_nothing_twice(
    db: Database, store: StateStore
) -> None:
    """The entries were written but never acknowledged: the next drainer claims them again;
    (exam, seq) keys make the second write a no-op."""
    await _exam(db, store)
    await _commit(store, _event("s0", n=1), _event("s1", n=2))
    dead = Drainer(store, db, consumer="dead")
    entries = await store.outbox_claim(EXAM, "dead", 100, lease=0.001)
    assert entries
    await dead.write(entries)  # ... and the process dies before acknowledging
    await _commit(store, _event("s0", n=3))

    survivor = Drainer(store, db, consumer="survivor")
    await survivor.drain_all()

    assert [e.seq for e in await db.exam_events(EXAM)] == [1, 2, 3]
    assert survivor.written == 1  # only the new one was new
    assert (await store.outbox_backlog(now=2000.0)).events == 0


async def test_irregularities_are_written_with_their_event(
    db: Database, store: StateStore
) -> None:
    await _exam(db, store)
    [event] = await _commit(store, _event("s0", "irregularity", category="phone", note="seen"))
    await Drainer(store, db).drain_all()
    await Drainer(store, db, consumer="again").drain_all()
    rows = await db.irregularities(EXAM)
    assert [(r["session_id"], r["category"], r["note"]) for r in rows] == [
        ("s0", "phone", "seen")
    ]
    assert rows[0]["id"] == f"{EXAM}:{event.seq}"


async def test_sql_down_keeps_everything_until_it_returns(
    db: Database, store: StateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _exam(db, store)
    await _commit(store, _event("s0", n=1))
    drainer = Drainer(store, db)
    original = db.write_outbox

    async def refused(*args: Any) -> int:
        raise ConnectionRefusedError("SQL is down")

    monkeypatch.setattr(db, "write_outbox", refused)
    with pytest.raises(ConnectionRefusedError):
        await drainer.drain_exam(EXAM)
    await _commit(store, _event("s1", n=2))
    backlog = await drainer.refresh_backlog()
    assert backlog.events == 2 and backlog.oldest_at is not None

    monkeypatch.setattr(db, "write_outbox", original)
    await drainer.drain_all()
    assert [e.seq for e in await db.exam_events(EXAM)] == [1, 2]
    assert drainer.backlog.events == 0
