"""What exam management reads and writes in SQL beyond the live path: the exam list with its
bookkeeping (created, archived), session counts per exam, archiving, and the lookups a roster
import needs (who is already registered, which access codes are taken).

Kept apart from `Database` (the live path's durable layer): nothing here is on a candidate's
or a command's way. Every query is plain SQLAlchemy that runs the same on SQLite and
PostgreSQL (the status is read from the JSON state with `as_string()`, which is `json_extract`
on one and `->>` on the other).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update

from realtime.db.database import Database, _chunks, _exam_from_row
from realtime.db.models import ExamRow, SessionRow
from realtime.state.model import Exam


@dataclass(frozen=True, slots=True)
class ExamRecord:
    """An exam with what only SQL keeps about it."""

    exam: Exam
    created_at: float
    archived_at: float | None = None
    archived_by: str | None = None


def _record(row: ExamRow) -> ExamRecord:
    return ExamRecord(_exam_from_row(row), row.created_at, row.archived_at, row.archived_by)


async def exam_records(db: Database) -> list[ExamRecord]:
    """Every exam (archived ones too), oldest first."""
    async with db._read() as session:
        rows = await session.scalars(select(ExamRow).order_by(ExamRow.created_at, ExamRow.id))
        return [_record(row) for row in rows]


async def exam_record(db: Database, exam_id: str) -> ExamRecord | None:
    async with db._read() as session:
        row = await session.get(ExamRow, exam_id)
        return _record(row) if row is not None else None


# (candidate group, session status) -> number of sessions
GroupCounts = dict[tuple[str, str], int]


async def session_counts(db: Database, exam_ids: Iterable[str]) -> dict[str, GroupCounts]:
    """Sessions per exam by candidate group and status, as SQL last recorded them (the
    drainer keeps it within moments of the live state). Groups are kept so a caller can count
    only the sessions a principal sees."""
    status = SessionRow.state["status"].as_string()
    out: dict[str, GroupCounts] = {}
    wanted = sorted(set(exam_ids))
    async with db._read() as session:
        for chunk in _chunks(wanted):
            rows = await session.execute(
                select(SessionRow.exam_id, SessionRow.group, status, func.count())
                .where(SessionRow.exam_id.in_(chunk))
                .group_by(SessionRow.exam_id, SessionRow.group, status)
            )
            for exam_id, group, state, count in rows:
                out.setdefault(exam_id, {})[(group or "", state or "")] = int(count)
    return out


async def set_archived(db: Database, exam_id: str, at: float | None, by: str | None) -> bool:
    """Archive (`at` set) or restore (`at` None) an exam; False if there is no such exam."""
    async with db._write() as session:
        result: Any = await session.execute(
            update(ExamRow)
            .where(ExamRow.id == exam_id)
            .values(archived_at=at, archived_by=by)
        )
        return bool(result.rowcount)


async def registered_candidates(
    db: Database, exam_id: str, candidate_ids: Iterable[str]
) -> dict[str, str]:
    """Candidate id -> session id, for those of `candidate_ids` with a session in the exam."""
    wanted = sorted({c for c in candidate_ids if c})
    out: dict[str, str] = {}
    async with db._read() as session:
        for chunk in _chunks(wanted):
            rows = await session.execute(
                select(SessionRow.candidate_id, SessionRow.id).where(
                    SessionRow.exam_id == exam_id, SessionRow.candidate_id.in_(chunk)
                )
            )
            out.update({str(cid): str(sid) for cid, sid in rows})
    return out


async def taken_access_codes(db: Database, codes: Iterable[str]) -> set[str]:
    """Those of `codes` that some session (of any exam) already uses: codes are global."""
    wanted = sorted({c for c in codes if c})
    out: set[str] = set()
    async with db._read() as session:
        for chunk in _chunks(wanted):
            found = await session.scalars(
                select(SessionRow.access_code).where(SessionRow.access_code.in_(chunk))
            )
            out.update(str(code) for code in found)
    return out
