"""The state store contract, shared by the memory and Redis backends.

A store holds exams and the live state of sessions, assigns each exam's event sequence numbers,
keeps a bounded event log per exam for gap recovery, and tells every listener in every process
about each committed event. It never decides anything: `realtime.state.machine` does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from realtime.state.model import Event, Exam

EventListener = Callable[[Event], Awaitable[None] | None]


@dataclass(slots=True)
class Commit:
    """Apply `changes` to a session if its version is still `expected_version`.

    The store bumps the version, gives each event the exam's next sequence number, appends the
    events to the exam log and publishes them, all in one atomic step. `expected_version=None`
    records the events without touching the session (for refusals and irregularities).
    """

    exam_id: str
    session_id: str
    expected_version: int | None
    changes: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


@dataclass(slots=True)
class CommitResult:
    ok: bool
    events: list[Event] = field(default_factory=list)
    found: bool = True


class StateStore(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def add_listener(self, listener: EventListener) -> None:
        """Call `listener` for every committed event of any exam, from any process."""

    def add_resubscribe_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever this process's event subscription came back after a loss:
        events published meanwhile never reached it, so connections must resynchronise."""

    async def put_exam(self, exam: Exam) -> None: ...

    async def get_exam(self, exam_id: str) -> Exam | None: ...

    async def add_sessions(self, sessions: list[dict[str, Any]]) -> None:
        """Create sessions as given. Existing ids are left as they are."""

    async def get_sessions(
        self, exam_id: str, session_ids: list[str]
    ) -> list[dict[str, Any] | None]: ...

    async def session_by_code(self, access_code: str) -> tuple[str, str] | None:
        """(exam_id, session_id) for an access code."""

    async def snapshot(self, exam_id: str) -> tuple[list[dict[str, Any]], int]:
        """All sessions of an exam and the exam sequence number they include (atomically)."""

    async def stale_holders(self, exam_id: str, seen_before: float) -> list[str]:
        """Ids of sessions still marked connected whose `last_seen` is before `seen_before`
        (or unknown): candidates for the sweeper. Cheap: no session is sent back whole."""

    async def events_since(self, exam_id: str, seq: int) -> list[Event] | None:
        """Events after `seq`, or None when the log no longer reaches back that far (or `seq`
        is beyond what the exam reached, e.g. after its state was lost)."""

    async def commit(self, commits: list[Commit]) -> list[CommitResult]:
        """Apply many commits in one round trip; each one is atomic on its own."""

    async def ensure_seq(self, exam_id: str, minimum: int) -> None:
        """Make the exam's next sequence number larger than `minimum` (after a state loss,
        numbering must go on from what SQL already holds)."""

    async def touch(self, exam_sessions: list[tuple[str, str]], now: float) -> None:
        """Refresh `last_seen` of connected sessions without an event (liveness heartbeat)."""


def apply_locally(
    session: dict[str, Any], commit: Commit
) -> dict[str, Any]:
    """The session after a commit: used by stores and callers that keep a copy."""
    updated = dict(session)
    updated.update(commit.changes)
    if commit.expected_version is not None:
        updated["version"] = commit.expected_version + 1
    return updated
