"""`SessionService` with an audit entry for every staff command (and every refused one).

The entry of an applied command goes into the exam's outbox, set off as the answer is written (its
events, which name the actor and the command id, are in the outbox before it), and reaches SQL
with the events (the drainer); it never holds up nor fails the answer. On Redis it goes with the
command's answer to keep, in the next command round trip (`RedisStore.append_audit`): not behind
the commits in flight.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from realtime.auth.principal import Principal
from realtime.errors import Forbidden
from realtime.identity.audit import AuditLog, Ctx
from realtime.sessions import BulkResult, SessionService, Target
from realtime.state.model import Action

MAX_IDS = 1000
log = logging.getLogger(__name__)


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
                # Its key in SQL: the drainer stores it once however often it is written.
                "uid": uuid.uuid4().hex,
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
            self._background(self._append_audit(exam_id, row))
        return result

    async def _append_audit(self, exam_id: str, row: dict[str, Any]) -> None:
        """Into the outbox (the answer does not wait for it: see docs/architecture.md);
        straight into SQL if the state store refuses it."""
        assert self.audit is not None
        try:
            await self.store.append_audit(exam_id, [row])
        except Exception:
            log.warning("audit entry for %s kept in SQL directly",
                        row["details"]["command_id"], exc_info=True)
            # The same row, uid and all: if the store did append it after all (an answer
            # lost after the script ran), the drainer's copy is then skipped, not doubled.
            await self.audit.write(row)
