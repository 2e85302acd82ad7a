"""The audit log: who did what, when, from where. Append-only (rows are never changed)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, or_, select

from realtime.db.database import Database
from realtime.identity.csvutil import iso, to_csv
from realtime.identity.models import AuditRow

log = logging.getLogger(__name__)

AUDIT_CSV_HEADER = ("time", "actor", "ip", "action", "subject", "details")


@dataclass(frozen=True, slots=True)
class Ctx:
    """Who is acting and from where: what every audited operation is given."""

    actor: str
    ip: str = ""


class AuditLog:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    async def record(
        self, ctx: Ctx, action: str, subject: str = "", **details: Any
    ) -> None:
        """Append one entry. Never raises: a failing audit write is logged, not fatal."""
        await self.write({
            "at": self.clock(),
            "actor": ctx.actor,
            "ip": ctx.ip,
            "action": action,
            "subject": subject,
            "details": details,
        })

    async def write(self, row: dict[str, Any]) -> None:
        """Append one entry made by the caller. Never raises (as `record`). A row with a
        `uid` is stored once however often it is written, here or by the outbox's drainer
        (ON CONFLICT (uid) DO NOTHING); one without is always added."""
        try:
            async with self.db._write() as session:
                if row.get("uid"):
                    await session.execute(
                        self.db._insert(AuditRow.__table__)  # type: ignore[arg-type]
                        .on_conflict_do_nothing(index_elements=[AuditRow.uid]),
                        [row],
                    )
                else:
                    await session.execute(insert(AuditRow), [row])
        except Exception:
            log.exception("audit write failed: %s", row)

    async def query(
        self,
        user: str | None = None,
        since: float | None = None,
        until: float | None = None,
        action: str | None = None,
        limit: int = 1000,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Entries oldest first (or newest first: the latest `limit` entries).
        `user` is a user id: entries by or about that user."""
        stmt = select(AuditRow)
        if user:
            stmt = stmt.where(
                or_(
                    AuditRow.actor == f"staff:{user}",
                    AuditRow.actor == user,
                    AuditRow.subject == f"user:{user}",
                )
            )
        if since is not None:
            stmt = stmt.where(AuditRow.at >= since)
        if until is not None:
            stmt = stmt.where(AuditRow.at < until)
        if action:
            stmt = stmt.where(AuditRow.action == action)
        if newest_first:
            stmt = stmt.order_by(AuditRow.at.desc(), AuditRow.id.desc()).limit(limit)
        else:
            stmt = stmt.order_by(AuditRow.at, AuditRow.id).limit(limit)
        async with self.db._read() as session:
            rows = list(await session.scalars(stmt))
        return [
            {
                "id": r.id,
                "at": r.at,
                "actor": r.actor,
                "ip": r.ip,
                "action": r.action,
                "subject": r.subject,
                "details": dict(r.details or {}),
            }
            for r in rows
        ]


def audit_csv(entries: list[dict[str, Any]]) -> str:
    import json

    return to_csv(
        AUDIT_CSV_HEADER,
        (
            [iso(e["at"]), e["actor"], e["ip"], e["action"], e["subject"],
             json.dumps(e["details"], sort_keys=True)]
            for e in entries
        ),
    )
