"""The durable SQL layer: exams, the session registry, history and irregularities.

The state store is fast but may forget; this is what must not. One `Database` wraps an async
SQLAlchemy engine on SQLite (aiosqlite) or PostgreSQL (asyncpg) and exposes coarse, one-
transaction operations, so callers never hold a transaction open across their own awaits.

SQLite specifics: WAL (readers do not block the writer), a busy timeout (other processes),
foreign keys on, write transactions started with BEGIN IMMEDIATE (no lock-upgrade deadlocks)
and serialised in-process by a lock. An in-memory database has one shared connection
(StaticPool), so every operation is serialised there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar

import orjson
from sqlalchemy import (
    Table,
    bindparam,
    event,
    exists,
    func,
    insert,
    literal_column,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql import ColumnElement

from realtime.db.errors import DuplicateError, SequenceConflictError, UnknownExamError
from realtime.db.history import HistoryFilter, events_page, irregularities_page
from realtime.db.models import Base, EventRow, ExamRow, IrregularityRow, SessionRow
from realtime.state.model import Event, Exam, ExamSettings, public_view

__all__ = ["Database", "DuplicateError", "SequenceConflictError", "UnknownExamError"]

_T = TypeVar("_T")

# Rows per IN (...) list: well under the bind-parameter limits of SQLite and asyncpg (32k).
_CHUNK = 1000
_SETTINGS_FIELDS = frozenset(f.name for f in dataclasses.fields(ExamSettings))
_EVENTS: Table = EventRow.__table__  # type: ignore[assignment]
_EXAMS: Table = ExamRow.__table__  # type: ignore[assignment]
_SESSIONS: Table = SessionRow.__table__  # type: ignore[assignment]
_IRREGULARITIES: Table = IrregularityRow.__table__  # type: ignore[assignment]


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def normalize_url(url: str | URL) -> URL:
    """The URL with an async driver: plain `sqlite://` and `postgresql://` get one added."""
    parsed = make_url(url)
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgres", "postgresql") and driver in ("", "asyncpg"):
        return parsed.set(drivername="postgresql+asyncpg")
    if backend == "sqlite" and driver in ("", "aiosqlite", "pysqlite"):
        return parsed.set(drivername="sqlite+aiosqlite")
    shown = parsed.render_as_string()  # password hidden
    raise ValueError(f"unsupported database URL {shown!r}: use sqlite or postgresql (asyncpg)")


# Rows per statement when the drainer writes a batch (events, their sessions' states, audit
# rows), with a turn of the event loop between statements: a statement's rows are built and
# serialised on the loop's thread in one go, so a full claim's ~200 (at 500 a statement) held
# the loop for 4-9 ms, and a command queued behind them; at 100, under ~3 ms (a statement
# more per 100 rows: 0-20 % of the drain's own CPU per event, docs/performance.md).
WRITE_SLICE = 100


async def _next_turn() -> None:
    await asyncio.sleep(0)


Pause = Callable[[], Awaitable[None]]  # awaited between a write's slices


def _chunks(items: Sequence[_T], size: int = _CHUNK) -> Iterable[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _exam_from_row(row: ExamRow) -> Exam:
    settings = {k: v for k, v in (row.settings or {}).items() if k in _SETTINGS_FIELDS}
    return Exam(
        id=row.id,
        title=row.title,
        groups=list(row.groups or []),
        starts_at=row.starts_at,
        ends_at=row.ends_at,
        duration_minutes=row.duration_minutes,
        settings=ExamSettings(**settings),
    )


def _event_from_row(row: EventRow) -> Event:
    return Event(
        exam_id=row.exam_id,
        session_id=row.session_id,
        kind=row.kind,
        actor=row.actor,
        at=row.at,
        before=row.before,
        after=row.after,
        details=dict(row.details or {}),
        changes=dict(row.changes or {}),
        seq=row.seq,
        id=row.id,
    )


class OutboxHook(Protocol):
    """Something written in the drainer's transaction for the events it stores (webhook
    deliveries): it commits or rolls back with them, so it is never missing nor extra."""

    async def stage(self, conn: AsyncConnection, events: Sequence[Event]) -> bool:
        """Add rows for `events` (only those new to SQL) in the open transaction (Core
        statements on `conn`); True if it added any."""

    def committed(self) -> None:
        """Called after a transaction in which this hook's `stage` added rows committed."""


def event_id(event: Event) -> str:
    """The event's id, or one derived from (exam, seq) so a retried write has the same key."""
    return event.id or f"{event.exam_id}:{event.seq}"


class Database:
    """Async access to the durable tables. Create with `await Database.connect(url)`."""

    def __init__(self, engine: AsyncEngine, *, memory: bool = False) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._is_sqlite = self.dialect == "sqlite"
        # SQLite has one writer at a time; queueing here is cheaper than SQLITE_BUSY retries.
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if self._is_sqlite else None
        # One shared connection (StaticPool) must not run two transactions interleaved.
        self._read_lock = self._write_lock if memory else None
        self._write_engine = engine.execution_options(rt_write=True)
        self.outbox_hooks: list[OutboxHook] = []

    @classmethod
    async def connect(
        cls, url: str | URL, *, busy_timeout: float = 5.0, echo: bool = False
    ) -> Database:
        """Open an engine for `url` and check that the server answers."""
        parsed = normalize_url(url)
        is_sqlite = parsed.get_backend_name() == "sqlite"
        memory = is_sqlite and parsed.database in (None, "", ":memory:")
        # orjson for JSON columns: the drainer writes every event's details and changes.
        kwargs: dict[str, Any] = {
            "echo": echo,
            "json_serializer": _json_dumps,
            "json_deserializer": orjson.loads,
        }
        if memory:
            kwargs.update(poolclass=StaticPool, connect_args={"check_same_thread": False})
        elif is_sqlite:
            kwargs["connect_args"] = {"timeout": busy_timeout}
        else:
            kwargs["pool_pre_ping"] = True
        engine = create_async_engine(parsed, **kwargs)
        if engine.dialect.name == "sqlite":
            _configure_sqlite(engine, memory=memory, busy_timeout=busy_timeout)
        db = cls(engine, memory=memory)
        try:
            async with db._read() as session:
                await session.execute(select(1))
        except BaseException:
            await engine.dispose()
            raise
        return db

    async def create_all(self) -> None:
        """Create missing tables without migrations (tests of this layer; the server runs
        `realtime.db.migrate.upgrade` instead)."""
        async with self._locked(self._write_lock), self._write_engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

    async def close(self) -> None:
        await self.engine.dispose()

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- transactions ----------------------------------------------------------------------

    @staticmethod
    @contextlib.asynccontextmanager
    async def _locked(lock: asyncio.Lock | None) -> AsyncIterator[None]:
        if lock is None:
            yield
        else:
            async with lock:
                yield

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        """One write transaction: committed on success, rolled back on any exception."""
        async with (
            self._locked(self._write_lock),
            AsyncSession(self._write_engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncSession]:
        async with (
            self._locked(self._read_lock),
            AsyncSession(self.engine, expire_on_commit=False) as session,
        ):
            yield session

    def _insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """A dialect insert, for ON CONFLICT clauses (both dialects spell them alike)."""
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        if self._is_sqlite:
            return sqlite.insert(table)
        raise NotImplementedError(f"no upsert support for {self.dialect}")

    # -- exams -----------------------------------------------------------------------------

    async def save_exam(self, exam: Exam) -> None:
        """Insert or update an exam; `created_at` keeps its first value."""
        values: dict[str, Any] = {
            "id": exam.id,
            "title": exam.title,
            "groups": list(exam.groups),
            "starts_at": exam.starts_at,
            "ends_at": exam.ends_at,
            "duration_minutes": exam.duration_minutes,
            "settings": dataclasses.asdict(exam.settings),
            "created_at": time.time(),
        }
        stmt = self._insert(_EXAMS).values(values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[_EXAMS.c.id],
            set_={k: stmt.excluded[k] for k in values if k not in ("id", "created_at")},
        )
        async with self._write() as session:
            await session.execute(stmt)

    async def get_exam(self, exam_id: str) -> Exam | None:
        async with self._read() as session:
            row = await session.get(ExamRow, exam_id)
            return _exam_from_row(row) if row is not None else None

    async def list_exams(self) -> list[Exam]:
        """All exams, oldest first."""
        async with self._read() as session:
            rows = await session.scalars(select(ExamRow).order_by(ExamRow.created_at, ExamRow.id))
            return [_exam_from_row(row) for row in rows]

    # -- sessions --------------------------------------------------------------------------

    async def add_sessions(self, sessions: list[dict[str, Any]]) -> None:
        """Register new sessions, all or none.

        Raises DuplicateError if a session id, an access code or an (exam, candidate) pair is
        already taken (or repeated in `sessions`), UnknownExamError if an exam is not saved.
        """
        if not sessions:
            return
        now = time.time()
        rows = [_session_row(s, now) for s in sessions]
        try:
            async with self._write() as session:
                await self._check_new_sessions(session, rows)
                await session.execute(insert(SessionRow), rows)
        except IntegrityError as exc:
            # Lost a race with a concurrent insert: report it as the duplicate it is.
            async with self._read() as session:
                try:
                    await self._check_new_sessions(session, rows)
                except (DuplicateError, UnknownExamError) as clear:
                    raise clear from exc
            raise

    async def _check_new_sessions(self, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        conflicts: list[str] = []
        ids = _repeated(conflicts, "session", [r["id"] for r in rows])
        codes = _repeated(conflicts, "access_code", [r["access_code"] for r in rows])
        pairs = _repeated(conflicts, "candidate", [(r["exam_id"], r["candidate_id"]) for r in rows])
        exam_ids = sorted({r["exam_id"] for r in rows})
        known: set[str] = set()
        for chunk in _chunks(exam_ids):
            known.update(await session.scalars(select(ExamRow.id).where(ExamRow.id.in_(chunk))))
        if missing := [e for e in exam_ids if e not in known]:
            raise UnknownExamError(f"unknown exam(s): {', '.join(map(repr, missing))}")
        for chunk in _chunks(ids):
            found = await session.scalars(select(SessionRow.id).where(SessionRow.id.in_(chunk)))
            conflicts.extend(f"session {sid!r}" for sid in found)
        for chunk in _chunks(codes):
            found_codes = await session.scalars(
                select(SessionRow.access_code).where(SessionRow.access_code.in_(chunk))
            )
            conflicts.extend(f"access_code {code!r}" for code in found_codes)
        for chunk in _chunks(pairs):
            found_pairs = await session.execute(
                select(SessionRow.exam_id, SessionRow.candidate_id).where(
                    tuple_(SessionRow.exam_id, SessionRow.candidate_id).in_(chunk)
                )
            )
            conflicts.extend(f"candidate {cand!r} in exam {exam!r}" for exam, cand in found_pairs)
        if conflicts:
            raise DuplicateError(conflicts)

    async def get_session_row(self, session_id: str) -> dict[str, Any] | None:
        """The last stored public state of a session."""
        async with self._read() as session:
            row = await session.get(SessionRow, session_id)
            return dict(row.state) if row is not None else None

    async def find_session(self, exam_id: str, candidate_id: str) -> dict[str, Any] | None:
        """The stored state of a candidate's session in an exam, if it has one."""
        async with self._read() as session:
            state = await session.scalar(
                select(SessionRow.state).where(
                    SessionRow.exam_id == exam_id, SessionRow.candidate_id == candidate_id
                )
            )
            return dict(state) if state is not None else None

    async def exam_ids_for_groups(self, groups: Iterable[str]) -> set[str]:
        """Exams with at least one session of a candidate in one of `groups`."""
        wanted = list(groups)
        if not wanted:
            return set()
        async with self._read() as session:
            rows = await session.scalars(
                select(SessionRow.exam_id).where(SessionRow.group.in_(wanted)).distinct()
            )
            return set(rows)

    async def list_session_states(self, exam_id: str) -> list[dict[str, Any]]:
        async with self._read() as session:
            rows = await session.scalars(
                select(SessionRow.state)
                .where(SessionRow.exam_id == exam_id)
                .order_by(SessionRow.created_at, SessionRow.id)
            )
            return [dict(state) for state in rows]

    async def find_session_by_code(self, code: str) -> dict[str, Any] | None:
        if not code:
            return None
        async with self._read() as session:
            state = await session.scalar(
                select(SessionRow.state).where(SessionRow.access_code == code)
            )
            return dict(state) if state is not None else None

    # -- history ---------------------------------------------------------------------------

    async def add_events(self, events: Sequence[Event]) -> int:
        """Append events and fold their `changes` into the sessions' stored state, atomically.

        Private fields (resume hash, connection id) are dropped from the stored `changes`, like
        from the state, because history is served to staff.

        Idempotent: an event whose (exam_id, seq) is already stored with the same id, session
        and kind is skipped (and not applied again). A *different* event in that slot raises
        SequenceConflictError and nothing is written. Returns how many events were new.
        """
        return await self.write_outbox(events, [])

    async def write_outbox(
        self,
        events: Sequence[Event],
        audit: Sequence[dict[str, Any]],
        pause: Pause = _next_turn,
    ) -> int:
        """What the drainer writes for a run of outbox entries, in ONE transaction: the events
        (as `add_events`), the irregularity reports among them, and audit rows. Safe to repeat,
        and to run in two transactions at once: events and irregularities are keyed by (exam,
        seq); an audit row by its `uid` (see `_add_audit_in`). Returns how many events were
        new. Rows go in slices of `WRITE_SLICE`, with `pause` awaited between two (a turn of
        the event loop; the drainer's also gives way to a bulk command: `realtime.bulk`)."""
        if not events and not audit:
            return 0
        # Core statements on the connection, no ORM session: the drainer's transaction runs
        # every ~50 ms under load, and the session's execution layer (and ORM bulk inserts)
        # was most of its fixed cost.
        async with self._locked(self._write_lock), self._write_engine.begin() as conn:
            fresh = await self._add_events_in(conn, events, pause) if events else []
            irregular = [ev for ev in fresh if ev.kind == "irregularity"]
            if irregular:
                await conn.execute(
                    self._insert(_IRREGULARITIES).on_conflict_do_nothing(),
                    [
                        {
                            "id": event_id(ev),
                            "exam_id": ev.exam_id,
                            "session_id": ev.session_id,
                            "category": str(ev.details.get("category", "")),
                            "note": str(ev.details.get("note", "")),
                            "actor": ev.actor,
                            "at": ev.at,
                        }
                        for ev in irregular
                    ],
                )
            if audit:
                await self._add_audit_in(conn, audit, pause)
            staged: list[OutboxHook] = []
            for hook in self.outbox_hooks if fresh else ():
                if await hook.stage(conn, fresh):
                    staged.append(hook)
        # Only the hooks that added rows: a webhook dispatcher woken by every drained batch
        # claimed (a write transaction) and looked for due deliveries (two reads) in SQL each
        # time, with no subscription at all.
        for hook in staged:
            hook.committed()
        return len(fresh)

    async def _add_audit_in(
        self, conn: AsyncConnection, rows: Sequence[dict[str, Any]], pause: Pause = _next_turn
    ) -> None:
        """Insert audit rows unless already stored: a repeat (a drainer died after its SQL
        commit but before acknowledging), two drains overlapping (a round that outlived its
        lease and the next holder's, each in its own transaction), a batch repeating a row.

        A row with a `uid` (every staff command's) is keyed by it: one INSERT ... ON CONFLICT
        (uid) DO NOTHING (the unique index `uq_audit_log_uid`), which sees rows of
        transactions in flight too (PostgreSQL makes the second insert of a uid wait for the
        first transaction, then skips it). A row without one (appended to an outbox by a
        version before that key) is known by (time, actor, action, subject), as before."""
        from realtime.identity.models import AuditRow

        table: Table = AuditRow.__table__  # type: ignore[assignment]
        keyed: dict[str, dict[str, Any]] = {}
        legacy: list[dict[str, Any]] = []
        for r in rows:
            uid = r.get("uid")
            if uid:
                keyed.setdefault(str(uid), r)  # a batch repeating a row: the first is it
            else:
                legacy.append(r)
        if keyed:
            stmt = self._insert(table).on_conflict_do_nothing(index_elements=[table.c.uid])
            for n, part in enumerate(_chunks(list(keyed.items()), WRITE_SLICE)):
                if n:
                    await pause()  # as the events: a turn of the loop between slices
                await conn.execute(stmt, [{**_audit_values(r), "uid": uid} for uid, r in part])
        if legacy:
            await self._add_unkeyed_audit_in(conn, table, legacy)

    @staticmethod
    async def _add_unkeyed_audit_in(
        conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]
    ) -> None:
        """Audit rows without a uid, known by (time, actor, action, subject)."""

        def key(r: dict[str, Any]) -> tuple[float, str, str, str]:
            return (float(r["at"]), str(r["actor"]), str(r["action"]), str(r.get("subject", "")))

        if len({key(r) for r in rows}) == len(rows):
            # The usual batch: each row inserted unless stored, in one statement (no read of
            # its own). Rows that share a key within the batch take the path below, which
            # stores them all the first time, as before.
            await conn.execute(_audit_insert_unless_stored(table), [_audit_values(r) for r in rows])
            return
        known: set[tuple[float, str, str, str]] = set()
        for chunk in _chunks(sorted({float(r["at"]) for r in rows})):
            found = await conn.execute(
                select(table.c.at, table.c.actor, table.c.action, table.c.subject).where(
                    table.c.at.in_(chunk)
                )
            )
            known.update((float(a), str(b), str(c), str(d)) for a, b, c, d in found)
        new = [_audit_values(r) for r in rows if key(r) not in known]
        if new:
            await conn.execute(insert(table), new)

    async def _add_events_in(
        self, conn: AsyncConnection, events: Sequence[Event], pause: Pause = _next_turn
    ) -> list[Event]:
        unique: dict[tuple[str, int], Event] = {}
        for ev in events:
            if ev.seq < 1:
                raise ValueError(f"event {ev.kind!r} of {ev.session_id!r} has no sequence number")
            unique.setdefault((ev.exam_id, ev.seq), ev)
        ordered = [unique[key] for key in sorted(unique)]
        stmt = (
            self._insert(_EVENTS)
            .on_conflict_do_nothing()
            .returning(_EVENTS.c.exam_id, _EVENTS.c.seq)
        )
        # In slices, with a turn of the event loop between them (same transaction: still all
        # or nothing): building and sending 5,000 rows at once held the loop for ~200 ms.
        inserted: set[tuple[str, int]] = set()
        for n, part in enumerate(_chunks(ordered, WRITE_SLICE)):
            if n:
                await pause()
            result = await conn.execute(stmt, self._event_rows(part))
            inserted.update((exam_id, seq) for exam_id, seq in result)
        skipped = [ev for ev in ordered if (ev.exam_id, ev.seq) not in inserted]
        if skipped:
            await self._check_true_duplicates(conn, skipped)
        fresh = [ev for ev in ordered if (ev.exam_id, ev.seq) in inserted]
        await self._merge_states(conn, fresh, pause)
        return fresh

    @staticmethod
    def _event_rows(events: Sequence[Event]) -> list[dict[str, Any]]:
        return [
            {
                "id": event_id(ev),
                "exam_id": ev.exam_id,
                "session_id": ev.session_id,
                "seq": ev.seq,
                "at": ev.at,
                "actor": ev.actor,
                "kind": str(ev.kind),
                "before": None if ev.before is None else str(ev.before),
                "after": None if ev.after is None else str(ev.after),
                "details": ev.details,
                "changes": public_view(ev.changes),  # history is shown to staff: no secrets
            }
            for ev in events
        ]

    async def _check_true_duplicates(self, conn: AsyncConnection, skipped: list[Event]) -> None:
        """Raise unless every skipped event is already stored as itself."""
        stored: dict[tuple[str, int], tuple[str, str, str]] = {}
        for chunk in _chunks(skipped):
            found = await conn.execute(
                select(
                    _EVENTS.c.exam_id, _EVENTS.c.seq, _EVENTS.c.id, _EVENTS.c.session_id,
                    _EVENTS.c.kind,
                ).where(
                    tuple_(_EVENTS.c.exam_id, _EVENTS.c.seq).in_(
                        [(ev.exam_id, ev.seq) for ev in chunk]
                    )
                )
            )
            for exam_id, seq, eid, sid, kind in found:
                stored[(exam_id, seq)] = (eid, sid, kind)
        for ev in skipped:
            have = stored.get((ev.exam_id, ev.seq))
            if have != (event_id(ev), ev.session_id, str(ev.kind)):
                raise SequenceConflictError(
                    f"exam {ev.exam_id!r} seq {ev.seq} already holds another event {have!r};"
                    " the state store reused sequence numbers"
                )

    async def _merge_states(
        self, conn: AsyncConnection, events: list[Event], pause: Pause = _next_turn
    ) -> None:
        """Fold event changes into SessionRow.state, in seq order, under row locks.

        Plain column reads and one executemany UPDATE (no ORM objects): this runs for every
        batch of history, on the event loop's thread, so it has to be cheap.
        """
        session_ids = sorted({ev.session_id for ev in events if ev.changes})
        current: dict[str, tuple[str, dict[str, Any]]] = {}
        for n, chunk in enumerate(_chunks(session_ids, WRITE_SLICE)):
            if n:
                await pause()  # decoding the states read is the loop's work too
            found = await conn.execute(
                select(_SESSIONS.c.id, _SESSIONS.c.exam_id, _SESSIONS.c.state)
                .where(_SESSIONS.c.id.in_(chunk))
                .order_by(_SESSIONS.c.id)
                .with_for_update()  # PostgreSQL: no lost updates between writers
            )
            for sid, exam_id, state in found:
                current[sid] = (exam_id, state)
        states: dict[str, dict[str, Any]] = {}
        for ev in events:  # already in (exam_id, seq) order
            found_row = current.get(ev.session_id)
            if found_row is None or found_row[0] != ev.exam_id or not ev.changes:
                continue
            state = states.get(ev.session_id)
            if state is None:
                state = states[ev.session_id] = dict(found_row[1] or {})
            # The state column is internal (never served): it keeps the holder's connection id
            # and resume-token hash, so a state store that lost its data can be rebuilt
            # without cutting off connected candidates.
            state.update(ev.changes)
        if not states:
            return
        now = time.time()
        stmt = (
            update(_SESSIONS)
            .where(_SESSIONS.c.id == bindparam("sid"))
            .values(state=bindparam("new_state"), updated_at=bindparam("now"))
        )
        for n, part in enumerate(_chunks(list(states.items()), WRITE_SLICE)):
            if n:
                await pause()  # as the inserts: a turn of the loop between slices
            await conn.execute(
                stmt, [{"sid": sid, "new_state": state, "now": now} for sid, state in part]
            )

    async def history(self, session_id: str, limit: int = 1000) -> list[Event]:
        """The session's latest `limit` events, oldest first."""
        async with self._read() as session:
            rows = await session.scalars(
                select(EventRow)
                .where(EventRow.session_id == session_id)
                .order_by(EventRow.seq.desc())
                .limit(limit)
            )
            return [_event_from_row(row) for row in reversed(rows.all())]

    async def session_history_page(
        self, session_id: str, flt: HistoryFilter
    ) -> tuple[list[Event], bool]:
        """One page of a session's events (see HistoryFilter), oldest first, and whether more
        lie beyond it in the page's direction."""
        return await self._history_page(EventRow.session_id == session_id, flt)

    async def exam_history_page(self, exam_id: str, flt: HistoryFilter) -> tuple[list[Event], bool]:
        """One page of all events of an exam, like `session_history_page`."""
        return await self._history_page(EventRow.exam_id == exam_id, flt)

    async def _history_page(self, where: Any, flt: HistoryFilter) -> tuple[list[Event], bool]:
        async with self._read() as session:
            rows = (await session.scalars(events_page(where, flt))).all()
        more = len(rows) > flt.limit
        page = [_event_from_row(row) for row in rows[: flt.limit]]
        if flt.backward:
            page.reverse()
        return page, more

    async def staff_names(self, user_ids: Iterable[str]) -> dict[str, str]:
        """Full names of staff users by id (ids without a user row are left out)."""
        from realtime.identity.models import UserRow

        wanted = sorted(set(user_ids))
        names: dict[str, str] = {}
        async with self._read() as session:
            for chunk in _chunks(wanted):
                found = await session.execute(
                    select(UserRow.id, UserRow.full_name).where(UserRow.id.in_(chunk))
                )
                names.update((uid, name) for uid, name in found)
        return names

    async def session_directory(self, exam_id: str) -> dict[str, tuple[str, str, str]]:
        """Every session of an exam: id -> (candidate id, candidate name, group)."""
        async with self._read() as session:
            found = await session.execute(
                select(
                    SessionRow.id, SessionRow.candidate_id, SessionRow.candidate_name,
                    SessionRow.group,
                ).where(SessionRow.exam_id == exam_id)
            )
            return {sid: (cid or "", name, group) for sid, cid, name, group in found}

    async def exam_events(self, exam_id: str, after_seq: int = 0, limit: int = 1000) -> list[Event]:
        """The exam's events with seq > after_seq, oldest first (page forward with the last)."""
        async with self._read() as session:
            rows = await session.scalars(
                select(EventRow)
                .where(EventRow.exam_id == exam_id, EventRow.seq > after_seq)
                .order_by(EventRow.seq)
                .limit(limit)
            )
            return [_event_from_row(row) for row in rows]

    async def last_seq(self, exam_id: str) -> int:
        """The highest stored seq of an exam (0 if none): where a restarted store continues."""
        async with self._read() as session:
            value = await session.scalar(
                select(func.max(EventRow.seq)).where(EventRow.exam_id == exam_id)
            )
            return int(value or 0)

    # -- irregularities --------------------------------------------------------------------

    async def add_irregularity(
        self,
        *,
        exam_id: str,
        session_id: str,
        category: str,
        actor: str,
        at: float,
        note: str = "",
        id: str | None = None,
    ) -> str:
        """Record an irregularity report; returns its id."""
        row = IrregularityRow(
            id=id or uuid.uuid4().hex,
            exam_id=exam_id,
            session_id=session_id,
            category=category,
            note=note,
            actor=actor,
            at=at,
        )
        async with self._write() as session:
            session.add(row)
        return row.id

    async def irregularities(
        self,
        exam_id: str,
        since: float | None = None,
        until: float | None = None,
        after: tuple[float, str] | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The exam's irregularities, oldest first: reported in [since, until), after the
        (at, id) key `after` (paging), at most `limit` (None: all)."""
        stmt = irregularities_page(exam_id, since, until, after, limit)
        async with self._read() as session:
            rows = await session.scalars(stmt)
            return [
                {
                    "id": row.id,
                    "exam_id": row.exam_id,
                    "session_id": row.session_id,
                    "category": row.category,
                    "note": row.note,
                    "actor": row.actor,
                    "at": row.at,
                }
                for row in rows
            ]


_AUDIT_COLUMNS = ("at", "actor", "ip", "action", "subject", "details")


@functools.cache
def _audit_insert_unless_stored(table: Table) -> Any:
    """INSERT INTO audit_log (...) SELECT :at, ... WHERE NOT EXISTS (a row with the same
    (at, actor, action, subject)): executed once per row (executemany), each row sees those
    inserted before it."""
    params = {name: bindparam(name, type_=table.c[name].type) for name in _AUDIT_COLUMNS}
    # Only `at` may pick the index: SQLite without statistics chose `ix_audit_log_subject`,
    # and a command's rows all have their exam's subject (a look-up grew with the log).
    # `col || ''` is the column's value and no index's.
    blank: ColumnElement[str] = literal_column("''")
    stored = exists().where(
        table.c.at == params["at"],
        table.c.actor.concat(blank) == params["actor"],
        table.c.action.concat(blank) == params["action"],
        table.c.subject.concat(blank) == params["subject"],
    )
    return insert(table).from_select(
        list(_AUDIT_COLUMNS), select(*params.values()).where(~stored)
    )


def _audit_values(row: dict[str, Any]) -> dict[str, Any]:
    """An audit row's column values, every column given (one executemany takes the columns of
    its first row for all of them)."""
    return {
        "at": row["at"],
        "actor": row["actor"],
        "ip": row.get("ip", ""),
        "action": row["action"],
        "subject": row.get("subject", ""),
        "details": row.get("details", {}),
    }


def _session_row(session: dict[str, Any], now: float) -> dict[str, Any]:
    if not session.get("id") or not session.get("exam_id"):
        raise ValueError("a session needs an id and an exam_id")
    return {
        "id": str(session["id"]),
        "exam_id": str(session["exam_id"]),
        "candidate_id": str(session.get("candidate_id") or "") or None,
        "candidate_name": str(session.get("candidate_name") or ""),
        "group": str(session.get("group") or ""),
        "access_code": str(session.get("access_code") or "") or None,
        "created_at": now,
        "state": dict(session),
        "updated_at": now,
    }


def _repeated(conflicts: list[str], what: str, keys: list[_T]) -> list[_T]:
    """Record keys repeated within one batch; return the distinct non-empty keys."""
    seen: set[_T] = set()
    for key in keys:
        if key is None or (isinstance(key, tuple) and None in key):
            continue
        if key in seen:
            conflicts.append(f"{what} {key!r} (twice in the batch)")
        seen.add(key)
    return list(seen)


def _configure_sqlite(engine: AsyncEngine, *, memory: bool, busy_timeout: float) -> None:
    """Pragmas on every new connection, and BEGIN emitted by us (pysqlite's is too lazy)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get("rt_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
