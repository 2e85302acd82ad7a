"""The exam list's status and filters: plain functions of an exam's window, its archive mark
and the query string, no I/O.

The status is derived, never stored: `archived` when archived, else from the window —
`scheduled` before `starts_at`, `ended` from `ends_at` on, `running` in between (an open end
of the window counts as open: an exam without a window is `running`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from starlette.datastructures import QueryParams

from realtime.api.history_query import parse_range
from realtime.db.exam_records import ExamRecord
from realtime.errors import BadRequest

MAX_SEARCH = 200


class ExamStatus(enum.StrEnum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    ENDED = "ended"
    ARCHIVED = "archived"


def status_of(record: ExamRecord, now: float) -> ExamStatus:
    if record.archived_at is not None:
        return ExamStatus.ARCHIVED
    exam = record.exam
    if exam.starts_at is not None and now < exam.starts_at:
        return ExamStatus.SCHEDULED
    if exam.ends_at is not None and now >= exam.ends_at:
        return ExamStatus.ENDED
    return ExamStatus.RUNNING


@dataclass(frozen=True, slots=True)
class ExamListFilter:
    """`status` (any of), a window overlapping [`since`, `until`), text in the title or id.
    Archived exams are left out unless `archived` is asked for (by status or `archived=true`)."""

    statuses: frozenset[ExamStatus] = frozenset()
    since: float | None = None
    until: float | None = None
    search: str = ""
    include_archived: bool = False

    def matches(self, record: ExamRecord, now: float) -> bool:
        status = status_of(record, now)
        if status is ExamStatus.ARCHIVED and not self.include_archived:
            return False
        if self.statuses and status not in self.statuses:
            return False
        exam = record.exam
        if self.since is not None and exam.ends_at is not None and exam.ends_at <= self.since:
            return False
        if self.until is not None and exam.starts_at is not None and exam.starts_at >= self.until:
            return False
        if self.search:
            needle = self.search.casefold()
            if needle not in exam.title.casefold() and needle not in exam.id.casefold():
                return False
        return True


def parse_exam_filter(query: QueryParams) -> ExamListFilter:
    """The list's filter from the query string; 400 naming the parameter when malformed."""
    statuses: set[ExamStatus] = set()
    for part in query.getlist("status"):
        for name in filter(None, (s.strip() for s in part.split(","))):
            try:
                statuses.add(ExamStatus(name))
            except ValueError:
                known = ", ".join(s.value for s in ExamStatus)
                raise BadRequest(f"'status' must be some of {known}, not {name[:40]!r}") from None
    archived = query.get("archived", "false").lower()
    if archived not in ("true", "false", "1", "0", ""):
        raise BadRequest("'archived' must be true or false")
    search = query.get("search", "").strip()
    if len(search) > MAX_SEARCH:
        raise BadRequest(f"'search' is at most {MAX_SEARCH} characters")
    since, until = parse_range(query)
    return ExamListFilter(
        statuses=frozenset(statuses),
        since=since,
        until=until,
        search=search,
        include_archived=archived in ("true", "1") or ExamStatus.ARCHIVED in statuses,
    )
