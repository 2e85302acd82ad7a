"""`SessionService` with an audit entry for every staff command (and every refused one)."""

from __future__ import annotations

from typing import Any

from realtime.auth.principal import Principal
from realtime.errors import Forbidden
from realtime.identity.audit import AuditLog, Ctx
from realtime.sessions import BulkResult, SessionService, Target
from realtime.state.model import Action

MAX_IDS = 1000


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
            await self.audit.record(
                ctx, "session_command", f"exam:{exam_id}",
                command=action.value,
                command_id=result.command_id,
                target=_target(target),
                params={k: v for k, v in (params or {}).items() if k != "command_id"},
                applied=[a["session_id"] for a in result.applied[:MAX_IDS]],
                applied_count=len(result.applied),
                skipped_count=len(result.skipped),
            )
        return result
