"""The embedded state store: one process, everything in dicts. For development and small exams."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from realtime.state.model import Event, Exam
from realtime.state.store import Commit, CommitResult, EventListener

log = logging.getLogger(__name__)


class MemoryStore:
    def __init__(self, log_size: int = 10_000) -> None:
        self._exams: dict[str, Exam] = {}
        self._sessions: dict[str, dict[str, dict[str, Any]]] = {}
        self._codes: dict[str, tuple[str, str]] = {}
        self._seq: dict[str, int] = {}
        self._logs: dict[str, deque[Event]] = {}
        self._log_size = log_size
        self._listeners: list[EventListener] = []
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()

    def add_resubscribe_listener(self, listener: Callable[[], None]) -> None:
        """Nothing to do: in one process no event can be missed."""

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    async def put_exam(self, exam: Exam) -> None:
        self._exams[exam.id] = exam
        self._sessions.setdefault(exam.id, {})
        self._seq.setdefault(exam.id, 0)

    async def get_exam(self, exam_id: str) -> Exam | None:
        return self._exams.get(exam_id)

    async def add_sessions(self, sessions: list[dict[str, Any]]) -> None:
        for session in sessions:
            exam_sessions = self._sessions.setdefault(session["exam_id"], {})
            if session["id"] in exam_sessions:
                continue
            exam_sessions[session["id"]] = dict(session)
            if session.get("access_code"):
                self._codes[session["access_code"]] = (session["exam_id"], session["id"])

    async def get_sessions(
        self, exam_id: str, session_ids: list[str]
    ) -> list[dict[str, Any] | None]:
        exam_sessions = self._sessions.get(exam_id, {})
        result: list[dict[str, Any] | None] = []
        for sid in session_ids:
            session = exam_sessions.get(sid)
            result.append(dict(session) if session is not None else None)
        return result

    async def session_by_code(self, access_code: str) -> tuple[str, str] | None:
        return self._codes.get(access_code)

    async def snapshot(self, exam_id: str) -> tuple[list[dict[str, Any]], int]:
        sessions = [dict(s) for s in self._sessions.get(exam_id, {}).values()]
        return sessions, self._seq.get(exam_id, 0)

    async def stale_holders(self, exam_id: str, seen_before: float) -> list[str]:
        return [
            sid
            for sid, s in self._sessions.get(exam_id, {}).items()
            if s["connected"] and (s["last_seen"] is None or s["last_seen"] < seen_before)
        ]

    async def events_since(self, exam_id: str, seq: int) -> list[Event] | None:
        log = self._logs.get(exam_id, deque())
        current = self._seq.get(exam_id, 0)
        if seq > current:
            return None  # a sequence this exam never reached: the client needs a snapshot
        if seq == current:
            return []
        if not log or log[0].seq > seq + 1:
            return None
        return [event for event in log if event.seq > seq]

    async def commit(self, commits: list[Commit]) -> list[CommitResult]:
        results: list[CommitResult] = []
        published: list[Event] = []
        for commit in commits:
            session = self._sessions.get(commit.exam_id, {}).get(commit.session_id)
            if session is None:
                results.append(CommitResult(ok=False, found=False))
                continue
            if commit.expected_version is not None:
                if session["version"] != commit.expected_version:
                    results.append(CommitResult(ok=False))
                    continue
                session.update(commit.changes)
                session["version"] = commit.expected_version + 1
                for event in commit.events:
                    event.changes["version"] = session["version"]
            log = self._logs.setdefault(commit.exam_id, deque(maxlen=self._log_size))
            events = []
            for event in commit.events:
                seq = self._seq.get(commit.exam_id, 0) + 1
                self._seq[commit.exam_id] = seq
                event.seq = seq
                log.append(event)
                events.append(event)
            published.extend(events)
            results.append(CommitResult(ok=True, events=events))
        for event in published:
            self._notify(event)
        return results

    def _notify(self, event: Event) -> None:
        """Listener errors are logged and never reach the caller of `commit`."""
        for listener in self._listeners:
            try:
                outcome = listener(event)
            except Exception:
                log.exception("event listener failed")
                continue
            if inspect.isawaitable(outcome):
                task = asyncio.ensure_future(outcome)
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    async def ensure_seq(self, exam_id: str, minimum: int) -> None:
        if self._seq.get(exam_id, 0) < minimum:
            self._seq[exam_id] = minimum

    async def touch(self, exam_sessions: list[tuple[str, str]], now: float) -> None:
        for exam_id, sid in exam_sessions:
            session = self._sessions.get(exam_id, {}).get(sid)
            if session is not None and session["connected"]:
                session["last_seen"] = now
