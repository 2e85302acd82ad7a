"""Sending e-mail through SMTP without holding up a request, and without losing one silently.

`Mailer.queue` records the message as `pending` in SQL (what the admin sees, from any process)
and hands it to a background task, which tries up to REALTIME_SMTP_RETRIES times with a
doubling backoff and records every attempt: `sent`, or `failed` with the last error (logged,
and in the audit). A message still pending when the process stops is marked `failed` too: the
admin resends it (the token it carried is only ever known to the mail, so it cannot be resent
as it was).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import aiosmtplib
from sqlalchemy import select

from realtime.config import Settings
from realtime.db.database import Database
from realtime.identity.audit import AuditLog, Ctx
from realtime.mail.models import MailRow

log = logging.getLogger(__name__)

PENDING, SENT, FAILED = "pending", "sent", "failed"
SYSTEM = Ctx("system", "")

Send = Callable[[EmailMessage], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class SmtpServer:
    """Where and how to hand mail over (from REALTIME_SMTP_*)."""

    host: str
    port: int
    starttls: bool
    tls: bool
    user: str
    password: str
    sender: str
    timeout: float

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpServer | None:
        if not settings.smtp_host:
            return None
        port = settings.smtp_port or (465 if settings.smtp_tls else
                                      587 if settings.smtp_starttls else 25)
        return cls(settings.smtp_host, port, settings.smtp_starttls, settings.smtp_tls,
                   settings.smtp_user, settings.smtp_password, settings.smtp_from,
                   settings.smtp_timeout)

    async def send(self, message: EmailMessage) -> None:
        """One attempt; raises whatever the connection or the server refused."""
        await aiosmtplib.send(
            message,
            hostname=self.host,
            port=self.port,
            username=self.user or None,
            password=self.password or None,
            use_tls=self.tls,
            start_tls=self.starttls,  # never tried unless asked for
            timeout=self.timeout,
        )


def delivery_view(row: MailRow) -> dict[str, Any]:
    return {"id": row.id, "kind": row.kind, "recipient": row.recipient, "status": row.status,
            "attempts": row.attempts, "last_error": row.last_error,
            "created_at": row.created_at, "sent_at": row.sent_at}


class Mailer:
    """Queues e-mails and delivers them in the background (one task per message)."""

    def __init__(
        self, server: SmtpServer | None, db: Database, audit: AuditLog,
        retries: int = 5, backoff: float = 2.0, clock: Callable[[], float] = time.time,
        send: Send | None = None,
    ) -> None:
        self.server = server
        self.db = db
        self.audit = audit
        self.retries = max(1, retries)
        self.backoff = backoff
        self.clock = clock
        self._send: Send | None = send or (server.send if server is not None else None)
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def configured(self) -> bool:
        return self._send is not None

    @property
    def sender(self) -> str:
        return self.server.sender if self.server is not None else "realtime@localhost"

    async def queue(self, kind: str, user_id: str, message: EmailMessage) -> dict[str, Any]:
        """Record the message as pending and start delivering it; returns its delivery."""
        if "From" not in message:
            message["From"] = self.sender
        row = MailRow(id=secrets.token_hex(8), kind=kind, user_id=user_id,
                      recipient=str(message["To"]), status=PENDING, attempts=0, last_error="",
                      created_at=self.clock(), sent_at=None)
        async with self.db._write() as session:
            session.add(row)
        view = delivery_view(row)
        task = asyncio.get_running_loop().create_task(self._deliver(row.id, message),
                                                      name=f"mail-{row.id}")
        self._tasks[row.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(row.id, None))
        return view

    async def _deliver(self, mail_id: str, message: EmailMessage) -> None:
        send = self._send
        if send is None:  # `queue` is only called when configured
            return
        delay = self.backoff
        for attempt in range(1, self.retries + 1):
            try:
                await send(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
                final = attempt == self.retries
                log.warning("e-mail %s to %s: attempt %d of %d failed: %s", mail_id,
                            message["To"], attempt, self.retries, error)
                await self._record(mail_id, FAILED if final else PENDING, attempt, error)
                if final:
                    return
                await asyncio.sleep(delay)
                delay *= 2
            else:
                await self._record(mail_id, SENT, attempt, "")
                return

    async def _record(self, mail_id: str, status: str, attempts: int, error: str) -> None:
        """Write the outcome of an attempt (retried a few times: SQL may be down too)."""
        for _ in range(5):
            try:
                async with self.db._write() as session:
                    row = await session.get(MailRow, mail_id)
                    if row is None:
                        return
                    row.status, row.attempts = status, attempts
                    if error:
                        row.last_error = error
                    if status == SENT:
                        row.sent_at = self.clock()
                    user_id, kind, recipient = row.user_id, row.kind, row.recipient
                break
            except Exception:
                log.exception("recording the delivery of e-mail %s failed; retrying", mail_id)
                await asyncio.sleep(1.0)
        else:
            return
        if status != PENDING:
            await self.audit.record(SYSTEM, "mail_sent" if status == SENT else "mail_failed",
                                    f"user:{user_id}", kind=kind, recipient=recipient,
                                    attempts=attempts, error=error)

    async def latest(self, user_ids: list[str], kind: str) -> dict[str, dict[str, Any]]:
        """The newest delivery of `kind` for each of the users that has one."""
        if not user_ids:
            return {}
        async with self.db._read() as session:
            rows = await session.scalars(
                select(MailRow).where(MailRow.user_id.in_(user_ids), MailRow.kind == kind)
                .order_by(MailRow.created_at)
            )
            return {row.user_id: delivery_view(row) for row in rows}

    async def close(self) -> None:
        """Stop delivering; what is still pending is marked failed (the admin resends it)."""
        tasks = list(self._tasks.items())
        for _, task in tasks:
            task.cancel()
        for mail_id, task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            with contextlib.suppress(Exception):
                async with self.db._write() as session:
                    row = await session.get(MailRow, mail_id)
                    if row is not None and row.status == PENDING:
                        row.status = FAILED
                        row.last_error = "not sent: the server stopped; resend it"
