"""The embedded state store: one process, everything in dicts. For development and small exams.

Its outbox lives in this process too: what the drainer has not yet written to SQL is lost with
the process (together with the live state it belongs to). Production runs on Redis.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

from realtime.state.drops import Drop, alert_for
from realtime.state.handoff import HandOff
from realtime.state.model import Event, Exam
from realtime.state.store import (
    FINAL_STATUSES,
    Backlog,
    Commit,
    CommitListener,
    CommitResult,
    EventListener,
    OutboxEntry,
)

log = logging.getLogger(__name__)

# Events an outbox entry holds, and a claim hands the drainer, at most (a claim: whole entries,
# at least one). The drainer writes a claim in one SQL transaction, and parts of that write run
# on the event loop in one stretch each (ordering the claim, merging the sessions' states):
# behind the bursts of a few "pause all"s (5,000 events in one entry each, 5,000 acks), claims
# of 200 entries held 24,000-70,000 events, and a hall's traffic meanwhile waited behind
# stretches of 30-50 ms (docs/performance.md, ninth session). Redis's claims are not capped.
CLAIM_EVENTS = 2_000


class _Outbox:
    """One exam's outbox: entries in order, a drained mark, and the recent event log."""

    __slots__ = ("drained", "entries", "lease", "log", "log_size", "next_id")

    def trim(self) -> None:
        """Forget events that are both drained and older than the last `log_size`."""
        log = self.log
        while len(log) > self.log_size and log[0].seq <= self.drained:
            log.popleft()

    def __init__(self, log_size: int) -> None:
        self.entries: deque[OutboxEntry] = deque()  # not yet acknowledged
        self.log: deque[Event] = deque()  # the last `log_size` events, and all undrained
        self.log_size = log_size
        self.next_id = 0
        self.drained = 0  # highest seq acknowledged as written
        self.lease: tuple[str, float] = ("", 0.0)  # (consumer, until monotonic)


class MemoryStore:
    # The outbox is this process's memory: it dies with it, and with it whatever a longer
    # gather held back from SQL (the drainer keeps `realtime.drainer.GATHER`).
    outbox_survives_process = False

    def __init__(self, log_size: int = 10_000, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.time
        self._exams: dict[str, Exam] = {}
        self._sessions: dict[str, dict[str, dict[str, Any]]] = {}
        self._codes: dict[str, tuple[str, str]] = {}
        self._candidates: dict[tuple[str, str], str] = {}
        self._seq: dict[str, int] = {}
        self._outboxes: dict[str, _Outbox] = {}
        self._applied: dict[tuple[str, str], dict[str, int]] = {}  # (exam, command) -> sid: seq
        self._results: dict[tuple[str, str], dict[str, Any]] = {}
        self._log_size = log_size
        self._listeners: list[EventListener] = []
        self._hand_off = HandOff(self._notify_all)  # big batches after their callers
        self._nodes: dict[str, dict[str, Any]] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._drops: dict[str, dict[str, Drop]] = {}  # exam -> recent drops by member
        self._alerts: dict[str, tuple[float, dict[str, Any]]] = {}  # exam -> (until, alert)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()

    def add_resubscribe_listener(self, listener: Callable[[frozenset[str]], None]) -> None:
        """Nothing to do: in one process no event can be missed."""

    def hold_fan_out(self) -> Callable[[], None]:
        return self._hand_off.hold()

    def subscription_health(self) -> dict[str, Any]:
        return {"subscribed": True, "losses": 0, "recovered_events": 0, "exams_served": None,
                "events_received": None}

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Nothing to do: the listeners of `add_listener` already get every commit's events."""

    async def serve(self, exam_id: str) -> None:
        """Nothing to do: one process hears every exam."""

    def release(self, exam_id: str) -> None:
        """Nothing to do."""

    def add_listener(self, listener: EventListener) -> None:
        self._listeners.append(listener)

    def unheard(self, since: float, now: float) -> float:
        """Never: the store is this process."""
        return 0.0

    def _outbox(self, exam_id: str) -> _Outbox:
        box = self._outboxes.get(exam_id)
        if box is None:
            box = self._outboxes[exam_id] = _Outbox(self._log_size)
        return box

    async def put_exam(self, exam: Exam) -> None:
        self._exams[exam.id] = exam
        self._sessions.setdefault(exam.id, {})
        self._seq.setdefault(exam.id, 0)
        self._outbox(exam.id)

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
            if session.get("candidate_id"):
                key = (session["exam_id"], session["candidate_id"])
                self._candidates[key] = session["id"]

    async def get_sessions(
        self, exam_id: str, session_ids: list[str]
    ) -> list[dict[str, Any] | None]:
        exam_sessions = self._sessions.get(exam_id, {})
        result: list[dict[str, Any] | None] = []
        for sid in session_ids:
            session = exam_sessions.get(sid)
            result.append(dict(session) if session is not None else None)
        return result

    async def read_sessions(
        self, exam_id: str, session_ids: list[str]
    ) -> list[dict[str, Any] | None]:
        return await self.get_sessions(exam_id, session_ids)

    async def session_by_code(self, access_code: str) -> tuple[str, str] | None:
        return self._codes.get(access_code)

    async def session_by_candidate(self, exam_id: str, candidate_id: str) -> str | None:
        return self._candidates.get((exam_id, candidate_id))

    async def snapshot(
        self, exam_id: str, fields: tuple[str, ...] | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        values = self._sessions.get(exam_id, {}).values()
        if fields:
            sessions = [{name: s[name] for name in fields} for s in values]
        else:
            sessions = [dict(s) for s in values]
        return sessions, self._seq.get(exam_id, 0)

    async def stale_holders(
        self, exam_id: str, seen_before: float, dead_nodes: Collection[str] = ()
    ) -> list[str]:
        dead = set(dead_nodes)
        return [
            sid
            for sid, s in self._sessions.get(exam_id, {}).items()
            if s["connected"] and (
                s["last_seen"] is None or s["last_seen"] < seen_before
                or (dead and str(s["conn_id"] or "").partition("-")[0] in dead)
            )
        ]

    async def node_heartbeat(
        self, node_id: str, info: dict[str, Any], now: float, timeout: float
    ) -> list[str]:
        self._nodes[node_id] = {"id": node_id, "last_beat": now, "info": info}
        return [n for n, node in self._nodes.items() if node["last_beat"] < now - timeout]

    async def list_nodes(self) -> list[dict[str, Any]]:
        return [dict(node) for node in self._nodes.values()]

    async def events_since(self, exam_id: str, seq: int) -> list[Event] | None:
        box = self._outboxes.get(exam_id)
        events = box.log if box is not None else deque()
        current = self._seq.get(exam_id, 0)
        if seq > current:
            return None  # a sequence this exam never reached: the client needs a snapshot
        if seq == current:
            return []
        if not events or events[0].seq > seq + 1:
            return None
        return [event for event in events if event.seq > seq]

    async def commit(self, commits: list[Commit]) -> list[CommitResult]:
        results: list[CommitResult] = []
        by_exam: dict[str, list[Event]] = {}
        known = {  # fresh commits of command ids known before this call: refused, all of them
            (c.exam_id, c.command_id) for c in commits
            if c.fresh and c.command_id and (self._applied.get((c.exam_id, c.command_id))
                                             or (c.exam_id, c.command_id) in self._results)
        }
        for commit in commits:
            if commit.fresh and (commit.exam_id, commit.command_id) in known:
                results.append(CommitResult(ok=False, known=True))
                continue
            result = self._commit_one(commit)
            results.append(result)
            if result.events:
                by_exam.setdefault(commit.exam_id, []).extend(result.events)
        now = self._clock()
        for exam_id, events in by_exam.items():
            box = self._outbox(exam_id)
            for start in range(0, len(events), CLAIM_EVENTS):  # a bulk commit in parts
                box.next_id += 1
                box.entries.append(OutboxEntry(exam_id, str(box.next_id),
                                               events[start:start + CLAIM_EVENTS], [], now))
            box.log.extend(events)
            box.trim()
        for events in by_exam.values():
            self._hand_off(events)
        return results

    def _notify_all(self, events: list[Event]) -> None:
        """Each listener takes the whole batch before the next one starts (in seq order):
        the hub, the first listener, writes every frame of a bulk change before the
        drainer's and the drop alerts' listeners take their note of its events, not between
        the frames (docs/performance.md, "tenth session"). Listener errors are logged and
        never reach the caller of `commit`."""
        for listener in self._listeners:
            for event in events:
                try:
                    outcome = listener(event)
                except Exception:
                    log.exception("event listener failed")
                    continue
                if outcome is not None and inspect.isawaitable(outcome):
                    task = asyncio.ensure_future(outcome)
                    self._pending.add(task)
                    task.add_done_callback(self._pending.discard)

    def _commit_one(self, commit: Commit) -> CommitResult:
        if commit.members is not None:
            return CommitResult(ok=len(self._sessions.get(commit.exam_id, {})) == commit.members)
        session = self._sessions.get(commit.exam_id, {}).get(commit.session_id)
        if session is None:
            return CommitResult(ok=False, found=False)
        if commit.check_only:
            return CommitResult(ok=session["version"] == commit.expected_version)
        applied = None
        if commit.command_id:
            applied = self._applied.setdefault((commit.exam_id, commit.command_id), {})
            first = applied.get(commit.session_id)
            if first is not None:
                return CommitResult(ok=False, duplicate_seq=first)
        versioned = commit.expected_version is not None
        if versioned and session["version"] != commit.expected_version:
            return CommitResult(ok=False)
        if versioned or commit.guard is not None:
            if any(session.get(k) != v for k, v in (commit.guard or {}).items()) or (
                commit.live_only and session["status"] in FINAL_STATUSES
            ):
                return CommitResult(ok=False, guard_failed=True)
            session.update(commit.changes)
        if commit.expected_version is not None:
            session["version"] = commit.expected_version + 1
            for event in commit.events:
                event.changes["version"] = session["version"]
        events = []
        for event in commit.events:
            seq = self._seq.get(commit.exam_id, 0) + 1
            self._seq[commit.exam_id] = seq
            event.seq = seq
            events.append(event)
        if applied is not None and events:
            applied[commit.session_id] = events[0].seq
        return CommitResult(ok=True, events=events)

    async def ensure_seq(self, exam_id: str, minimum: int) -> None:
        if self._seq.get(exam_id, 0) < minimum:
            self._seq[exam_id] = minimum

    async def touch(
        self, holders: list[tuple[str, str, str]], now: float
    ) -> list[tuple[str, str, str]]:
        lost = []
        for exam_id, sid, conn_id in holders:
            session = self._sessions.get(exam_id, {}).get(sid)
            if session is None or session["conn_id"] != conn_id:
                continue
            if session["connected"]:
                session["last_seen"] = now
            elif session["status"] not in FINAL_STATUSES:
                lost.append((exam_id, sid, conn_id))
        return lost

    # -- commands ----------------------------------------------------------------------------

    async def command_result(self, exam_id: str, command_id: str) -> dict[str, Any] | None:
        return self._results.get((exam_id, command_id))

    async def command_applied(self, exam_id: str, command_id: str) -> dict[str, int]:
        return dict(self._applied.get((exam_id, command_id), {}))

    async def read_for_command(
        self, exam_id: str, command_id: str, session_ids: list[str],
        fields: tuple[str, ...] | None = None,
    ) -> tuple[dict[str, Any] | None, dict[str, int], list[dict[str, Any] | None]]:
        sessions = await self.get_sessions(exam_id, session_ids)
        if fields:
            sessions = [None if s is None else {name: s[name] for name in fields}
                        for s in sessions]
        if not command_id:
            return None, {}, sessions
        return (
            await self.command_result(exam_id, command_id),
            await self.command_applied(exam_id, command_id),
            sessions,
        )

    async def save_command_result(
        self, exam_id: str, command_id: str, result: dict[str, Any]
    ) -> None:
        self._results[(exam_id, command_id)] = result

    async def command_view(
        self, exam_id: str, fields: tuple[str, ...], whole: bool
    ) -> dict[str, dict[str, Any]] | None:
        return None  # the sessions are in this process already: commands read them

    def forget_view(self, exam_id: str) -> None:
        pass

    def warm_views(self, fields: tuple[str, ...]) -> None:
        pass  # no copy to make

    def command_copies(self) -> dict[str, int]:
        return {"made": 0, "reads": 0, "warmed": 0}

    # -- the outbox --------------------------------------------------------------------------

    async def append_audit(self, exam_id: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        box = self._outbox(exam_id)
        box.next_id += 1
        box.entries.append(OutboxEntry(exam_id, str(box.next_id), [], list(rows), self._clock()))

    async def outbox_exams(self) -> list[str]:
        return [exam_id for exam_id, box in self._outboxes.items() if box.entries]

    async def outbox_claim(
        self, exam_id: str, consumer: str, count: int, lease: float
    ) -> list[OutboxEntry] | None:
        box = self._outboxes.get(exam_id)
        if box is None:
            return []
        now = time.monotonic()
        holder, until = box.lease
        if holder and holder != consumer and until > now:
            return None
        box.lease = (consumer, now + lease)
        claimed: list[OutboxEntry] = []
        size = 0
        for entry in box.entries:  # whole entries, up to CLAIM_EVENTS events (at least one)
            size += len(entry.events) + len(entry.audit)
            if len(claimed) >= count or (claimed and size > CLAIM_EVENTS):
                break
            claimed.append(entry)
        return claimed

    async def outbox_ack(self, exam_id: str, consumer: str, entries: list[OutboxEntry]) -> None:
        box = self._outboxes.get(exam_id)
        if box is None:
            return
        done = {entry.entry_id for entry in entries}
        while box.entries and box.entries[0].entry_id in done:
            entry = box.entries.popleft()
            if entry.events:
                box.drained = max(box.drained, entry.events[-1].seq)
        box.trim()

    async def outbox_pending(self, exam_id: str) -> int:
        box = self._outboxes.get(exam_id)
        return 0 if box is None else len(box.entries)

    async def outbox_backlog(self, now: float) -> Backlog:
        backlog = Backlog()
        for box in self._outboxes.values():
            if not box.entries:
                continue
            backlog.exams += 1
            backlog.events += sum(len(e.events) + len(e.audit) for e in box.entries)
            first = box.entries[0].appended_at
            if backlog.oldest_at is None or first < backlog.oldest_at:
                backlog.oldest_at = first
        return backlog

    # -- drop alerts ---------------------------------------------------------------------------

    async def record_drops(
        self, exam_id: str, drops: list[Drop], window: float, threshold: int, active: float
    ) -> dict[str, Any] | None:
        recent = self._drops.setdefault(exam_id, {})
        for drop in drops:
            recent[drop.member] = drop
        newest = max(d.at for d in recent.values()) if recent else 0.0
        for member in [m for m, d in recent.items() if d.at < newest - window]:
            del recent[member]
        now = self._clock()
        current = self._alerts.get(exam_id)
        if current is not None and current[0] > now:
            self._alerts[exam_id] = (now + active, current[1])  # still dropping
            return None
        alert = alert_for(exam_id, list(recent.values()), window, threshold)
        if alert is not None:
            self._alerts[exam_id] = (now + active, alert)
        return alert

    async def active_alerts(self, exam_id: str) -> list[dict[str, Any]]:
        current = self._alerts.get(exam_id)
        if current is None or current[0] <= self._clock():
            return []
        return [dict(current[1])]
