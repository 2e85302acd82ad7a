"""The durable SQL layer, on SQLite and on PostgreSQL.

PostgreSQL is required, not optional: CI provides it, and a silently skipped backend would let
dialect bugs through. Each run of this module creates its own throwaway database and drops it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from realtime.db.database import Database, normalize_url
from realtime.db.errors import DuplicateError, SequenceConflictError, UnknownExamError
from realtime.db.history import HistoryFilter
from realtime.db.models import Base
from realtime.state.model import Event, Exam, ExamSettings, new_session


def _exam(exam_id: str = "e1", **kw: Any) -> Exam:
    return Exam(id=exam_id, title=f"Exam {exam_id}", **kw)


def _session(n: int, exam_id: str = "e1", **kw: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "id": f"{exam_id}-s{n}",
        "exam_id": exam_id,
        "candidate_id": f"c{n}",
        "candidate_name": f"Candidate {n}",
        "group": "A" if n % 2 else "B",
        "access_code": f"{exam_id.upper()}-CODE{n}",
    }
    fields.update(kw)
    return new_session(**fields)


def _event(seq: int, session_id: str = "e1-s1", exam_id: str = "e1", **kw: Any) -> Event:
    fields: dict[str, Any] = {"kind": "progress", "actor": "candidate", "at": 1000.0 + seq}
    fields.update(kw)
    return Event(exam_id=exam_id, session_id=session_id, seq=seq, **fields)


async def _with_sessions(db: Database, n: int = 3) -> None:
    await db.save_exam(_exam())
    await db.add_sessions([_session(i) for i in range(1, n + 1)])


# -- connecting ------------------------------------------------------------------------------


def test_urls_get_an_async_driver() -> None:
    assert normalize_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    assert normalize_url("sqlite+aiosqlite:///:memory:").drivername == "sqlite+aiosqlite"
    assert normalize_url("postgresql://u@h/d").drivername == "postgresql+asyncpg"
    assert normalize_url("postgres://u@h/d").drivername == "postgresql+asyncpg"
    with pytest.raises(ValueError, match="unsupported"):
        normalize_url("mysql://u:secret@h/d")


async def test_in_memory_database_serialises_concurrent_use() -> None:
    db = await Database.connect("sqlite+aiosqlite:///:memory:")
    try:
        await db.create_all()
        await asyncio.gather(*(db.save_exam(_exam(f"e{i}")) for i in range(20)))
        assert len(await db.list_exams()) == 20
    finally:
        await db.close()


async def test_plain_sqlite_url_uses_wal(tmp_path: Path) -> None:
    db = await Database.connect(f"sqlite:///{tmp_path / 'plain.db'}")
    try:
        async with db.engine.connect() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
            timeout = (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar()
        assert mode == "wal"
        assert timeout == 5000
    finally:
        await db.close()


# -- exams -----------------------------------------------------------------------------------


async def test_exam_round_trip(db: Database) -> None:
    exam = _exam(
        groups=["A", "B"],
        starts_at=1_700_000_000.25,
        ends_at=1_700_003_600.5,
        duration_minutes=90,
        settings=ExamSettings(requires_authorization=True, lab_networks=["10.0.0.0/8"]),
    )
    await db.save_exam(exam)
    assert await db.get_exam("e1") == exam
    assert await db.get_exam("nope") is None

    exam.title = "Renamed"
    exam.settings.lock_sessions = True
    await db.save_exam(exam)  # upsert
    await db.save_exam(_exam("e2"))
    assert await db.get_exam("e1") == exam
    assert [e.id for e in await db.list_exams()] == ["e1", "e2"]


# -- sessions --------------------------------------------------------------------------------


async def test_sessions_insert_and_lookup(db: Database) -> None:
    await db.save_exam(_exam())
    await db.save_exam(_exam("e2"))
    secret = _session(1, resume_hash="h", conn_id="conn")
    await db.add_sessions([secret, _session(2), _session(1, "e2")])

    state = await db.get_session_row("e1-s1")
    assert state is not None
    assert state["candidate_name"] == "Candidate 1"
    # The internal state keeps the holder, so a lost state store can be rebuilt from it.
    assert (state["resume_hash"], state["conn_id"]) == ("h", "conn")
    assert await db.get_session_row("missing") is None
    assert [s["id"] for s in await db.list_session_states("e1")] == ["e1-s1", "e1-s2"]
    found = await db.find_session_by_code("E2-CODE1")
    assert found is not None and found["id"] == "e2-s1"
    assert await db.find_session_by_code("nope") is None
    assert await db.find_session_by_code("") is None


async def test_duplicate_sessions_insert_nothing(db: Database) -> None:
    await _with_sessions(db, 2)

    cases = [
        [_session(3), _session(9, access_code="E1-CODE1")],  # code taken
        [_session(3), _session(9, candidate_id="c2")],  # candidate already has a session
        [_session(3), _session(1, access_code="fresh", candidate_id="c-new")],  # id taken
        [_session(3), _session(4, access_code="E1-CODE3")],  # code twice in the batch
    ]
    for batch in cases:
        with pytest.raises(DuplicateError) as info:
            await db.add_sessions(batch)
        assert info.value.conflicts, batch
        assert await db.get_session_row("e1-s3") is None, "a refused batch inserted rows"
    assert len(await db.list_session_states("e1")) == 2

    with pytest.raises(UnknownExamError):
        await db.add_sessions([_session(1, "ghost")])

    # Guests without a candidate id and sessions without a code do not collide.
    await db.add_sessions(
        [_session(7, candidate_id="", access_code=""), _session(8, candidate_id="", access_code="")]
    )
    assert len(await db.list_session_states("e1")) == 4


async def test_concurrent_duplicate_sessions_one_wins(db: Database) -> None:
    await db.save_exam(_exam())
    results = await asyncio.gather(
        *(db.add_sessions([_session(i, access_code="SAME")]) for i in range(5)),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, DuplicateError) for r in results if r is not None)


async def test_race_past_the_duplicate_check_is_still_a_duplicate_error(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL both inserts pass the pre-check; the loser's IntegrityError is reported
    as a DuplicateError too. (On SQLite the writers take turns: the second one's pre-check
    sees the first one's row.)"""
    await db.save_exam(_exam())
    check = Database._check_new_sessions
    racing = db.dialect == "postgresql"
    checks = 0
    both_checked = asyncio.Event()

    async def check_then_wait(self: Database, *args: Any) -> None:
        nonlocal checks
        await check(self, *args)
        checks += 1
        if checks == 2:
            both_checked.set()
        if racing:  # neither inserts before the other has passed its check too
            await asyncio.wait_for(both_checked.wait(), 30)

    monkeypatch.setattr(Database, "_check_new_sessions", check_then_wait)
    results = await asyncio.gather(
        db.add_sessions([_session(1, access_code="SAME")]),
        db.add_sessions([_session(2, access_code="SAME")]),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["DuplicateError", "NoneType"]
    if racing:  # the loser passed the pre-check: its insert failed, reported as a duplicate
        [lost] = [r for r in results if r is not None]
        assert isinstance(lost.__cause__, IntegrityError), repr(lost.__cause__)


# -- events ----------------------------------------------------------------------------------


async def test_events_history_order_and_state_merge(db: Database) -> None:
    await _with_sessions(db)
    events = [
        _event(3, changes={"status": "paused", "version": 3}, before="active", after="paused"),
        _event(1, kind="opened", changes={"status": "active", "connected": True, "version": 1}),
        _event(2, session_id="e1-s2", changes={"position": 4}),
        _event(4, changes={"position": 7, "version": 4}, details={"why": "x"}),
        _event(5, kind="opened", changes={"resume_hash": "secret", "conn_id": "c"}),
        _event(6, session_id="e1-s3", kind="irregularity"),  # no changes
    ]
    assert await db.add_events(events) == 6

    history = await db.history("e1-s1")
    assert [e.seq for e in history] == [1, 3, 4, 5]
    assert history[1].before == "active" and history[1].after == "paused"
    assert history[2].details == {"why": "x"}
    assert history[3].changes == {}  # private fields are not kept in history either
    assert all(e.id for e in history)

    state = await db.get_session_row("e1-s1")
    assert state is not None
    # seq order, not list order: status from seq 3 wins over seq 1
    assert (state["status"], state["connected"], state["position"]) == ("paused", True, 7)
    assert state["version"] == 4
    assert state["resume_hash"] == "secret"  # internal state only; history above has none
    s2 = await db.get_session_row("e1-s2")
    assert s2 is not None and s2["position"] == 4

    assert [e.seq for e in await db.exam_events("e1", after_seq=2, limit=2)] == [3, 4]
    assert [e.seq for e in await db.history("e1-s1", limit=2)] == [4, 5]  # the latest two
    assert await db.last_seq("e1") == 6
    assert await db.last_seq("none") == 0

    with pytest.raises(ValueError, match="sequence"):
        await db.add_events([_event(0)])


async def test_history_pages_ranges_and_hidden_kinds(db: Database) -> None:
    """Keyset pages forward and backward, an [since, until) range and excluded kinds, on
    SQLite and PostgreSQL; staff names and the session directory for reports."""
    await _with_sessions(db)
    kinds = ["opened", "progress", "delivered", "pause", "progress", "resume", "notice"]
    await db.add_events([_event(i + 1, kind=k) for i, k in enumerate(kinds)]
                        + [_event(8, session_id="e1-s2", kind="opened")])
    page, more = await db.session_history_page("e1-s1", HistoryFilter(limit=3))
    assert [e.seq for e in page] == [1, 2, 3] and more
    page, more = await db.session_history_page("e1-s1", HistoryFilter(after_seq=3, limit=4))
    assert [e.seq for e in page] == [4, 5, 6, 7] and not more
    page, more = await db.session_history_page("e1-s1", HistoryFilter(before_seq=7, limit=2))
    assert [e.seq for e in page] == [5, 6] and more
    hidden = HistoryFilter(exclude=frozenset({"progress", "delivered"}))
    page, _ = await db.session_history_page("e1-s1", hidden)
    assert [e.kind for e in page] == ["opened", "pause", "resume", "notice"]
    ranged = HistoryFilter(since=1002.0, until=1006.0)  # at = 1000 + seq
    page, _ = await db.session_history_page("e1-s1", ranged)
    assert [e.seq for e in page] == [2, 3, 4, 5]
    page, more = await db.exam_history_page("e1", HistoryFilter(after_seq=6))
    assert [(e.seq, e.session_id) for e in page] == [(7, "e1-s1"), (8, "e1-s2")] and not more
    directory = await db.session_directory("e1")
    assert set(directory) == {"e1-s1", "e1-s2", "e1-s3"}
    assert await db.staff_names(["nobody"]) == {}


async def test_duplicate_events_are_ignored(db: Database) -> None:
    await _with_sessions(db)
    first = [_event(1, changes={"position": 1}), _event(2, changes={"position": 2})]
    assert await db.add_events(first) == 2
    assert await db.add_events([_event(3, changes={"position": 3})]) == 1

    # A retried batch (with one new event) writes only the new one and re-applies nothing.
    retry = [*first, _event(4, changes={"answered": 5})]
    assert await db.add_events(retry) == 1
    assert [e.seq for e in await db.history("e1-s1")] == [1, 2, 3, 4]
    state = await db.get_session_row("e1-s1")
    assert state is not None and (state["position"], state["answered"]) == (3, 5)

    # A different event in a taken slot is a reused sequence number: refuse the whole batch.
    with pytest.raises(SequenceConflictError):
        await db.add_events([_event(5), _event(2, session_id="e1-s2", kind="opened")])
    assert await db.last_seq("e1") == 4


def _audit(
    at: float, subject: str = "x", uid: str | None = None, **details: Any
) -> dict[str, Any]:
    row = {"at": at, "actor": "staff:1", "ip": "", "action": "session_command",
           "subject": subject, "details": details}
    if uid is not None:  # a staff command's row (one appended by an older version has none)
        row["uid"] = uid
    return row


async def _audit_rows(db: Database) -> list[tuple[float, str, Any]]:
    from realtime.identity.models import AuditRow

    async with db.engine.connect() as conn:
        found = await conn.execute(
            select(AuditRow.at, AuditRow.subject, AuditRow.details).order_by(AuditRow.id)
        )
        return [(at, subject, details) for at, subject, details in found]


async def test_a_drained_batch_is_a_fixed_few_statements(db: Database) -> None:
    """A drained batch's SQL is one statement per table it writes, plus the read of the
    sessions' stored state: no read of the audit log to skip rows already stored (a write
    repeated after a crash before the acknowledgement still stores nothing twice)."""
    from sqlalchemy import event as sa_event

    await _with_sessions(db)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
        if not statement.startswith("BEGIN"):  # SQLite's own BEGIN IMMEDIATE
            statements.append(" ".join(statement.split()[:3]))

    sa_event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    seq = 0
    written: list[float] = []
    for size in (2, 20):
        events = [_event(seq + n, session_id=f"e1-s{1 + n % 3}", changes={"position": n})
                  for n in range(1, size + 1)]
        seq += size
        audit = [_audit(float(seq + n), uid=f"u{seq + n}", n=n) for n in range(size)]
        written += [row["at"] for row in audit]
        statements.clear()
        assert await db.write_outbox(events, audit) == size
        assert statements == [
            "INSERT INTO events",
            "SELECT sessions.id, sessions.exam_id,",
            "UPDATE sessions SET",
            "INSERT INTO audit_log",
        ], size
        statements.clear()
        assert await db.write_outbox(events, audit) == 0  # the repeated write
    sa_event.remove(db.engine.sync_engine, "before_cursor_execute", count)
    rows = await _audit_rows(db)
    assert [at for at, _, _ in rows] == written
    assert rows[0][2] == {"n": 0} and rows[-1][2] == {"n": 19}


async def test_audit_rows_that_share_a_key_are_all_stored_once(db: Database) -> None:
    """Rows without a uid (in an outbox since a version before it): two alike in (time,
    actor, action, subject) in one batch are both stored, and a repeat of the batch stores
    neither again."""
    rows = [_audit(7.0, n=1), _audit(7.0, n=2), _audit(8.0, subject="y")]
    await db.write_outbox([], rows)
    await db.write_outbox([], rows)
    await db.write_outbox([], [_audit(8.0, subject="y"), _audit(9.0)])
    assert [(at, subject) for at, subject, _ in await _audit_rows(db)] == [
        (7.0, "x"), (7.0, "x"), (8.0, "y"), (9.0, "x"),
    ]


async def _audit_uids(db: Database) -> list[tuple[Any, str | None]]:
    """(details["n"], uid) of every audit row, in insertion order."""
    from realtime.identity.models import AuditRow

    async with db.engine.connect() as conn:
        found = await conn.execute(select(AuditRow.details, AuditRow.uid).order_by(AuditRow.id))
        return [(details.get("n"), uid) for details, uid in found]


async def test_an_audit_row_is_stored_once_by_its_uid(db: Database) -> None:
    """A batch that repeats a row stores it once, and so does every later write of it (a
    repeat of the batch, the direct write of the fallback); rows alike in (time, actor,
    action, subject) are each stored by their own uids; rows written directly have no uid
    and never collide with one another."""
    from realtime.identity.audit import AuditLog, Ctx

    a, b = _audit(7.0, uid="u-a", n=1), _audit(7.0, uid="u-b", n=2)
    await db.write_outbox([], [a, a, b, a])
    await db.write_outbox([], [b, a])
    log = AuditLog(db, clock=lambda: 7.0)
    await log.write(a)  # what the fallback writes when the outbox may hold it too
    await log.record(Ctx("staff:1"), "session_command", "x", n=3)
    await log.record(Ctx("staff:1"), "session_command", "x", n=3)
    await db.write_outbox([], [_audit(7.0, uid="u-c", n=4), a])
    assert await _audit_uids(db) == [(1, "u-a"), (2, "u-b"), (3, None), (3, None), (4, "u-c")]


async def _waiting_for_a_lock(db: Database) -> bool:
    """A backend of this PostgreSQL database waits for a lock (another's transaction)."""
    from sqlalchemy import text

    async with db.engine.connect() as conn:
        waiting = await conn.scalar(text(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE NOT l.granted AND a.datname = current_database()"
        ))
    return bool(waiting)


async def test_two_transactions_writing_one_audit_row_store_it_once(
    db: Database, sql_url: str
) -> None:
    """Two drains overlapping, in two processes (a round that outlived its lease and the next
    holder's, which claimed the same entries), each write the batch in a transaction of its
    own. On PostgreSQL a NOT EXISTS could not see the first transaction's uncommitted row, so
    the second stored it again; the uid's unique index makes the second insert wait for the
    first transaction, then skip the row. SQLite runs one writer at a time."""
    from clients import eventually

    row = _audit(7.0, uid="u-1", n=1)
    other = await Database.connect(sql_url)  # the other process: its own engine
    try:
        async with db._write_engine.begin() as conn:  # the first drain, still uncommitted
            await db._add_audit_in(conn, [row])
            second = asyncio.create_task(other.write_outbox([], [_audit(8.0, uid="u-2", n=2),
                                                                 row]))
            if db.dialect == "postgresql":  # the second has written, or waits on the first
                await eventually(lambda: second.done() or _waiting_for_a_lock(db))
        await second
    finally:
        await other.close()
    assert await _audit_uids(db) == [(1, "u-1"), (2, "u-2")]


async def test_a_large_batch_is_written_in_slices_that_let_the_loop_run(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drainer's write of a bulk entry builds and sends its rows in slices, with turns of
    the event loop between them, so other work does not wait for the whole batch; the slices
    are one transaction: a conflict in the last one writes nothing of the earlier ones."""
    import realtime.db.database as database

    await _with_sessions(db, 4)
    total = 3 * database.WRITE_SLICE
    built = 0
    built_when_the_loop_ran: list[int] = []
    real = database.public_view

    def public_view(changes: dict[str, Any]) -> dict[str, Any]:
        nonlocal built
        if built == 0:  # ready to run from the first row built on
            asyncio.get_running_loop().call_soon(lambda: built_when_the_loop_ran.append(built))
        built += 1
        return real(changes)

    monkeypatch.setattr(database, "public_view", public_view)
    events = [_event(seq, session_id=f"e1-s{1 + seq % 4}", changes={"position": seq})
              for seq in range(1, total + 1)]
    assert await db.write_outbox(events, []) == total
    assert built == total
    assert built_when_the_loop_ran and built_when_the_loop_ran[0] < total
    state = await db.get_session_row("e1-s1")
    assert state is not None and state["position"] == total  # seq 4·k lands on e1-s1

    clash = [_event(seq, changes={"position": 0}) for seq in range(total + 1, 2 * total)]
    clash.append(_event(total, kind="opened"))  # seq taken by another event: the last slice
    with pytest.raises(SequenceConflictError):
        await db.write_outbox(clash, [])
    assert await db.last_seq("e1") == total
    state = await db.get_session_row("e1-s1")
    assert state is not None and state["position"] == total


async def test_a_large_batch_of_audit_rows_and_states_is_written_in_slices_too(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit rows of a drained batch, and the sessions' states it folds changes into, are
    read and written in slices with turns of the event loop between them, as the events:
    a full claim's rows built and serialised in one statement held the loop for milliseconds.
    Still one transaction: every row is written once, in order."""
    import realtime.db.database as database

    total = 2 * database.WRITE_SLICE + 1
    await _with_sessions(db, total)
    built = 0
    built_when_the_loop_ran: list[int] = []
    real = database._audit_values

    def audit_values(row: dict[str, Any]) -> dict[str, Any]:
        nonlocal built
        if built == 0:  # ready to run from the first row built on
            asyncio.get_running_loop().call_soon(lambda: built_when_the_loop_ran.append(built))
        built += 1
        return real(row)

    monkeypatch.setattr(database, "_audit_values", audit_values)
    reads: list[int] = []  # the loop's turns seen by each read of the sessions' states
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    real_select = database.select

    def select(*columns: Any) -> Any:
        if columns and columns[-1] is database._SESSIONS.c.state:
            reads.append(turns)
        return real_select(*columns)

    monkeypatch.setattr(database, "select", select)
    counter = asyncio.create_task(count_turns())
    try:
        rows = [_audit(float(n), uid=f"u-{n}", n=n) for n in range(1, total + 1)]
        events = [_event(seq, session_id=f"e1-s{seq}", changes={"position": seq})
                  for seq in range(1, total + 1)]
        assert await db.write_outbox(events, rows) == total
    finally:
        counter.cancel()
    assert built == total
    assert built_when_the_loop_ran and built_when_the_loop_ran[0] < total
    assert await _audit_uids(db) == [(n, f"u-{n}") for n in range(1, total + 1)]
    assert len(reads) == 3 and reads == sorted(set(reads))  # the loop ran between the reads
    for n in (1, total):
        state = await db.get_session_row(f"e1-s{n}")
        assert state is not None and state["position"] == n


async def test_concurrent_events_on_one_session_lose_no_update(db: Database) -> None:
    await _with_sessions(db, 1)
    await asyncio.gather(*(db.add_events([_event(i, changes={f"k{i}": i})]) for i in range(1, 31)))
    state = await db.get_session_row("e1-s1")
    assert state is not None
    assert all(state[f"k{i}"] == i for i in range(1, 31))


async def test_irregularities(db: Database) -> None:
    await _with_sessions(db)
    rid = await db.add_irregularity(
        exam_id="e1", session_id="e1-s2", category="phone", note="on desk", actor="p1", at=20.0
    )
    await db.add_irregularity(
        id="fixed", exam_id="e1", session_id="e1-s1", category="talking", actor="p2", at=10.0
    )
    await db.add_irregularity(exam_id="e2", session_id="x", category="c", actor="a", at=1.0)
    rows = await db.irregularities("e1")
    assert [r["id"] for r in rows] == ["fixed", rid]
    assert [r["id"] for r in await db.irregularities("e1", since=15.0)] == [rid]
    assert [r["id"] for r in await db.irregularities("e1", until=15.0)] == ["fixed"]
    assert [r["id"] for r in await db.irregularities("e1", after=(10.0, "fixed"), limit=1)] == [
        rid]
    assert rows[1] == {
        "id": rid,
        "exam_id": "e1",
        "session_id": "e1-s2",
        "category": "phone",
        "note": "on desk",
        "actor": "p1",
        "at": 20.0,
    }


async def test_history_survives_reopening(sql_url: str) -> None:
    db = await Database.connect(sql_url)
    async with db.engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
    await db.create_all()
    await _with_sessions(db, 1)
    await db.add_events([_event(1, changes={"status": "active"}), _event(2)])
    await db.close()

    reopened = await Database.connect(sql_url)
    try:
        assert [e.seq for e in await reopened.history("e1-s1")] == [1, 2]
        state = await reopened.get_session_row("e1-s1")
        assert state is not None and state["status"] == "active"
        assert await reopened.get_exam("e1") is not None
    finally:
        await reopened.close()
