"""`SessionService` with an audit entry for every staff command (and every refused one).

The entry of an applied command is held before the command is answered: in the exam's outbox
(after the command's events, which name the actor and the command id), or straight in SQL if
the state store refuses it; it reaches SQL with the events (the drainer). A process killed
after the commit and before the row is held has answered nothing, and the retry with the same
`command_id` holds the row (docs/architecture.md, §6). On Redis the row goes with the
command's answer to keep, in the next command round trip (`RedisStore.append_audit`): not
behind the commits in flight. A row of a command with a caller's `command_id` has a uid made
from the exam, that id and the actor, so however often its retries hold it, SQL keeps one.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

from realtime.auth.principal import Principal
from realtime.errors import Forbidden
from realtime.identity.audit import AuditLog, Ctx
from realtime.sessions import BulkResult, SessionService, Target
from realtime.state.handoff import BIG_BATCH
from realtime.state.model import Action

MAX_IDS = 1000
# The namespace of the uids of audit rows of commands with a caller's command id (uuid5).
COMMAND_AUDIT = uuid.UUID("6c1f3a52-5d0e-4e8e-9a51-0f3b8a2f4c17")
log = logging.getLogger(__name__)


def audit_uid(exam_id: str, command_id: str, actor: str) -> str:
    """The audit row's key in SQL (`audit_log.uid`): the drainer stores it once however often
    it is written. With the caller's `command_id`, the same for every retry of the command by
    the same actor (whose kept answer it gets back: the same command), so a retry after a
    kill that came after the row was held does not double it; without one, a new id (such a
    retry applies the command again: another row)."""
    if not command_id:
        return uuid.uuid4().hex
    return uuid.uuid5(COMMAND_AUDIT, f"{exam_id}\n{command_id}\n{actor}").hex


def _bulk(target: Target) -> bool:
    """A command that may commit `BIG_BATCH` events in one call (as `SessionService.command`
    counts them): its fan-out waits for its caller."""
    return target.is_filter or len(target.session_ids or ()) >= BIG_BATCH


def _target(target: Target) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if target.all:
        out["all"] = True
    for key in ("session_ids", "status", "group", "search"):
        value = getattr(target, key)
        if value:
            out[key] = value[:MAX_IDS] if isinstance(value, list) else value
    return out


class AuditedSessionService(SessionService):
    audit: AuditLog | None = None

    async def command(
        self,
        exam_id: str,
        action: Action,
        target: Target,
        principal: Principal,
        params: dict[str, Any] | None = None,
    ) -> BulkResult:
        ctx = Ctx(principal.actor, principal.extra.get("ip", ""))
        try:
            result = await super().command(exam_id, action, target, principal, params)
        except Forbidden as exc:
            if self.audit is not None:
                await self.audit.record(
                    ctx, "permission_denied", f"exam:{exam_id}", command=action.value,
                    target=_target(target), message=exc.message,
                )
            raise
        if self.audit is not None:
            row: dict[str, Any] = {
                "uid": audit_uid(exam_id, (params or {}).get("command_id") or "", ctx.actor),
                "at": self.audit.clock(),
                "actor": ctx.actor,
                "ip": ctx.ip,
                "action": "session_command",
                "subject": f"exam:{exam_id}",
                "details": {
                    "command": action.value,
                    "command_id": result.command_id,
                    "target": _target(target),
                    "params": {k: v for k, v in (params or {}).items() if k != "command_id"},
                    "applied": [a["session_id"] for a in result.applied[:MAX_IDS]],
                    "applied_count": len(result.applied),
                    "skipped_count": len(result.skipped),
                },
            }
            # Held before the answer: a kill between an answer and its row would lose the
            # row of a command its issuer was told was applied. (Not in the commit's own
            # atomic step: the row says what the whole command applied and skipped, known
            # only from its commits' results, which may take more than one commit call.)
            # Shielded: a caller cancelled meanwhile does not cut it off (`settle` waits).
            # A bulk command's hall waits for it too (for the round trip, not for SQL), so
            # the answer is still written first (`realtime.state.handoff`).
            release = self.store.hold_fan_out() if _bulk(target) else None
            try:
                await asyncio.shield(self._background(self._append_audit(exam_id, row, release)))
            finally:
                if release is not None:
                    release()
        return result

    async def _append_audit(
        self, exam_id: str, row: dict[str, Any], release: Callable[[], None] | None = None
    ) -> None:
        """Into the outbox; straight into SQL if the state store refuses it (the fan-out held
        by `release` is released first). Never raises: the command is applied whatever
        becomes of its row, and must be answered so."""
        assert self.audit is not None
        try:
            await self.store.append_audit(exam_id, [row])
        except Exception:
            if release is not None:
                release()
            log.warning("audit entry for %s kept in SQL directly",
                        row["details"]["command_id"], exc_info=True)
            # The same row, uid and all: if the store did append it after all (an answer
            # lost after the script ran), the drainer's copy is then skipped, not doubled.
            try:
                await self.audit.write(row)
            except Exception:
                log.error("audit entry for %s lost: neither the state store nor SQL took it "
                          "(the command's events, with its actor and id, are in its history)",
                          row["details"]["command_id"], exc_info=True)
