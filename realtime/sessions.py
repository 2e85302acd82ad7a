"""The session service: reads state, asks the pure state machine, commits through the batcher.

Every change goes the same way: read the sessions, decide with `realtime.state.machine`, commit
the transitions against the versions that were read (compare-and-set; the `CommitBatcher` sends
whatever arrives together in one round trip), decide again for the ones that lost a race. A
change is answered once it is applied: the store appended its events to the exam's outbox in the
same atomic step, and the drainer writes them to SQL behind the live path (see
docs/architecture.md, "What an answer means").

Candidate traffic that no staff decision depends on (progress, acks) skips the read: it is
decided on the connection's own view of its session and committed with a guard ("this
connection still holds a live session") instead of a version.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import operator
import random
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from realtime.auth.permissions import ACTION_PERMISSION
from realtime.auth.principal import Principal
from realtime.batching import CommitBatcher
from realtime.bulk import bulk_change
from realtime.db.database import Database
from realtime.db.history import HistoryFilter
from realtime.errors import BadRequest, Conflict, Forbidden, NotFound, Unavailable
from realtime.identity import scope
from realtime.locks import KeyedLocks
from realtime.presence import NodePresence, node_of
from realtime.reasons import ReasonPolicy
from realtime.state import machine
from realtime.state.handoff import BIG_BATCH
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

_KNOWN = operator.attrgetter("known")
_OK = operator.attrgetter("ok")
CONTENTION_BUDGET = 30.0  # seconds a change keeps deciding again after lost races
EXAM_CACHE_SECONDS = 1.0
# What a staff command reads of each session to choose its targets and decide (a bulk command
# over a whole exam reads these, not every field).
COMMAND_FIELDS = (
    "id", "exam_id", "candidate_id", "candidate_name", "group", "status", "locked", "relock",
    "connected", "authorized", "started_at", "deadline", "paused_at", "extra_minutes", "notice",
    "notice_id", "version", "conn_id", "hand_raised", "offline_since", "offline_seconds",
)
# A candidate change decided on a fresh read this many times before it takes the versioned way.
FAST_PATH_TRIES = 3
# How long a candidate's guarded commit (progress, ack, client event) may wait for others to
# share its store call (`CommitBatcher.commit`'s `linger`), on a store that says its calls are
# worth gathering (`commits_gather`: Redis): under a steady flow each came alone, a round trip,
# a script call, a published message and an outbox entry apiece. The memory store's calls cost
# little: there it did not pay for its timers (docs/performance.md, "eighth session").
CANDIDATE_LINGER = 0.003
ACCESS_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I


ACCESS_CODE_MIN, ACCESS_CODE_MAX, ACCESS_CODE_MIN_DISTINCT = 8, 64, 5
_CUSTOM_CODE = re.compile(r"^[A-Z0-9-]+$")


def new_access_code(length: int = 8) -> str:
    return "".join(secrets.choice(ACCESS_CODE_ALPHABET) for _ in range(length))


def custom_access_code(raw: str) -> str:
    """A staff-chosen access code, trimmed and upper-cased; BadRequest if it is guessable.

    A code is all a candidate needs to open a session, so it must not be short or
    repetitive: at least 8 letters or digits (A-Z, 0-9, and '-' between them), at least 5
    different ones. Generated codes (8 of 32 symbols, 40 bits) are the better choice.
    """
    code = raw.strip().upper()
    symbols = code.replace("-", "")
    if (
        not ACCESS_CODE_MIN <= len(symbols) <= len(code) <= ACCESS_CODE_MAX
        or not _CUSTOM_CODE.match(code)
        or len(set(symbols)) < ACCESS_CODE_MIN_DISTINCT
    ):
        raise BadRequest(
            f"access code {raw[:ACCESS_CODE_MAX]!r} is too easy to guess: use at least "
            f"{ACCESS_CODE_MIN} letters or digits (A-Z, 0-9, '-' allowed, at most "
            f"{ACCESS_CODE_MAX} characters) with at least {ACCESS_CODE_MIN_DISTINCT} different "
            "ones, or leave 'access_code' out for a generated one"
        )
    return code


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "action": self.action,
            "applied": self.applied,
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BulkResult:
        return cls(
            command_id=str(data["command_id"]),
            action=str(data["action"]),
            applied=list(data.get("applied") or []),
            skipped=list(data.get("skipped") or []),
        )


@dataclass(slots=True)
class AlreadyApplied:
    """The session applied this command before (a retry with the same command_id)."""

    seq: int


Decide = Callable[[dict[str, Any]], machine.Outcome]
Outcome = machine.Outcome | AlreadyApplied
Outcomes = dict[str, tuple[Outcome | None, dict[str, Any] | None]]


@dataclass(slots=True)
class FastPath:
    """How a candidate change may skip the read: decide at once on `view` (the connection's own copy
    of its session), commit if `guard` still holds (and the session is not final)."""

    view: dict[str, Any]
    guard: dict[str, Any]
    live_only: bool = True


class SessionService:
    def __init__(
        self,
        store: StateStore,
        db: Database,
        liveness: machine.Liveness,
        clock: Callable[[], float] = time.time,
        batcher: CommitBatcher | None = None,
    ) -> None:
        self.store = store
        self.db = db
        self.liveness = liveness
        self.clock = clock
        self.batcher = batcher or CommitBatcher(store)
        self._gather = bool(getattr(store, "commits_gather", False))  # see CANDIDATE_LINGER
        self._exam_cache: dict[str, tuple[float, Exam]] = {}
        self._exam_loads: dict[str, asyncio.Future[Exam]] = {}  # reads of an expired copy
        self._rebuilding = KeyedLocks()
        self._session_locks = KeyedLocks()
        self._first_opens = KeyedLocks()  # one session creation per (exam, candidate) at a time
        self._tasks: set[asyncio.Task[Any]] = set()
        # Called after each command with (action, applied, skipped, seconds): metrics.
        self.on_command: Callable[[str, int, int, float], None] | None = None
        # Called after each open attempt with its outcome ("opened" or a refusal reason).
        self.on_open: Callable[[str], None] | None = None
        # Called after each sweep of an exam with how many stale holders it found, by what it
        # did: "disconnected", "held_here" (an open connection here holds it), "changed" (its
        # holder was heard from, or it was disconnected otherwise, before the commit).
        self.on_sweep: Callable[[dict[str, int]], None] | None = None
        # Extra eligibility of logged-in candidates (user id, exam id), e.g. guest accounts
        # that may only open the exam they were reserved for.
        self.may_open: Callable[[str, str], Awaitable[bool]] | None = None
        # Makes SQL reads of an exam's history current (the drainer catching up), if wired.
        self.catch_up: Callable[[str], Awaitable[None]] | None = None
        self.presence: NodePresence | None = None  # which nodes are alive (None: all)
        self.reasons = ReasonPolicy()  # reason categories, and which commands need one

    def _background(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run `coro` on its own (a caller cancelled meanwhile does not stop it); `settle`
        waits for it."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def settle(self) -> None:
        """Wait for what answers set off and did not wait for (answers kept for retries,
        audit rows whose command's caller was cancelled): at shutdown, before the last
        drain."""
        while self._tasks:  # (`wait`, not `gather`: a caller's timeout cancels none of them)
            await asyncio.wait(list(self._tasks))

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
        """The exam from the state store, rebuilt from SQL when the store lost it.

        Kept in-process for `EXAM_CACHE_SECONDS`, so a settings change made on another
        process applies here within that time; changes made here apply at once.
        """
        cached = self._exam_cache.get(exam_id)
        if cached is not None and not fresh and time.monotonic() - cached[0] < EXAM_CACHE_SECONDS:
            return cached[1]
        if fresh:
            return await self._load_exam(exam_id)
        # One read for every caller that finds the copy expired (a hall's opens would each
        # read the exam again the moment it expires): they share the one in flight.
        loading = self._exam_loads.get(exam_id)
        if loading is None:
            loading = self._exam_loads[exam_id] = asyncio.ensure_future(self._load_exam(exam_id))
            loading.add_done_callback(functools.partial(self._exam_loaded, exam_id))
        return await asyncio.shield(loading)

    def _exam_loaded(self, exam_id: str, loading: asyncio.Future[Exam]) -> None:
        self._exam_loads.pop(exam_id, None)
        if not loading.cancelled():
            loading.exception()  # retrieved: its waiters may all have been cancelled

    async def _load_exam(self, exam_id: str) -> Exam:
        exam = await self.store.get_exam(exam_id)
        if exam is None:
            exam = await self._rebuild(exam_id)
        self._exam_cache[exam_id] = (time.monotonic(), exam)
        return exam

    async def _rebuild(self, exam_id: str) -> Exam:
        """Put a lost exam back into the state store from SQL, once per process at a time.

        The sessions go in before the exam itself: whoever sees the exam in the store (in any
        process) sees its sessions too, so an open during a rebuild never gets `not_found`.
        """
        async with self._rebuilding.hold(exam_id):
            exam = await self.store.get_exam(exam_id)
            if exam is not None:
                return exam  # rebuilt meanwhile
            exam = await self.db.get_exam(exam_id)
            if exam is None:
                raise scope.exam_not_found(exam_id)
            await self.store.ensure_seq(exam_id, await self.db.last_seq(exam_id))
            states = await self.db.list_session_states(exam_id)
            await self._put_back(states)
            await self.store.put_exam(exam)
            self.store.forget_view(exam_id)  # a copy of what the store lost is no guide
            log.warning("exam %s rebuilt in the state store from SQL (%d sessions)",
                        exam_id, len(states))
            return exam

    async def _put_back(self, states: list[dict[str, Any]]) -> None:
        """Add sessions read from SQL to the state store; ids it has are left as they are."""
        now = self.clock()
        for state in states:
            if state.get("connected"):
                # Holders still connected to a process keep their sessions: their next
                # heartbeat proves it; the sweeper disconnects the others.
                state["last_seen"] = now
        await self.store.add_sessions(states)

    def store_came_back(self, recovered: Collection[str] = ()) -> None:
        """The state store answered again after an outage (a resubscribe listener). If it came
        back from an older copy of its data (AOF with `everysec`, a replica), its sequence
        counters may be behind what SQL already holds: move them past it before they are
        reused."""
        self._background(self._realign_sequences())

    async def _realign_sequences(self) -> None:
        try:
            for exam_id in await self.store.outbox_exams():
                await self.store.ensure_seq(exam_id, await self.db.last_seq(exam_id))
        except Exception:
            log.warning("could not realign sequence numbers after a store outage",
                        exc_info=True)

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
                    access_code=custom_access_code(str(candidate["access_code"]))
                    if candidate.get("access_code") else new_access_code(),
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
        [session] = await self.store.read_sessions(exam_id, [session_id])
        if session is None:
            await self.get_exam(exam_id, fresh=True)  # rehydrates the store if it lost the exam
            [session] = await self.store.read_sessions(exam_id, [session_id])
        if session is None:
            raise scope.session_not_found(exam_id, session_id)
        return session

    async def exam_in_scope(self, exam_id: str, principal: Principal) -> Exam:
        """The exam, if the principal sees it (`scope`); else the same 404 as an unknown exam.

        Whether a restricted principal sees an exam it does not manage depends on the groups
        of its sessions: they are read from the state store (which works while SQL is down).
        """
        exam = await self.get_exam(exam_id)
        if scope.depends_on_sessions(principal, exam.groups):
            groups = (await self.candidate_groups(exam_id)).values()
            if not scope.sees_exam(principal, exam.groups, scope.own_candidates(principal, groups)):
                raise scope.exam_not_found(exam_id)
        return exam

    async def candidate_groups(self, exam_id: str) -> dict[str, str]:
        """Session id -> candidate group, for every session of the exam."""
        sessions, _ = await self.store.snapshot(exam_id, ("id", "group"))
        return {s["id"]: s["group"] for s in sessions}

    async def session_in_scope(
        self, exam_id: str, session_id: str, principal: Principal
    ) -> tuple[Exam, dict[str, Any]]:
        """The exam and session, if the principal sees the session; else exactly the 404 of a
        session (or, when the exam is not seen either, of an exam) that does not exist."""
        exam = await self.get_exam(exam_id)
        try:
            session: dict[str, Any] | None = await self.get_session(exam.id, session_id)
        except NotFound:
            session = None
        if session is not None and scope.sees_session(principal, exam.groups, session["group"]):
            return exam, session
        await self.exam_in_scope(exam_id, principal)
        raise scope.session_not_found(exam_id, session_id)

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

        A candidate is eligible when the exam names no groups or shares one with them. An
        existing session is found in the state store, so SQL being down locks nobody out.
        Concurrent first opens of one candidate in this process wait for one creation (not
        each for SQL's write lock, to fail on the unique (exam, candidate) row); one racing on
        another process finds the row in SQL. Either way the session is in the state store
        before its id is returned, so the open that follows finds it.
        """
        exam = await self.get_exam(exam_id)
        if exam.groups and not candidate.groups.intersection(exam.groups):
            raise OpenRefused(RefusalReason.NOT_ELIGIBLE, "you are not a candidate of this exam")
        existing = await self.store.session_by_candidate(exam_id, candidate.id)
        if existing is not None:
            return existing
        if self.may_open is not None and not await self.may_open(candidate.id, exam_id):
            raise OpenRefused(RefusalReason.NOT_ELIGIBLE, "this account is not for this exam")
        async with self._first_opens.hold((exam_id, candidate.id)):
            existing = await self.store.session_by_candidate(exam_id, candidate.id)
            if existing is not None:
                return existing  # created by the racer this one waited for
            return await self._create_for_candidate(exam, candidate)

    async def _create_for_candidate(self, exam: Exam, candidate: Principal) -> str:
        for _attempt in range(2):
            found = await self.db.find_session(exam.id, candidate.id)
            if found is not None:
                # Created by another process, which may not have added it to the state store
                # yet (it does so after its SQL insert): add it now, or the open would not
                # find the session. The creator's own add then leaves it as it is.
                await self._put_back([found])
                return str(found["id"])
            shared = sorted(candidate.groups.intersection(exam.groups)) or sorted(candidate.groups)
            entry = {
                "candidate_id": candidate.id,
                "name": candidate.name,
                "group": shared[0] if shared else "",
            }
            try:
                [session] = await self.create_sessions(exam.id, [entry], "system")
            except Conflict:
                continue  # another process created it first (or the access code was taken)
            return str(session["id"])
        raise Conflict("could not create the session; try again")

    async def resolve_code(self, access_code: str) -> tuple[str, str]:
        found = await self.store.session_by_code(access_code)
        if found is None:
            row = await self.db.find_session_by_code(access_code)
            if row is None:
                raise NotFound("unknown access code")
            await self.get_exam(row["exam_id"])
            # In SQL but not (yet) in the state store: created just now on another process,
            # which adds it there next. Add it now, so the open that follows finds it.
            await self._put_back([row])
            found = (row["exam_id"], row["id"])
        return found

    # -- the one way to change a session -----------------------------------------------------

    async def _commit_and_record(self, commits: list[Commit]) -> list[Event]:
        results = await self.batcher.commit(commits)
        return [event for result in results if result.ok for event in result.events]

    async def _mutate(
        self,
        exam_id: str,
        session_ids: list[str],
        decide: Decide,
        known: dict[str, dict[str, Any]] | None = None,
        command_id: str = "",
        unversioned: tuple[str, ...] = (),
    ) -> dict[str, tuple[Outcome | None, dict[str, Any] | None]]:
        """Decide and commit for many sessions, deciding again for those that lost a race.

        `unversioned` names fields the decision depends on that change without a new version
        (`last_seen`): the commit also checks they are as they were read.

        Returns, per session id, the outcome and the session as it was when decided (None for
        unknown sessions). Refusal events are recorded too. Nobody is refused because of
        contention: a loser decides again on fresh state (with a jittered pause after a few
        rounds) until it wins or `CONTENTION_BUDGET` runs out (then 503, nothing applied).
        """
        outcomes: dict[str, tuple[Outcome | None, dict[str, Any] | None]] = {}
        pending = list(dict.fromkeys(session_ids))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONTENTION_BUDGET
        attempt = 0
        while pending:
            sessions: list[dict[str, Any] | None]
            if attempt == 0 and known is not None and all(sid in known for sid in pending):
                sessions = [known[sid] for sid in pending]  # just read by the caller
            else:  # with whatever else is read in this loop turn: one round trip
                sessions = await self.store.read_sessions(exam_id, pending)
            if attempt == 0 and any(s is None for s in sessions):
                # The state store may have lost the exam: rebuild it from SQL, read again.
                await self.get_exam(exam_id, fresh=True)
                sessions = await self.store.read_sessions(exam_id, pending)
            commits: list[Commit] = []
            decided: list[tuple[str, dict[str, Any], machine.Outcome]] = []
            for sid, session in zip(pending, sessions, strict=True):
                if session is None:
                    outcomes[sid] = (None, None)
                    continue
                outcome = decide(session)
                decided.append((sid, session, outcome))
                if isinstance(outcome, machine.Transition):
                    guard = {name: session[name] for name in unversioned} if unversioned else None
                    commits.append(
                        Commit(exam_id, sid, session["version"], outcome.changes, outcome.events,
                               guard=guard, command_id=command_id, like=outcome.like)
                    )
                elif outcome.event is not None and outcome.changes:
                    # A refusal that counts an incident: compare-and-set like a transition
                    # (the count must not lose a concurrent one), guarded like the others.
                    guard = {"last_seen": session["last_seen"]}
                    commits.append(Commit(exam_id, sid, session["version"], outcome.changes,
                                          [outcome.event], guard=guard))
                elif outcome.event is not None:
                    # A refusal is recorded only while the session is as it was decided on:
                    # after a concurrent change (an unlock, or the holder heard from again)
                    # it is decided again, so history never shows "unlocked", then
                    # "refused: locked".
                    guard = {"version": session["version"], "last_seen": session["last_seen"]}
                    commits.append(Commit(exam_id, sid, None, {}, [outcome.event], guard=guard))
            results = await self.batcher.commit(commits) if commits else []
            by_sid = {c.session_id: r for c, r in zip(commits, results, strict=True)}
            pending = []
            for sid, session, outcome in decided:
                result = by_sid.get(sid)
                if result is not None and result.duplicate_seq is not None:
                    outcomes[sid] = (AlreadyApplied(result.duplicate_seq), session)
                elif result is not None and not result.ok and result.found:
                    pending.append(sid)  # lost a race: decide again on fresh state
                elif result is not None and not result.found:
                    outcomes[sid] = (None, None)
                else:
                    outcomes[sid] = (outcome, session)
            attempt += 1
            if pending:
                if loop.time() > deadline:
                    raise Unavailable("too much contention on these sessions; nothing applied")
                if attempt >= 3:
                    await asyncio.sleep(random.uniform(0, min(0.005 * attempt, 0.2)))
        return outcomes

    async def _mutate_one(
        self, exam_id: str, session_id: str, decide: Decide
    ) -> tuple[machine.Outcome, dict[str, Any]]:
        async with self._session_locks.hold((exam_id, session_id)):
            outcome, session = (await self._mutate(exam_id, [session_id], decide))[session_id]
        if outcome is None or session is None:
            raise scope.session_not_found(exam_id, session_id)
        assert not isinstance(outcome, AlreadyApplied)  # no command id here
        return outcome, session

    def unheard(self, since: float | None, now: float) -> float:
        """Seconds between `since` and `now` in which the state store could not be reached."""
        if since is None:
            return 0.0
        return self.store.unheard(since, now)

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
        user_agent: str = "",
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
            user_agent=user_agent,
        )
        now = self.clock()

        def decide(session: dict[str, Any]) -> machine.Outcome:
            request.unheard = self.unheard(session["last_seen"], now)
            return machine.open_session(session, exam, request, now, self.liveness)

        outcome, before = await self._mutate_one(exam_id, session_id, decide)
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

    async def disconnect(
        self, exam_id: str, session_id: str, conn_id: str, reason: str, dropped: bool = False
    ) -> bool:
        """The holder's connection ended; `dropped`: lost without a close (an incident)."""
        now = self.clock()
        outcome, _ = await self._mutate_one(
            exam_id, session_id, lambda s: machine.disconnect(s, conn_id, now, reason, dropped)
        )
        return isinstance(outcome, machine.Transition)

    async def candidate_update(
        self, exam_id: str, session_id: str, decide: Decide, fast: FastPath | None = None
    ) -> machine.Outcome:
        """Progress, client events, acks and submission: the holder changes its own session.

        With `fast`, the change is decided on the connection's own view and committed under a
        guard, with no read; only if the guard no longer holds is it decided again the usual
        way (read, decide, compare-and-set).
        """
        if fast is not None:
            view, guard = fast.view, fast.guard
            for attempt in range(FAST_PATH_TRIES):
                outcome = decide(view)
                if not isinstance(outcome, machine.Transition):
                    break
                if attempt:  # decided on a fresh read: guard what the decision saw
                    guard = {
                        name: view.get(name)
                        for name in (*fast.guard, *outcome.changes)
                        if name != "last_seen"
                    }
                commit = Commit(exam_id, session_id, None, outcome.changes, outcome.events,
                                guard=guard, live_only=fast.live_only)
                # the first try may wait a little for others (`CANDIDATE_LINGER`)
                linger = CANDIDATE_LINGER if self._gather and not attempt else 0.0
                [result] = await self.batcher.commit([commit], linger=linger)
                if result.ok:
                    return outcome
                if not result.found:
                    break
                # The guard no longer holds (e.g. a new notice replaced the one acked): decide
                # again on the session as it is, still without a new version, so an ack or a
                # progress report never bumps the version whichever way it went.
                [fresh] = await self.store.get_sessions(exam_id, [session_id])
                if fresh is None:
                    break
                view = fresh
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
        """Apply a staff command to every targeted session it is valid for.

        A `command_id` given by the caller is an idempotency key: a retry applies nothing a
        second time and answers what the first call answered (or, if the first call was cut
        off half-way, finishes the command and answers for all of it).
        """
        started = time.perf_counter()
        if target.is_filter or len(target.session_ids or ()) >= BIG_BATCH:
            with bulk_change():  # no GC pass or SQL drain in the middle of it (realtime/bulk.py)
                result = await self._command(exam_id, action, target, principal, params)
        else:
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
        # The permission first: without it, a known exam and an unknown one answer alike.
        if not principal.can(ACTION_PERMISSION[action]):
            raise Forbidden(f"you may not {action.value} sessions")
        params = dict(params or {})
        self.reasons.check_command(action, params)
        exam = await self.exam_in_scope(exam_id, principal)
        given_id = params.get("command_id") or ""
        command_id = given_id or new_id()
        params["command_id"] = command_id
        result = BulkResult(command_id=command_id, action=action.value)
        ids = [] if target.is_filter else list(dict.fromkeys(target.session_ids or []))
        now = self.clock()

        decide: Decide
        if target.is_filter or len(ids) > 1:
            # apply_command per session, decided once per distinct input (a hall's sessions
            # are mostly alike: a "pause all" is one decision, copied)
            decide = machine.CommandDecisions(exam, action, principal.actor, now, params)
        else:
            def decide(s: dict[str, Any]) -> machine.Outcome:
                return machine.apply_command(s, exam, action, principal.actor, now, params)

        on_view = await self._decide_on_view(exam, target, principal, ids, given_id, decide,
                                              result)
        if on_view is not None:
            visible, outcomes, hidden = on_view
            for sid in hidden:  # targeted, unknown or out of scope: as below
                result.skipped.append(_not_found(sid))
        else:
            kept, visible, outcomes = await self._decide_on_read(
                exam, target, principal, ids, given_id, decide, result
            )
            if kept is not None:
                return kept  # the answer kept for this command id
        for sid in visible:
            outcome, before = outcomes[sid]
            if outcome is None:
                result.skipped.append(_not_found(sid))
            elif isinstance(outcome, machine.Rejection):
                result.skipped.append(
                    {"session_id": sid, "reason": outcome.reason, "message": outcome.message}
                )
            else:
                connected = bool(before and before["connected"] and self.holder_alive(before))
                seq = outcome.seq if isinstance(outcome, AlreadyApplied) else outcome.events[0].seq
                result.applied.append(
                    {
                        "session_id": sid,
                        "seq": seq,
                        "delivery": "sent" if connected else "queued",
                    }
                )
        if given_id:
            self._background(self._keep_result(exam_id, given_id, result, principal.actor))
        return result

    async def _decide_on_read(
        self,
        exam: Exam,
        target: Target,
        principal: Principal,
        ids: list[str],
        given_id: str,
        decide: Decide,
        result: BulkResult,
    ) -> tuple[BulkResult | None, list[str], Outcomes]:
        """A command decided on sessions read from the store (with its kept answer and what an
        earlier call with its id applied): the kept answer of this command id (for its own
        caller), else None, the visible targets and their outcomes. Skips of unknown targets
        go to `result`."""
        exam_id = exam.id
        applied_before: dict[str, int] = {}
        fetched: list[dict[str, Any] | None] = []
        if given_id or ids:
            stored, applied_before, fetched = await self.store.read_for_command(
                exam_id, given_id, ids, COMMAND_FIELDS
            )
            # Only its own caller gets a kept answer back: it names the sessions it touched,
            # which another caller (with the same command id) may not see.
            if stored is not None and stored.get("actor") == principal.actor:
                return BulkResult.from_dict(stored), [], {}

        if target.is_filter:
            sessions, _ = await self.store.snapshot(exam_id, COMMAND_FIELDS)
            if not sessions:  # nothing, or a state store that lost the exam: make sure
                await self.get_exam(exam_id, fresh=True)
                sessions, _ = await self.store.snapshot(exam_id, COMMAND_FIELDS)
            # Out of scope is as if it did not exist: not counted, not named (scope.py).
            candidates = [
                s for s in sessions
                if target.matches(s) and scope.sees_session(principal, exam.groups, s["group"])
            ]
            if target.session_ids:
                wanted = set(target.session_ids)
                candidates = [s for s in candidates if s["id"] in wanted]
        else:
            if any(s is None for s in fetched):  # unknown ids, or a store that lost the exam
                await self.get_exam(exam_id, fresh=True)
                fetched = await self.store.get_sessions(exam_id, ids)
            candidates = []
            for sid, s in zip(ids, fetched, strict=True):
                if s is None or not scope.sees_session(principal, exam.groups, s["group"]):
                    # unknown and out of scope: the same skip, in the same place
                    result.skipped.append(
                        {
                            "session_id": sid,
                            "reason": SkipReason.NOT_FOUND.value,
                            "message": "no such session in this exam",
                        }
                    )
                else:
                    candidates.append(s)
        visible = [s["id"] for s in candidates]
        known = {s["id"]: s for s in candidates}
        outcomes = await self._mutate(
            exam_id,
            [sid for sid in visible if sid not in applied_before],
            decide,
            known=known,
            command_id=given_id,
        )
        for sid, seq in applied_before.items():  # by an earlier call with this command_id
            if sid in known:
                outcomes[sid] = (AlreadyApplied(seq), known[sid])
        return None, visible, outcomes

    async def _decide_on_view(
        self,
        exam: Exam,
        target: Target,
        principal: Principal,
        ids: list[str],
        given_id: str,
        decide: Decide,
        result: BulkResult,
    ) -> tuple[list[str], Outcomes, list[str]] | None:
        """A command decided on this process's copy of the exam's sessions (`command_view`),
        with no read: one round trip, the commit. None when there is no copy to trust (or a
        target is not in it, or the command id was seen before): decide on a read instead.

        The copy may be behind the store (another process's change not heard yet). Whatever
        it decided stands only if the session is still at the version it was decided on: a
        change by compare-and-set, a rejection or a target left out by a `check_only`
        commit, and for a command over the whole exam a `members` commit (no session it did
        not know of). Those that fail are read from the store and decided again; nothing is
        applied on a stale copy. Decisions read only fields that change with the version
        (see docs/architecture.md). With a command id, the commits are `fresh`: if the store
        knows the id (a retry), none applies and the command goes the read way, which answers
        what was kept.

        Returns the visible targets in order, their outcomes, and the targeted ids to skip as
        unknown (out of scope included); when every commit went as decided (the usual case)
        their entries are in `result` already (`_answer`), and all three are empty."""
        exam_id = exam.id
        if not target.is_filter and not ids:
            return None
        view = await self.store.command_view(exam_id, COMMAND_FIELDS, whole=target.is_filter)
        if not view:
            return None
        if target.is_filter:
            sessions = list(view.values())
        else:
            sessions = []
            for sid in ids:
                found = view.get(sid)
                if found is None:
                    return None  # unknown here (or not yet): read
                sessions.append(found)
        wanted = set(target.session_ids) if target.is_filter and target.session_ids else None
        fresh = bool(given_id)

        sees_all = scope.manages(principal, exam.groups)  # else: by the candidate's group

        def selected(s: dict[str, Any]) -> bool:
            if not sees_all and not scope.sees_session(principal, exam.groups, s["group"]):
                return False
            return not target.is_filter or (
                target.matches(s) and (wanted is None or s["id"] in wanted)
            )

        # What follows runs once per session of a hall: plain loops over parallel lists,
        # positional dataclass arguments (about half the cost of keywords), of each session
        # only what its answer needs (docs/performance.md, "Ninth session").
        everyone = sees_all and (not target.is_filter or (
            wanted is None and not (target.status or target.group or target.search)))
        entries: list[Commit] = []
        order: list[str] = []  # the sessions decided on, in order
        decisions: list[machine.Outcome | None] = []
        # what the answer's delivery reads of each, as decided on: the copy moves on with the
        # events meanwhile (its own included)
        holders: list[tuple[Any, Any]] = []
        for s in sessions:
            sid = s["id"]
            outcome: machine.Outcome | None = None
            if everyone or selected(s):
                outcome = decide(s)  # (pure: reads the copy's `s`, keeps nothing of it)
            if isinstance(outcome, machine.Transition):
                entries.append(Commit(exam_id, sid, s["version"], outcome.changes, outcome.events,
                                      None, False, given_id, False, None, fresh, outcome.like))
            elif outcome is not None and outcome.event is not None:
                return None  # a refusal to record: not a command's (decide on a read)
            else:
                entries.append(Commit(exam_id, sid, s["version"], check_only=True,
                                      command_id=given_id, fresh=fresh))
            order.append(sid)
            decisions.append(outcome)
            holders.append((s["connected"], s["conn_id"]))
        if target.is_filter:
            entries.append(Commit(exam_id, "", None, members=len(view), command_id=given_id,
                                  fresh=fresh))
        results = await self.batcher.commit(entries)
        if any(map(_KNOWN, results)):
            return None  # a retry: nothing of it applied here; the read way answers it
        complete = not target.is_filter or results[-1].ok
        if complete and all(map(_OK, results)):  # as decided, all of it: answered here
            self._answer(result, order, decisions, holders, target.is_filter)
            return [], {}, []
        final: dict[str, tuple[Outcome | None, dict[str, Any] | None] | None] = {}
        again: list[str] = []
        lost = False
        for sid, outcome, (held, conn_id), res in zip(order, decisions, holders, results,
                                                      strict=False):  # + members
            before = {"connected": held, "conn_id": conn_id}
            if res.duplicate_seq is not None:
                final[sid] = (AlreadyApplied(res.duplicate_seq), before)
            elif not res.ok:
                again.append(sid)  # changed since the copy had it (or gone): decide again
                lost = lost or not res.found
            else:
                final[sid] = None if outcome is None else (outcome, before)
        if lost or not complete:
            self.store.forget_view(exam_id)  # made again from the store next time
        if not complete:  # sessions the copy did not know of: read them all
            rows, _ = await self.store.snapshot(exam_id, COMMAND_FIELDS)
            new = [r["id"] for r in rows if r["id"] not in view]
            order += new
            again += new
            by_id = {r["id"]: r for r in rows}
            fetched = [by_id.get(sid) for sid in again]
        else:
            fetched = await self.store.get_sessions(exam_id, again)
        if any(f is None for f in fetched):  # a store that lost the exam: rebuilt
            await self.get_exam(exam_id, fresh=True)
            fetched = await self.store.get_sessions(exam_id, again)
        chosen = {f["id"]: f for f in fetched if f is not None and selected(f)}
        for sid in again:
            final[sid] = None
        final.update(await self._mutate(exam_id, list(chosen), decide, known=chosen,
                                        command_id=given_id))
        visible = [sid for sid in order if final.get(sid) is not None]
        hidden = [sid for sid in order if final.get(sid) is None] if not target.is_filter else []
        return visible, {sid: o for sid, o in final.items() if o is not None}, hidden

    def _answer(self, result: BulkResult, order: list[str],
                decisions: list[machine.Outcome | None], holders: list[tuple[Any, Any]],
                whole: bool) -> None:
        """The answer's entries of a command decided on the copy and committed as decided
        (every session in `order` at the version decided on): what `_command` gives each
        visible target, in the same order, the targets out of scope (`None`: not decided)
        skipped as unknown first unless the command is over the whole exam. Once per
        session of a hall: no outcome tuples, no copies of the sessions."""
        applied = result.applied.append
        rejected: list[dict[str, Any]] = []
        presence = self.presence
        for sid, outcome, (held, conn_id) in zip(order, decisions, holders, strict=True):
            if isinstance(outcome, machine.Transition):
                sent = held and (presence is None or presence.holder_alive(conn_id or ""))
                applied({"session_id": sid, "seq": outcome.events[0].seq,
                         "delivery": "sent" if sent else "queued"})
            elif outcome is None:
                if not whole:
                    result.skipped.append(_not_found(sid))
            else:
                rejected.append(
                    {"session_id": sid, "reason": outcome.reason, "message": outcome.message})
        result.skipped += rejected

    def holder_alive(self, session: dict[str, Any]) -> bool:
        """False when the session's holder was on a node that stopped beating."""
        return self.presence is None or self.presence.holder_alive(session.get("conn_id") or "")

    async def _keep_result(
        self, exam_id: str, command_id: str, result: BulkResult, actor: str
    ) -> None:
        """Remember the answer (and whose it is) for retries. Best effort: without it a retry
        still applies nothing twice (the store remembers per session), it only recomputes it."""
        try:
            await self.store.save_command_result(
                exam_id, command_id, {**result.to_dict(), "actor": actor}
            )
        except Exception:
            log.warning("could not keep the answer of command %s", command_id, exc_info=True)

    async def report_irregularity(
        self, exam_id: str, session_id: str, principal: Principal, category: str, note: str
    ) -> Event:
        """Recorded as a history event; the drainer writes the irregularity row with it."""
        await self.get_session(exam_id, session_id)
        now = self.clock()
        outcome, _ = await self._mutate_one(
            exam_id,
            session_id,
            lambda s: machine.irregularity(s, principal.actor, category, note, now),
        )
        assert isinstance(outcome, machine.Transition)
        return outcome.events[0]

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

    async def caught_up(self, exam_id: str) -> None:
        """Make SQL reads of the exam's history current (for up to the drainer's timeout)."""
        if self.catch_up is not None:
            await self.catch_up(exam_id)

    async def history_page(
        self, exam_id: str, session_id: str | None, flt: HistoryFilter
    ) -> tuple[list[Event], bool]:
        """A page of one session's history (or, with `session_id` None, the whole exam's),
        made current first; and whether more lie beyond it."""
        await self.caught_up(exam_id)
        if session_id is None:
            return await self.db.exam_history_page(exam_id, flt)
        return await self.db.session_history_page(session_id, flt)

    async def irregularities(
        self, exam_id: str, since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        await self.caught_up(exam_id)
        return await self.db.irregularities(exam_id, since, until)

    async def revoke_candidate_tokens(self, exam_id: str, session_id: str, actor: str) -> int:
        """Move the session's token generation on: every candidate token issued before stops
        opening it (an open socket stays). Returns the new generation, for a new token."""
        now = self.clock()

        def decide(session: dict[str, Any]) -> machine.Outcome:
            generation = int(session.get("token_gen") or 0) + 1
            event = Event(
                exam_id=exam_id, session_id=session_id, kind=EventKind.TOKEN_REVOKED,
                actor=actor, at=now, before=session["status"], after=session["status"],
                details={"generation": generation}, changes={"token_gen": generation},
            )
            return machine.Transition({"token_gen": generation}, [event])

        outcome, _ = await self._mutate_one(exam_id, session_id, decide)
        assert isinstance(outcome, machine.Transition)  # decide never rejects
        return int(outcome.changes["token_gen"])

    async def sweep_stale(
        self, exam_id: str, held_here: Callable[[str, str], bool] | None = None
    ) -> int:
        """Disconnect sessions whose holder went silent (e.g. its process crashed).

        Not right after the state store was unreachable: nobody could refresh `last_seen`
        then, so every holder looks stale until the heartbeats have come round once more.
        Never a session that `held_here(session id, conn id)` says an open connection of
        this very process holds: a process starved of CPU refreshes `last_seen` late, and its
        own sweeper must not then report its live candidates dropped (the heartbeat cuts off
        a socket that stopped answering pings, and that close disconnects the session).
        """
        now = self.clock()
        if self.unheard(now - 2 * self.liveness.stale_after, now) > 0:
            return 0
        presence = self.presence
        dead = presence.dead if presence is not None else frozenset()
        stale = await self.store.stale_holders(exam_id, now - self.liveness.stale_after, dead)
        if not stale:
            self._swept({})
            return 0
        spared: set[str] = set()  # held by an open connection here, as last decided

        def decide(session: dict[str, Any]) -> machine.Outcome:
            if held_here is not None and held_here(session["id"], session["conn_id"] or ""):
                spared.add(session["id"])
                return machine.Rejection("live", "an open connection of this process holds it")
            spared.discard(session["id"])  # decided again after a race
            return machine.expire_holder(
                session, now, self.liveness, node_lost=node_of(session["conn_id"] or "") in dead
            )

        outcomes = await self._mutate(  # not if the holder was heard from meanwhile
            exam_id, stale, decide, unversioned=("last_seen",),
        )
        counts = {"disconnected": 0, "held_here": 0, "changed": 0}
        for sid, (outcome, _) in outcomes.items():
            if isinstance(outcome, machine.Transition):
                counts["disconnected"] += 1
            elif outcome is not None:
                counts["held_here" if sid in spared else "changed"] += 1
        self._swept(counts)
        return counts["disconnected"]

    def _swept(self, counts: dict[str, int]) -> None:
        if self.on_sweep is not None:
            self.on_sweep(counts)

    async def touch(self, holders: Iterable[tuple[str, str, str]]) -> None:
        """The heartbeat: refresh `last_seen` of sessions held here; a session marked
        disconnected meanwhile whose connection is still here is marked connected again."""
        items = list(holders)
        if not items:
            return
        now = self.clock()
        lost = await self.store.touch(items, now)
        by_exam: dict[str, dict[str, str]] = {}
        for exam_id, session_id, conn_id in lost:
            by_exam.setdefault(exam_id, {})[session_id] = conn_id
        for exam_id, held in by_exam.items():  # one batch per exam, however many came back
            outcomes = await self._mutate(exam_id, list(held), _reattach_decision(held, now))
            back = [sid for sid, (o, _) in outcomes.items() if isinstance(o, machine.Transition)]
            if back:
                log.info("exam %s: %d sessions still held here, marked connected again",
                         exam_id, len(back))


def _not_found(session_id: str) -> dict[str, Any]:
    """A command's skip of a target that is unknown (or out of scope: the same)."""
    return {
        "session_id": session_id,
        "reason": SkipReason.NOT_FOUND.value,
        "message": "no such session in this exam",
    }


def _reattach_decision(held: dict[str, str], now: float) -> Decide:
    """Decide, per session, whether its holder (session id -> conn id) gets it back."""
    return lambda session: machine.reattach(session, held[session["id"]], now)


def refusal_reason(exc: OpenRefused) -> RefusalReason | str:
    try:
        return RefusalReason(exc.reason)
    except ValueError:
        return exc.reason
