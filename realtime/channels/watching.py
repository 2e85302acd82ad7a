"""Watching one exam: a snapshot or the missed events, then live deltas, without a gap.

Shared by the dashboard socket (`realtime.channels.proctor`) and the event stream
(`realtime.channels.event_stream`): both register a `Watcher` before reading, send what they
read, then let the watcher deliver what arrived meanwhile (`Watcher.activate`). Group scope is
checked on the way in, on the snapshot or catch-up and on every delta; `scope_watch` re-reads
the exam's groups so a change made by another process re-scopes the watcher too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from realtime.auth.permissions import Permission
from realtime.auth.principal import Principal
from realtime.errors import Forbidden
from realtime.hub.hub import Outlet, Watcher, public_event
from realtime.identity import scope
from realtime.runtime import Runtime
from realtime.state.model import public_view

log = logging.getLogger(__name__)


async def start_watching(
    runtime: Runtime,
    outlet: Outlet,
    principal: Principal,
    exam_id: str,
    last_seq: int | None,
    previous: Watcher | None = None,
) -> Watcher:
    """Subscribe `outlet` to the exam: it gets an `events` message with what followed
    `last_seq` when the event log still reaches back, else a `snapshot`; then live deltas.

    Raises Forbidden without the permission to view sessions, NotFound for an exam unknown or
    out of the principal's scope (the same answer, so scope leaks nothing)."""
    if not principal.can(Permission.VIEW_SESSIONS):
        raise Forbidden("you may not view sessions")
    exam = await runtime.service.exam_in_scope(exam_id, principal)
    if previous is not None:
        runtime.hub.remove_watcher(previous)
    watcher = Watcher(outlet, exam_id, principal, exam.groups)
    await runtime.hub.attach_watcher(watcher)  # before reading: nothing committed meanwhile is lost
    try:
        if last_seq is not None:
            if not principal.unrestricted:  # scope checks need each session's group
                sessions, _ = await runtime.store.snapshot(exam_id)
                watcher.groups.update({s["id"]: s["group"] for s in sessions})
            missed = await runtime.store.events_since(exam_id, last_seq)
            if missed is not None:
                events = [public_event(e) for e in missed if watcher.visible(e)]
                seq = missed[-1].seq if missed else last_seq
                outlet.send({"type": "events", "exam_id": exam_id, "events": events, "seq": seq})
                watcher.activate(seq)
                return watcher
        sessions, seq = await runtime.store.snapshot(exam_id)
        visible = []
        for session in sessions:
            watcher.groups[session["id"]] = session["group"]
            if scope.sees_session(principal, exam.groups, session["group"]):
                visible.append(public_view(session))
        visible.sort(key=lambda s: (s["candidate_name"], s["id"]))
        seen = {s["id"] for s in visible}
        alerts = [a for a in await runtime.store.active_alerts(exam_id)
                  if a.get("session_id") in seen]  # scope: as its event (on that session)
        outlet.send({"type": "snapshot", "exam": exam.to_dict(), "sessions": visible, "seq": seq,
                     "alerts": alerts})
        watcher.activate(seq)
        return watcher
    except BaseException:
        runtime.hub.remove_watcher(watcher)
        raise


async def _rescope(
    outlet: Outlet, runtime: Runtime, current: list[Watcher | None], interval: float
) -> None:
    while not outlet.closing:
        await asyncio.sleep(interval)
        watcher = current[0]
        if watcher is None:
            continue
        try:
            exam = await runtime.service.get_exam(watcher.exam_id)
        except Exception:  # a backend outage: reported elsewhere; try again next time
            log.debug("re-checking the scope of a dashboard failed", exc_info=True)
            continue
        watcher.regroup(exam.groups)


@contextlib.asynccontextmanager
async def scope_watch(
    outlet: Outlet, runtime: Runtime, principal: Principal, current: list[Watcher | None],
    interval: float,
) -> AsyncIterator[None]:
    """Re-read the watched exam's groups every `interval` seconds: a change made by another
    process re-scopes this watcher too (one made here does so at once: `Hub.exam_changed`).
    Unrestricted principals see every exam whatever its groups: nothing to watch."""
    if principal.unrestricted:
        yield
        return
    task = asyncio.create_task(_rescope(outlet, runtime, current, interval), name="ws-scope")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
