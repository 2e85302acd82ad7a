"""Errors of the SQL layer, placed in the project's tree so the API maps them to status codes."""

from __future__ import annotations

from realtime.errors import Conflict, NotFound, RealtimeError


class DuplicateError(Conflict):
    """Rows to insert clash with existing ones (or with each other); nothing was inserted.

    `conflicts` names each clash, e.g. "access_code 'ABC123'" or "candidate 'c1' in exam 'e1'".
    """

    def __init__(self, conflicts: list[str]) -> None:
        shown = ", ".join(conflicts[:10])
        more = f" and {len(conflicts) - 10} more" if len(conflicts) > 10 else ""
        super().__init__(f"already exists: {shown}{more}")
        self.conflicts = conflicts


class UnknownExamError(NotFound):
    """Sessions were added for an exam that is not in SQL; nothing was inserted."""


class SequenceConflictError(RealtimeError):
    """An (exam, seq) slot already holds a *different* event.

    A true duplicate (a retried write) is ignored; a different event means the state store
    reused sequence numbers (e.g. it restarted from 0), and silently dropping it would lose
    history. The store should continue from `Database.last_seq(exam_id)` instead.
    """
