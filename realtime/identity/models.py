"""SQL tables of the identity layer, on the shared `Base` metadata (so `create_all` makes them).

Times are epoch seconds as floats, like everywhere else in the project.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from realtime.db.models import Base


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    full_name: Mapped[str] = mapped_column(Text)
    email: Mapped[str] = mapped_column(String, unique=True)  # stored lower-cased
    login: Mapped[str | None] = mapped_column(String, unique=True, nullable=True)  # lower-cased
    job_title: Mapped[str] = mapped_column(Text, default="")
    phone: Mapped[str] = mapped_column(String, default="")
    roles: Mapped[list[str]] = mapped_column(JSON, default=list)
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String, index=True)  # invited | active | deactivated
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    activation_hash: Mapped[str | None] = mapped_column(String, unique=True, nullable=True)
    activation_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    activated_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    deactivated_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_login_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_logout_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class AuthTokenRow(Base):
    """A staff login session. Only the token's SHA-256 is stored."""

    __tablename__ = "auth_tokens"

    id: Mapped[str] = mapped_column(String, primary_key=True)  # sha256(token) hex
    user_id: Mapped[str] = mapped_column(String, index=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ip: Mapped[str] = mapped_column(String, default="")


class LoginFailureRow(Base):
    """Failed logins per key (a user id, or the login typed for unknown users)."""

    __tablename__ = "login_failures"

    key: Mapped[str] = mapped_column(String, primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[float] = mapped_column(Float)
    blocked_until: Mapped[float | None] = mapped_column(Float, nullable=True)


class AuditRow(Base):
    """Append-only: rows are only ever inserted.

    `uid` is the idempotency key of a row that reaches SQL through the outbox (a staff
    command's): the drainer inserts it with ON CONFLICT (uid) DO NOTHING, so a batch written
    twice (a repeat after a crash, two drains overlapping after a lease ran out, a batch that
    repeats a row) stores it once. Rows written directly have none: NULLs never collide in a
    unique index (SQLite and PostgreSQL alike).
    """

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_actor_at", "actor", "at"),
        Index("uq_audit_log_uid", "uid", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String)  # "staff:<user id>", "anonymous", ...
    ip: Mapped[str] = mapped_column(String, default="")
    action: Mapped[str] = mapped_column(String, index=True)
    subject: Mapped[str] = mapped_column(String, default="", index=True)  # e.g. "user:<id>"
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    uid: Mapped[str | None] = mapped_column(String, nullable=True, default=None)
