"""SQL tables of webhooks: subscriptions, and one delivery row per (subscription, event).

A delivery row is written in the drainer's transaction, together with the event it carries, so
what SQL holds as history is exactly what will be delivered: a crash can neither lose nor
invent one. The row is the delivery's log too (status, attempts, last error).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from realtime.db.models import Base

PENDING = "pending"  # waiting for its (next) attempt
DELIVERED = "delivered"  # the receiver answered 2xx
FAILED = "failed"  # every attempt failed; not tried again
STATUSES = (PENDING, DELIVERED, FAILED)


class WebhookSubscriptionRow(Base):
    """Where to send which events. `exam_id` NULL: every exam. `kinds` empty: every kind."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    exam_id: Mapped[str | None] = mapped_column(String, nullable=True, index=True)
    kinds: Mapped[list[str]] = mapped_column(JSON, default=list)
    description: Mapped[str] = mapped_column(Text, default="")
    # The HMAC key. Kept in clear because signing needs it; shown to its creator only once.
    secret: Mapped[str] = mapped_column(String)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String, default="")
    updated_at: Mapped[float] = mapped_column(Float)


class WebhookDeliveryRow(Base):
    """One event (or test ping) for one subscription, and how its delivery went.

    `body` is the exact JSON sent on every attempt (the signature covers it). A dispatcher
    holds a row while it sends it (`lease_owner` until `lease_until`); a row whose lease ran
    out (its process died) is claimed again.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("subscription_id", "event_id", name="uq_webhook_deliveries_event"),
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_log", "subscription_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)  # the X-Realtime-Delivery id
    subscription_id: Mapped[str] = mapped_column(
        String, ForeignKey("webhook_subscriptions.id", ondelete="CASCADE")
    )
    event_id: Mapped[str | None] = mapped_column(String, nullable=True)  # NULL: a test ping
    exam_id: Mapped[str | None] = mapped_column(String, nullable=True)
    seq: Mapped[int | None] = mapped_column(Integer, nullable=True)
    kind: Mapped[str] = mapped_column(String)
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String, default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The latest failed attempts, oldest first: [{attempt, at, status_code, error}] (at most 10)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[float] = mapped_column(Float)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    last_attempt_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String, nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
