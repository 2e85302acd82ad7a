"""The session service: reads state, asks the pure state machine, commits, records history.

Every change goes the same way: read the sessions, decide with `realtime.state.machine`, commit
the transitions against the versions that were read (compare-and-set, one round trip for a whole
bulk command), retry the ones that lost a race, then wait until the history of what was applied
is durable in SQL before answering. Nothing is acknowledged before it is in SQL.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from realtime.auth.permissions import ACTION_PERMISSION
from realtime.auth.principal import Principal
from realtime.db.database import Database
from realtime.db.history import HistoryWriter
from realtime.errors import BadRequest, Conflict, Forbidden, NotFound
from realtime.state import machine
from realtime.state.model import (
    Action,
    Event,
    EventKind,
    Exam,
    RefusalReason,
    SkipReason,
    Status,
    new_session,
    public_view,
)
from realtime.state.store import Commit, StateStore

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 20
EXAM_CACHE_SECONDS = 1.0
ACCESS_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I


def new_access_code(length: int = 8) -> str:
    return "".join(secrets.choice(ACCESS_CODE_ALPHABET) for _ in range(length))


def new_id() -> str:
    return uuid.uuid4().hex[:16]


class OpenRefused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(slots=True)
class Opened:
    session: dict[str, Any]
    resume_token: str
    superseded: bool
    relocked: bool


@dataclass(slots=True)
class Target:
    """Which sessions of an exam a command is for."""

    session_ids: list[str] | None = None
    status: list[str] | None = None
    group: str | None = None
    search: str | None = None
    all: bool = False

    def matches(self, session: dict[str, Any]) -> bool:
        if self.status and session["status"] not in self.status:
            return False
        if self.group and session["group"] != self.group:
            return False
        if self.search:
            needle = self.search.casefold()
            haystack = f"{session['candidate_name']} {session['candidate_id']} {session['id']}"
            if needle not in haystack.casefold():
                return False
        return True

    @property
    def is_filter(self) -> bool:
        return self.all or bool(self.status or self.group or self.search)


@dataclass(slots=True)
class BulkResult:
    command_id: str
    action: str
    applied: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    out_of_scope: int = 0  # sessions a filter matched but the actor may not see

    def to_dict(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "action": self.action,
            "applied": self.applied,
            "skipped": self.skipped,
            "out_of_scope": self.out_of_scope,
        }


Decide = Callable[[dict[str, Any]], machine.Outcome]


class SessionService:
    def __init__(
        self,
        store: StateStore,
        db: Database,
        history: HistoryWriter,
        liveness: machine.Liveness,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.db = db
        self.history = history
        self.liveness = liveness
        self.clock = clock
        self._exam_cache: dict[str, tuple[float, Exam]] = {}
        # Called after each command with (action, applied, skipped, seconds): metrics.
        self.on_command: Callable[[str, int, int, float], None] | None = None
        # Called after each open attempt with its outcome ("opened" or a refusal reason).
        self.on_open: Callable[[str], None] | None = None
        # Extra eligibility of logged-in candidates (user id, exam id), e.g. guest accounts
        # that may only open the exam they were reserved for.
        self.may_open: Callable[[str, str], Awaitable[bool]] | None = None

    # -- exams -------------------------------------------------------------------------------

    async def create_exam(self, exam: Exam) -> Exam:
        if await self.db.get_exam(exam.id) is not None:
            raise Conflict(f"exam {exam.id!r} already exists")
        await self.db.save_exam(exam)
        await self.store.put_exam(exam)
        self._exam_cache[exam.id] = (time.monotonic(), exam)
        return exam

    async def update_exam(self, exam: Exam) -> Exam:
        await self.db.save_exam(exam)
        await self.store.put_exam(exam)
        self._exam_cache[exam.id] = (time.monotonic(), exam)
        return exam

    async def get_exam(self, exam_id: str, fresh: bool = False) -> Exam:
        """The exam from the state store, rehydrated from SQL when the store lost it.

        Kept in-process for `EXAM_CACHE_SECONDS`, so a settings change made on another
        process applies here within that time; changes made here apply at once.
        """
        cached = self._exam_cache.get(exam_id)
        if cached is not None and not fresh and time.monotonic() - cached[0] < EXAM_CACHE_SECONDS:
            return cached[1]
        exam = await self.store.get_exam(exam_id)
        if exam is None:
            exam = await self.db.get_exam(exam_id)
            if exam is None:
                raise NotFound(f"no exam {exam_id!r}")
            await self.store.put_exam(exam)
            await self.store.ensure_seq(exam_id, await self.db.last_seq(exam_id))
            states = await self.db.list_session_states(exam_id)
            now = self.clock()
            for state in states:
                if state.get("connected"):
                    # Holders still connected to a process keep their sessions: their next
                    # heartbeat proves it; the sweeper disconnects the others.
                    state["last_seen"] = now
            await self.store.add_sessions(states)
        self._exam_cache[exam_id] = (time.monotonic(), exam)
        return exam

    async def list_exams(self) -> list[Exam]:
        return await self.db.list_exams()

    # -- sessions ----------------------------------------------------------------------------

    async def create_sessions(
        self, exam_id: str, candidates: list[dict[str, Any]], actor: str
    ) -> list[dict[str, Any]]:
        """Create sessions in advance, each with a fresh access code."""
        await self.get_exam(exam_id)
        now = self.clock()
        sessions = []
        seen: set[str] = set()
        for candidate in candidates:
            candidate_id = str(candidate["candidate_id"])
            if candidate_id in seen:
                raise BadRequest(f"candidate {candidate_id!r} is listed twice")
            seen.add(candidate_id)
            sessions.append(
                new_session(
                    id=new_id(),
                    exam_id=exam_id,
                    candidate_id=candidate_id,
                    candidate_name=str(candidate.get("name") or candidate_id),
                    group=str(candidate.get("group") or ""),
                    access_code=str(candidate.get("access_code") or new_access_code())
                    .strip()
                    .upper(),
                )
            )
        await self.db.add_sessions(sessions)
        await self.store.add_sessions(sessions)
        events = [
            Event(
                exam_id=exam_id,
                session_id=s["id"],
                kind=EventKind.CREATED,
                actor=actor,
                at=now,
                after=Status.READY.value,
                changes=public_view(s),
            )
            for s in sessions
        ]
        await self._commit_and_record(
            [Commit(exam_id, e.session_id, None, {}, [e]) for e in events]
        )
        return sessions

    async def get_session(self, exam_id: str, session_id: str) -> dict[str, Any]:
        [session] = await self.store.get_sessions(exam_id, [session_id])
        if session is None:
            await self.get_exam(exam_id, fresh=True)  # rehydrates the store if it lost the exam
            [session] = await self.store.get_sessions(exam_id, [session_id])
        if session is None:
            raise NotFound(f"no session {session_id!r} in exam {exam_id!r}")
        return session

    async def list_sessions(
        self, exam_id: str, target: Target | None = None
    ) -> list[dict[str, Any]]:
        await self.get_exam(exam_id)
        sessions, _ = await self.store.snapshot(exam_id)
        if target is not None:
            sessions = [s for s in sessions if target.matches(s)]
        sessions.sort(key=lambda s: (s["candidate_name"], s["id"]))
        return sessions

    async def session_for_candidate(self, exam_id: str, candidate: Principal) -> str:
        """The session of a logged-in candidate in an exam, created on first open.

        A candidate is eligible when the exam names no groups or shares one with them.
        """
        exam = await self.get_exam(exam_id)
        if exam.groups and not candidate.groups.intersection(exam.groups):
            raise OpenRefused(RefusalReason.NOT_ELIGIBLE, "you are not a candidate of this exam")
        if self.may_open is not None and not await self.may_open(candidate.id, exam_id):
            raise OpenRefused(RefusalReason.NOT_ELIGIBLE, "this account is not for this exam")
        for _attempt in range(2):
            found = await self.db.find_session(exam_id, candidate.id)
            if found is not None:
                return str(found["id"])
            shared = sorted(candidate.groups.intersection(exam.groups)) or sorted(candidate.groups)
            entry = {
                "candidate_id": candidate.id,
                "name": candidate.name,
                "group": shared[0] if shared else "",
            }
            try:
                [session] = await self.create_sessions(exam_id, [entry], "system")
            except Conflict:
                continue  # another connection of the same candidate created it first
            return str(session["id"])
        raise Conflict("could not create the session; try again")

    async def resolve_code(self, access_code: str) -> tuple[str, str]:
        found = await self.store.session_by_code(access_code)
        if found is None:
            row = await self.db.find_session_by_code(access_code)
            if row is None:
                raise NotFound("unknown access code")
            await self.get_exam(row["exam_id"])
            found = (row["exam_id"], row["id"])
        return found

    # -- the one way to change a session -----------------------------------------------------

    async def _commit_and_record(self, commits: list[Commit]) -> list[Event]:
        results = await self.store.commit(commits)
        events = [event for result in results if result.ok for event in result.events]
        if events:
            await self.history.record(events)
        return events

    async def _mutate(
        self,
        exam_id: str,
        session_ids: list[str],
        decide: Decide,
        known: dict[str, dict[str, Any]] | None = None,
    ) -> dict[str, tuple[machine.Outcome | None, dict[str, Any] | None]]:
        """Decide and commit for many sessions, retrying those that lost a race.

        Returns, per session id, the outcome and the session as it was when decided (None for
        unknown sessions). Refusal events are recorded too.
        """
        outcomes: dict[str, tuple[machine.Outcome | None, dict[str, Any] | None]] = {}
        pending = list(dict.fromkeys(session_ids))
        recorded: list[Event] = []
        for attempt in range(MAX_ATTEMPTS):
            if not pending:
                break
            sessions: list[dict[str, Any] | None]
            if attempt == 0 and known is not None and all(sid in known for sid in pending):
                sessions = [known[sid] for sid in pending]  # just read by the caller
            else:
                sessions = await self.store.get_sessions(exam_id, pending)
            if attempt == 0 and any(s is None for s in sessions):
                # The state store may have lost the exam: rebuild it from SQL, read again.
                await self.get_exam(exam_id, fresh=True)
                sessions = await self.store.get_sessions(exam_id, pending)
            commits: list[Commit] = []
            decided: list[tuple[str, dict[str, Any], machine.Outcome]] = []
            for sid, session in zip(pending, sessions, strict=True):
                if session is None:
                    outcomes[sid] = (None, None)
                    continue
                outcome = decide(session)
                decided.append((sid, session, outcome))
                if isinstance(outcome, machine.Transition):
                    commits.append(
                        Commit(exam_id, sid, session["version"], outcome.changes, outcome.events)
                    )
                elif outcome.event is not None:
                    commits.append(Commit(exam_id, sid, None, {}, [outcome.event]))
            results = await self.store.commit(commits) if commits else []
            by_sid = {c.session_id: r for c, r in zip(commits, results, strict=True)}
            pending = []
            for sid, session, outcome in decided:
                result = by_sid.get(sid)
                if result is not None and not result.ok:
                    pending.append(sid)  # lost a race: decide again on fresh state
                    continue
                if result is not None:
                    recorded.extend(result.events)
                outcomes[sid] = (outcome, session)
        for sid in pending:
            outcomes[sid] = (
                machine.Rejection(SkipReason.CONFLICT.value, "too much contention, try again"),
                None,
            )
        if recorded:
            await self.history.record(recorded)
        return outcomes

    async def _mutate_one(
        self, exam_id: str, session_id: str, decide: Decide
    ) -> tuple[machine.Outcome, dict[str, Any]]:
        outcome, session = (await self._mutate(exam_id, [session_id], decide))[session_id]
        if outcome is None or session is None:
            if outcome is not None:
                return outcome, {}
            raise NotFound(f"no session {session_id!r} in exam {exam_id!r}")
        return outcome, session

    # -- candidate side ----------------------------------------------------------------------

    async def open(
        self,
        exam_id: str,
        session_id: str,
        conn_id: str,
        actor: str,
        resume_token: str | None = None,
        client_id: str = "",
        remote_addr: str = "",
    ) -> Opened:
        exam = await self.get_exam(exam_id)
        token = secrets.token_urlsafe(24)
        request = machine.OpenRequest(
            conn_id=conn_id,
            new_resume_hash=machine.hash_token(token),
            actor=actor,
            resume_token=resume_token,
            client_id=client_id,
            remote_addr=remote_addr,
        )
        now = self.clock()
        outcome, before = await self._mutate_one(
            exam_id,
            session_id,
            lambda s: machine.open_session(s, exam, request, now, self.liveness),
        )
        if isinstance(outcome, machine.Rejection):
            if self.on_open is not None:
                self.on_open(outcome.reason)
            raise OpenRefused(outcome.reason, outcome.message)
        if self.on_open is not None:
            self.on_open("opened")
        after = dict(before)
        after.update(outcome.changes)
        after["version"] = before["version"] + 1
        kinds = {e.kind for e in outcome.events}
        return Opened(
            session=after,
            resume_token=token,
            superseded=any(e.details.get("superseded") for e in outcome.events),
            relocked=EventKind.RELOCKED in kinds,
        )

    async def disconnect(self, exam_id: str, session_id: str, conn_id: str, reason: str) -> bool:
        now = self.clock()
        outcome, _ = await self._mutate_one(
            exam_id, session_id, lambda s: machine.disconnect(s, conn_id, now, reason)
        )
        return isinstance(outcome, machine.Transition)

    async def candidate_update(
        self, exam_id: str, session_id: str, decide: Decide
    ) -> machine.Outcome:
        """Progress, client events, acks and submission: the holder changes its own session."""
        outcome, _ = await self._mutate_one(exam_id, session_id, decide)
        return outcome

    # -- staff side --------------------------------------------------------------------------

    async def command(
        self,
        exam_id: str,
        action: Action,
        target: Target,
        principal: Principal,
        params: dict[str, Any] | None = None,
    ) -> BulkResult:
        """Apply a staff command to every targeted session it is valid for."""
        started = time.perf_counter()
        result = await self._command(exam_id, action, target, principal, params)
        if self.on_command is not None:
            self.on_command(
                action.value,
                len(result.applied),
                len(result.skipped),
                time.perf_counter() - started,
            )
        return result

    async def _command(
        self,
        exam_id: str,
        action: Action,
        target: Target,
        principal: Principal,
        params: dict[str, Any] | None = None,
    ) -> BulkResult:
        exam = await self.get_exam(exam_id)
        params = dict(params or {})
        command_id = params.get("command_id") or new_id()
        params["command_id"] = command_id
        result = BulkResult(command_id=command_id, action=action.value)
        if not principal.can(ACTION_PERMISSION[action]):
            raise Forbidden(f"you may not {action.value} sessions")

        if target.is_filter:
            sessions, _ = await self.store.snapshot(exam_id)
            if not sessions:  # nothing, or a state store that lost the exam: make sure
                await self.get_exam(exam_id, fresh=True)
                sessions, _ = await self.store.snapshot(exam_id)
            candidates = [s for s in sessions if target.matches(s)]
            if target.session_ids:
                wanted = set(target.session_ids)
                candidates = [s for s in candidates if s["id"] in wanted]
        else:
            ids = list(dict.fromkeys(target.session_ids or []))  # each session once
            fetched = await self.store.get_sessions(exam_id, ids)
            if any(s is None for s in fetched):  # unknown ids, or a store that lost the exam
                await self.get_exam(exam_id, fresh=True)
                fetched = await self.store.get_sessions(exam_id, ids)
            candidates = []
            for sid, s in zip(ids, fetched, strict=True):
                if s is None:
                    result.skipped.append(
                        {
                            "session_id": sid,
                            "reason": SkipReason.NOT_FOUND.value,
                            "message": "no such session in this exam",
                        }
                    )
                else:
                    candidates.append(s)
        visible = []
        for s in candidates:
            if principal.sees(exam.groups, s["group"]):
                visible.append(s["id"])
            elif target.is_filter:
                result.out_of_scope += 1  # filtered out silently, but counted
            else:
                result.skipped.append(
                    {
                        "session_id": s["id"],
                        "reason": SkipReason.FORBIDDEN.value,
                        "message": "outside your groups",
                    }
                )
        now = self.clock()
        outcomes = await self._mutate(
            exam_id,
            visible,
            lambda s: machine.apply_command(s, exam, action, principal.actor, now, params),
            known={s["id"]: s for s in candidates},
        )
        for sid in visible:
            outcome, before = outcomes[sid]
            if outcome is None:
                result.skipped.append(
                    {
                        "session_id": sid,
                        "reason": SkipReason.NOT_FOUND.value,
                        "message": "no such session in this exam",
                    }
                )
            elif isinstance(outcome, machine.Rejection):
                result.skipped.append(
                    {"session_id": sid, "reason": outcome.reason, "message": outcome.message}
                )
            else:
                connected = bool(before and before["connected"])
                result.applied.append(
                    {
                        "session_id": sid,
                        "seq": outcome.events[0].seq,
                        "delivery": "sent" if connected else "queued",
                    }
                )
        return result

    async def report_irregularity(
        self, exam_id: str, session_id: str, principal: Principal, category: str, note: str
    ) -> Event:
        await self.get_session(exam_id, session_id)
        now = self.clock()
        outcome, _ = await self._mutate_one(
            exam_id,
            session_id,
            lambda s: machine.irregularity(s, principal.actor, category, note, now),
        )
        assert isinstance(outcome, machine.Transition)
        event = outcome.events[0]
        await self.db.add_irregularity(
            id=new_id(),
            exam_id=exam_id,
            session_id=session_id,
            category=category,
            note=note,
            actor=principal.actor,
            at=now,
        )
        return event

    async def record_change(
        self,
        exam_id: str,
        session_id: str,
        kind: str,
        actor: str,
        changes: dict[str, Any],
        details: dict[str, Any],
    ) -> Event:
        """Apply a change decided elsewhere (e.g. a guest reassignment already committed in
        SQL) to the live session, as one event with the exam's next sequence number."""
        now = self.clock()

        def decide(session: dict[str, Any]) -> machine.Outcome:
            event = Event(
                exam_id=exam_id,
                session_id=session_id,
                kind=kind,
                actor=actor,
                at=now,
                before=session["status"],
                after=session["status"],
                details=details,
                changes=dict(changes),
            )
            return machine.Transition(dict(changes), [event])

        outcome, _ = await self._mutate_one(exam_id, session_id, decide)
        assert isinstance(outcome, machine.Transition)  # decide never rejects
        return outcome.events[0]

    async def history_of(self, session_id: str) -> list[Event]:
        return await self.db.history(session_id)

    async def sweep_stale(self, exam_id: str) -> int:
        """Disconnect sessions whose holder went silent (e.g. its process crashed)."""
        now = self.clock()
        stale = await self.store.stale_holders(exam_id, now - self.liveness.stale_after)
        if not stale:
            return 0
        outcomes = await self._mutate(
            exam_id, stale, lambda s: machine.expire_holder(s, now, self.liveness)
        )
        return sum(isinstance(o, machine.Transition) for o, _ in outcomes.values())

    async def touch(self, exam_sessions: Iterable[tuple[str, str]]) -> None:
        items = list(exam_sessions)
        if items:
            await self.store.touch(items, self.clock())


def refusal_reason(exc: OpenRefused) -> RefusalReason | str:
    try:
        return RefusalReason(exc.reason)
    except ValueError:
        return exc.reason
