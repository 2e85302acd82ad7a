"""Webhook subscriptions and deliveries in SQL: the one place that reads or writes their rows.

Deliveries are created in the drainer's transaction (`stage`, an `OutboxHook`) and claimed by
any process's dispatcher with a lease (`claim`): on PostgreSQL `FOR UPDATE SKIP LOCKED`, on
SQLite the write transaction itself (BEGIN IMMEDIATE) keeps two claims apart. A claim whose
process dies runs out and is claimed again, so each delivery is sent at least once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Table, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from realtime.db.database import Database, event_id
from realtime.state.model import Event
from realtime.webhooks.models import (
    DELIVERED,
    FAILED,
    PENDING,
    WebhookDeliveryRow,
    WebhookSubscriptionRow,
)
from realtime.webhooks.signing import new_secret

MAX_ERRORS = 10  # failed attempts kept per delivery
_DELIVERIES: Table = WebhookDeliveryRow.__table__  # type: ignore[assignment]
_SUBS: Table = WebhookSubscriptionRow.__table__  # type: ignore[assignment]
Sub = WebhookSubscriptionRow
Delivery = WebhookDeliveryRow


def _new_id() -> str:
    return uuid.uuid4().hex


def _body(delivery_id: str, subscription_id: str, kind: str, now: float,
          event: dict[str, Any] | None) -> str:
    """The JSON every attempt of a delivery sends (and signs), byte for byte."""
    payload = {"id": delivery_id, "kind": kind, "subscription_id": subscription_id,
               "created_at": now, "event": event}
    return orjson.dumps(payload).decode()


def event_payload(event: Event) -> dict[str, Any]:
    """What a receiver gets of an event: its history entry as staff read it (no `changes`:
    they may hold private session fields and repeat what `after` and `details` say)."""
    return {
        "id": event_id(event),
        "exam_id": event.exam_id,
        "session_id": event.session_id,
        "seq": event.seq,
        "kind": str(event.kind),
        "actor": event.actor,
        "at": event.at,
        "before": event.before,
        "after": event.after,
        "details": event.details,
    }


def subscription_dict(row: WebhookSubscriptionRow) -> dict[str, Any]:
    """A subscription as the API shows it: never its secret."""
    return {
        "id": row.id,
        "url": row.url,
        "exam_id": row.exam_id,
        "kinds": list(row.kinds or []),
        "description": row.description,
        "active": row.active,
        "created_at": row.created_at,
        "created_by": row.created_by,
        "updated_at": row.updated_at,
    }


def delivery_dict(row: WebhookDeliveryRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "subscription_id": row.subscription_id,
        "kind": row.kind,
        "exam_id": row.exam_id,
        "seq": row.seq,
        "event_id": row.event_id,
        "status": row.status,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "last_status_code": row.last_status_code,
        "errors": list(row.errors or []),
        "created_at": row.created_at,
        "last_attempt_at": row.last_attempt_at,
        "next_attempt_at": row.next_attempt_at if row.status == PENDING else None,
        "delivered_at": row.delivered_at,
    }


@dataclass(frozen=True, slots=True)
class Claimed:
    """A delivery held by one dispatcher for one attempt."""

    id: str
    subscription_id: str
    url: str
    secret: str
    kind: str
    body: str
    attempts: int  # before this one


class WebhookStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self.on_new_deliveries: Callable[[], None] = lambda: None

    # -- subscriptions -------------------------------------------------------------------------

    async def create(
        self, *, url: str, exam_id: str | None, kinds: list[str], description: str,
        active: bool, actor: str,
    ) -> tuple[dict[str, Any], str]:
        """A new subscription, and its secret (returned this once)."""
        now = self.clock()
        row = Sub(id=_new_id()[:16], url=url, exam_id=exam_id, kinds=kinds,
                  description=description, secret=new_secret(), active=active,
                  created_at=now, created_by=actor, updated_at=now)
        async with self.db._write() as session:
            session.add(row)
        return subscription_dict(row), row.secret

    async def get(self, subscription_id: str) -> dict[str, Any] | None:
        async with self.db._read() as session:
            row = await session.get(Sub, subscription_id)
            return subscription_dict(row) if row is not None else None

    async def list_all(self) -> list[dict[str, Any]]:
        """Every subscription, oldest first, with its deliveries counted by status."""
        async with self.db._read() as session:
            rows = (await session.scalars(select(Sub).order_by(Sub.created_at, Sub.id))).all()
            counted = await session.execute(
                select(Delivery.subscription_id, Delivery.status, func.count())
                .group_by(Delivery.subscription_id, Delivery.status)
            )
            counts: dict[str, dict[str, int]] = {}
            for sid, status, count in counted:
                counts.setdefault(sid, {})[status] = int(count)
        return [
            {**subscription_dict(row),
             "counts": {s: counts.get(row.id, {}).get(s, 0) for s in (PENDING, DELIVERED, FAILED)}}
            for row in rows
        ]

    async def update(self, subscription_id: str, changes: dict[str, Any]) -> dict[str, Any] | None:
        """Change url, kinds, description or active; None if there is no such subscription."""
        async with self.db._write() as session:
            row = await session.get(Sub, subscription_id)
            if row is None:
                return None
            for key, value in changes.items():
                setattr(row, key, value)
            row.updated_at = self.clock()
            return subscription_dict(row)

    async def rotate_secret(self, subscription_id: str) -> str | None:
        """A new secret for the subscription (returned this once); None if unknown."""
        secret = new_secret()
        async with self.db._write() as session:
            result = await session.execute(
                update(Sub).where(Sub.id == subscription_id)
                .values(secret=secret, updated_at=self.clock())
            )
        return secret if result.rowcount else None  # type: ignore[attr-defined]

    async def delete(self, subscription_id: str) -> bool:
        """Remove the subscription and its delivery log."""
        async with self.db._write() as session:
            await session.execute(
                delete(Delivery).where(Delivery.subscription_id == subscription_id)
            )
            result = await session.execute(delete(Sub).where(Sub.id == subscription_id))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    # -- the delivery log ----------------------------------------------------------------------

    async def deliveries(
        self, subscription_id: str, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The subscription's latest deliveries, newest first."""
        stmt = select(Delivery).where(Delivery.subscription_id == subscription_id)
        if status:
            stmt = stmt.where(Delivery.status == status)
        stmt = stmt.order_by(Delivery.created_at.desc(), Delivery.id).limit(limit)
        async with self.db._read() as session:
            return [delivery_dict(row) for row in await session.scalars(stmt)]

    async def get_delivery(self, delivery_id: str) -> dict[str, Any] | None:
        async with self.db._read() as session:
            row = await session.get(Delivery, delivery_id)
            return delivery_dict(row) if row is not None else None

    async def enqueue_ping(self, subscription_id: str) -> dict[str, Any]:
        """A `ping` delivery for "send test": signed and retried like any other."""
        now = self.clock()
        delivery_id = _new_id()
        row = Delivery(
            id=delivery_id, subscription_id=subscription_id, event_id=None, exam_id=None,
            seq=None, kind="ping", body=_body(delivery_id, subscription_id, "ping", now, None),
            status=PENDING, attempts=0, last_error="", errors=[], created_at=now,
            next_attempt_at=now,
        )
        async with self.db._write() as session:
            session.add(row)
        self.on_new_deliveries()
        return delivery_dict(row)

    async def retry(self, delivery_id: str) -> dict[str, Any] | None:
        """Send a failed (or pending) delivery again now: one more attempt, counted on top of
        the earlier ones (a failed one that fails again stays failed)."""
        async with self.db._write() as session:
            row = await session.get(Delivery, delivery_id)
            if row is None:
                return None
            if row.status != DELIVERED:
                row.status, row.next_attempt_at = PENDING, self.clock()
            found = delivery_dict(row)
        self.on_new_deliveries()
        return found

    # -- OutboxHook: deliveries born with their events -----------------------------------------

    async def stage(self, conn: AsyncConnection, events: Sequence[Event]) -> bool:
        """One delivery per (active subscription, matching event), in the drainer's transaction;
        True if it added any (the dispatcher is woken for those, `committed`).

        Only events new to SQL come here, and (subscription, event) is unique, so a repeated
        drain adds nothing.
        """
        subs = (await conn.execute(
            select(_SUBS.c.id, _SUBS.c.exam_id, _SUBS.c.kinds).where(_SUBS.c.active.is_(True))
        )).all()
        if not subs:
            return False
        now = self.clock()
        rows: list[dict[str, Any]] = []
        for ev in events:
            payload: dict[str, Any] | None = None
            for sid, exam_id, kinds in subs:
                if (exam_id is not None and exam_id != ev.exam_id) or (
                    kinds and str(ev.kind) not in kinds
                ):
                    continue
                payload = payload or event_payload(ev)
                delivery_id = _new_id()
                rows.append({
                    "id": delivery_id, "subscription_id": sid, "event_id": event_id(ev),
                    "exam_id": ev.exam_id, "seq": ev.seq, "kind": str(ev.kind),
                    "body": _body(delivery_id, sid, str(ev.kind), now, payload),
                    "status": PENDING, "attempts": 0, "last_error": "", "errors": [],
                    "created_at": now, "next_attempt_at": now,
                })
        if rows:
            await conn.execute(self.db._insert(_DELIVERIES).on_conflict_do_nothing(), rows)
        return bool(rows)

    def committed(self) -> None:
        """Deliveries staged by `stage` are in SQL: the dispatcher may claim them."""
        self.on_new_deliveries()

    # -- dispatching ---------------------------------------------------------------------------

    async def claim(self, owner: str, limit: int, lease: float) -> list[Claimed]:
        """Up to `limit` due deliveries of active subscriptions, held by `owner` for `lease`
        seconds: oldest due first; those whose holder's lease ran out included."""
        now = self.clock()
        async with self.db._write() as session:
            found = (await session.execute(
                select(Delivery.id, Delivery.subscription_id, Sub.url, Sub.secret, Delivery.kind,
                       Delivery.body, Delivery.attempts)
                .join(Sub, Sub.id == Delivery.subscription_id)
                .where(
                    Delivery.status == PENDING,
                    Delivery.next_attempt_at <= now,
                    or_(Delivery.lease_until.is_(None), Delivery.lease_until < now),
                    Sub.active.is_(True),
                )
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(limit)
                .with_for_update(of=Delivery, skip_locked=True)
            )).all()
            if not found:
                return []
            await session.execute(
                update(Delivery).where(Delivery.id.in_([row[0] for row in found]))
                .values(lease_owner=owner, lease_until=now + lease)
            )
        return [Claimed(*row) for row in found]

    async def finish(
        self, owner: str, claimed: Claimed, *, ok: bool, status_code: int | None, error: str,
        retry_at: float | None,
    ) -> None:
        """Record one attempt: delivered, pending again from `retry_at`, or (no `retry_at`)
        failed for good. Ignored if `owner` no longer holds the delivery."""
        now = self.clock()
        async with self.db._write() as session:
            row = await session.get(Delivery, claimed.id, with_for_update=True)
            if row is None or row.lease_owner != owner:
                return  # the lease ran out and another dispatcher has it
            row.attempts += 1
            row.last_status_code = status_code
            row.last_attempt_at = now
            row.lease_owner = row.lease_until = None
            if ok:
                row.status, row.delivered_at = DELIVERED, now
                return
            row.last_error = error[:1000]
            failure = {"attempt": row.attempts, "at": now, "status_code": status_code,
                       "error": error[:300]}
            row.errors = [*(row.errors or []), failure][-MAX_ERRORS:]
            if retry_at is None:
                row.status = FAILED
            else:
                row.next_attempt_at = retry_at

    async def next_due(self) -> float | None:
        """When a pending delivery can next be claimed: the earliest due one not held, or the
        earliest end of a lease (its holder may have died). None: nothing is pending."""
        now = self.clock()
        free = or_(Delivery.lease_until.is_(None), Delivery.lease_until < now)
        async with self.db._read() as session:
            due = await session.scalar(
                select(func.min(Delivery.next_attempt_at)).where(Delivery.status == PENDING, free)
            )
            held = await session.scalar(
                select(func.min(Delivery.lease_until)).where(
                    Delivery.status == PENDING, Delivery.lease_until >= now
                )
            )
        times = [float(t) for t in (due, held) if t is not None]
        return min(times) if times else None

    async def purge(self, older_than: float) -> int:
        """Forget delivered and failed deliveries created before `older_than`."""
        async with self.db._write() as session:
            result = await session.execute(
                delete(Delivery).where(Delivery.status != PENDING,
                                       Delivery.created_at < older_than)
            )
        return int(result.rowcount)  # type: ignore[attr-defined]
