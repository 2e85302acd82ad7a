"""First opens that create or find a session, racing within one process and across two.

A session is written to SQL first and to the state store after; the open that follows an
id's lookup reads the state store. These tests pin that a racer is never handed an id the
state store does not know yet (its open would fail `not_found` as an `error`, which the page
does not take as an answer: it waits for `opened` or `refused`).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from realtime.auth.principal import Principal
from realtime.db.database import Database
from realtime.sessions import OpenRefused, SessionService
from realtime.state import machine
from realtime.state.model import Exam, ExamSettings
from realtime.state.store import StateStore

CANDIDATE = Principal(id="u1", name="Una", kind="candidate")


class PausedAdds:
    """A process's view of the shared state store in which adding sessions stops half-way:
    the caller's SQL insert is committed, the state store does not have the sessions yet."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.reached = asyncio.Event()
        self.go_on = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def add_sessions(self, sessions: list[dict[str, Any]]) -> None:
        self.reached.set()
        await self.go_on.wait()
        await self._store.add_sessions(sessions)


async def test_racing_first_opens_in_one_process_create_the_session_once(
    store: StateStore, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty first opens of one candidate: one SQL insert, the others wait for it in-process
    (not each for SQL's write lock, to fail on the unique row) and get the same session, which
    the state store already has."""
    service = SessionService(store, db, machine.Liveness())
    exam = await service.create_exam(Exam(id="e1", title="Exam"))
    inserts: list[int] = []
    insert = db.add_sessions

    async def counted(sessions: list[dict[str, Any]]) -> None:
        inserts.append(len(sessions))
        await insert(sessions)

    monkeypatch.setattr(db, "add_sessions", counted)

    async def first_open() -> tuple[str, dict[str, Any] | None]:
        sid = await service.session_for_candidate(exam.id, CANDIDATE)
        [session] = await store.get_sessions(exam.id, [sid])
        return sid, session

    results = await asyncio.gather(*(first_open() for _ in range(20)))
    assert inserts == [1]
    assert len({sid for sid, _ in results}) == 1
    assert all(session is not None for _, session in results)
    assert [s["candidate_id"] for s in await db.list_session_states(exam.id)] == ["u1"]


@pytest.mark.parametrize("how", ["login", "access_code"])
async def test_an_open_finds_a_session_another_process_is_still_creating(
    store: StateStore, db: Database, how: str
) -> None:
    """Process A has inserted the session into SQL but not yet into the state store when the
    candidate's open reaches process B: B finds the row, puts it into the state store and
    opens it; A's creation then finishes and its own open is refused `already_open`."""
    paused = PausedAdds(store)
    creator = SessionService(cast(StateStore, paused), db, machine.Liveness())
    other = SessionService(store, db, machine.Liveness())
    exam = await creator.create_exam(
        Exam(id="e1", title="Exam", settings=ExamSettings(lock_sessions=True))
    )
    if how == "login":
        creating = asyncio.create_task(creator.session_for_candidate(exam.id, CANDIDATE))
    else:
        creating = asyncio.create_task(creator.create_sessions(
            exam.id, [{"candidate_id": "u1", "access_code": "ABCD-2345"}], "staff:t"
        ))
    await paused.reached.wait()  # in SQL, not in the state store

    if how == "login":
        sid = await other.session_for_candidate(exam.id, CANDIDATE)
    else:
        found_exam, sid = await other.resolve_code("ABCD-2345")
        assert found_exam == exam.id
    opened = await other.open(exam.id, sid, "conn-b", "")
    assert opened.session["id"] == sid

    paused.go_on.set()
    created = await creating
    assert (created if isinstance(created, str) else created[0]["id"]) == sid
    with pytest.raises(OpenRefused) as refused:
        await creator.open(exam.id, sid, "conn-a", "")
    assert refused.value.reason == "already_open"
    [session] = await store.get_sessions(exam.id, [sid])
    assert session is not None and session["conn_id"] == "conn-b"
    assert [s["id"] for s in await db.list_session_states(exam.id)] == [sid]
