"""Hall-wide drop alerts: many candidates of an exam dropping at once raise ONE alert.

Where it is detected, and why there: on the committed event stream. Every process that serves
the exam hears each `disconnected` event (whichever process committed it: the holder's own
process, a sweeper, a node-lost sweep) and reports it to the state store, which counts it by
its `seq` (`StateStore.record_drops`; in Redis one atomic script, `lua/drops_record.lua`).
Reporting the same drop from several processes counts it once, a process that missed an
event (not subscribed yet) is covered by the others, and the active-alert key doubles as the
lock: exactly one report raises the alert. That one process then commits the `drop_alert`
event through the ordinary path (outbox → every dashboard on every process → SQL history),
as a record-only commit on the session whose drop crossed the threshold, with the alert id as
its command id (a retry cannot record it twice). Not in the drainer: the alert must not wait
for SQL, and the drainer only runs where the lease is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from realtime.errors import backend_down
from realtime.state.drops import ALERT_ACTIVE_SECONDS, Drop
from realtime.state.model import Event, EventKind, Exam
from realtime.state.store import Commit, CommitResult, StateStore

log = logging.getLogger(__name__)

COMMIT_ATTEMPTS = 5  # the alert event's commit is retried this often (backend down)

GetExam = Callable[[str], Awaitable[Exam]]
CommitEvents = Callable[[list[Commit]], Awaitable[list[CommitResult]]]


class DropAlerts:
    """A store listener: gathers each exam's `disconnected` events of one loop turn, reports
    them, and commits the alert when this process raised it. Never blocks the fan-out."""

    def __init__(
        self,
        store: StateStore,
        get_exam: GetExam,
        commit: CommitEvents,
        active_seconds: float = ALERT_ACTIVE_SECONDS,
        retry_delay: float = 0.2,
    ) -> None:
        self.store = store
        self.get_exam = get_exam
        self.commit = commit
        self.active_seconds = active_seconds
        self.retry_delay = retry_delay
        self.raised = 0  # alerts raised by this process (metrics, tests)
        self._pending: dict[str, list[Event]] = {}
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def on_event(self, event: Event) -> None:
        if event.kind != EventKind.DISCONNECTED:
            return
        self._pending.setdefault(event.exam_id, []).append(event)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, {}
        for exam_id, events in pending.items():
            task = asyncio.ensure_future(self._report(exam_id, events))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _report(self, exam_id: str, events: list[Event]) -> None:
        try:
            exam = await self.get_exam(exam_id)
            settings = exam.settings
            if settings.drop_alert_count < 1:
                return
            ids = list(dict.fromkeys(e.session_id for e in events))
            sessions = await self.store.get_sessions(exam_id, ids)
            groups = {sid: str((s or {}).get("group") or "") for sid, s in zip(ids, sessions,
                                                                              strict=True)}
            drops = [Drop(e.seq, e.at, e.session_id, groups[e.session_id]) for e in events]
            alert = await self.store.record_drops(
                exam_id, drops, float(settings.drop_alert_window_seconds),
                settings.drop_alert_count, self.active_seconds,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("exam %s: could not count %d drops for the drop alert", exam_id,
                        len(events), exc_info=True)
            return
        if alert is not None:
            await self._record(exam_id, alert)

    async def _record(self, exam_id: str, alert: dict[str, Any]) -> None:
        """Commit the alert's event: to every dashboard, and into the history."""
        self.raised += 1
        log.warning("exam %s: %d candidates dropped within %s s: drop alert %s", exam_id,
                    alert["count"], alert["window_seconds"], alert["id"])
        delay = self.retry_delay
        for attempt in range(COMMIT_ATTEMPTS):
            event = alert_event(alert)
            try:
                [result] = await self.commit([Commit(exam_id, event.session_id, None, {},
                                                     [event], command_id=alert["id"])])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not backend_down(exc) or attempt == COMMIT_ATTEMPTS - 1:
                    log.exception("exam %s: the drop alert %s could not be recorded", exam_id,
                                  alert["id"])
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if not result.ok and result.duplicate_seq is None:
                log.warning("exam %s: the drop alert %s has no session to record it on",
                            exam_id, alert["id"])
            return


def alert_event(alert: dict[str, Any]) -> Event:
    """The `drop_alert` event: on the session whose drop raised it, changing nothing."""
    details = {k: v for k, v in alert.items() if k not in ("exam_id", "session_id")}
    return Event(
        exam_id=alert["exam_id"], session_id=alert["session_id"], kind=EventKind.DROP_ALERT,
        actor="system", at=float(alert["raised_at"]), details=details,
    )
