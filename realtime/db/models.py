"""SQL tables: the durable record of exams, sessions, their history and irregularities.

Live state lives in the state store; these rows are what survives it. Only generic column types
are used so the same schema runs on SQLite (single node, tests) and PostgreSQL (production).
Times are epoch seconds as floats, like everywhere else in the project.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base; `Base.metadata` holds the whole schema."""


class ExamRow(Base):
    __tablename__ = "exams"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    title: Mapped[str] = mapped_column(Text)
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    starts_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ends_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    duration_minutes: Mapped[int] = mapped_column(Integer, default=60)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float)
    # Archived (soft-deleted): hidden from the exam list by default, kept with all its history.
    archived_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    archived_by: Mapped[str | None] = mapped_column(String, nullable=True)


class SessionRow(Base):
    """The session registry plus the latest known public state.

    `candidate_id` and `access_code` are stored as NULL when empty so that guests without a
    candidate id (or sessions without a code) do not collide on the unique constraints.
    """

    __tablename__ = "sessions"
    __table_args__ = (UniqueConstraint("exam_id", "candidate_id", name="uq_sessions_candidate"),)

    id: Mapped[str] = mapped_column(String, primary_key=True)
    exam_id: Mapped[str] = mapped_column(
        String, ForeignKey("exams.id", ondelete="CASCADE"), index=True
    )
    candidate_id: Mapped[str | None] = mapped_column(String, nullable=True)
    candidate_name: Mapped[str] = mapped_column(Text, default="")
    group: Mapped[str] = mapped_column(String, default="")
    access_code: Mapped[str | None] = mapped_column(String, unique=True, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[float] = mapped_column(Float)


class EventRow(Base):
    """One history entry. (exam_id, seq) is the idempotency key of a write.

    The unique constraint's index leads with exam_id, so it also serves exam-wide reads; the
    (session_id, seq) index serves per-session history in order without a sort.
    """

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("exam_id", "seq", name="uq_events_exam_seq"),
        Index("ix_events_session_seq", "session_id", "seq"),
    )

    id: Mapped[str] = mapped_column(String, primary_key=True)
    exam_id: Mapped[str] = mapped_column(String)
    session_id: Mapped[str] = mapped_column(String)
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String)
    kind: Mapped[str] = mapped_column(String)
    before: Mapped[str | None] = mapped_column(String, nullable=True)
    after: Mapped[str | None] = mapped_column(String, nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    changes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class IrregularityRow(Base):
    __tablename__ = "irregularities"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    exam_id: Mapped[str] = mapped_column(String, index=True)
    session_id: Mapped[str] = mapped_column(String, index=True)
    category: Mapped[str] = mapped_column(String)
    note: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String)
    at: Mapped[float] = mapped_column(Float)
