"""SQL tables of the guest pool, on the shared `Base` metadata (so `create_all` makes them).

`guest_accounts` is the pool: one row per `guestK` identity user, with the details typed by the
candidate holding it now (cleared on release). `guest_uses` is the durable record of every
reservation (who typed what, for which exam, and to whom the session was reassigned).
`guest_passwords` keeps a keyed digest of every password an account was ever given, so the same
guest password is never handed out twice.
"""

from __future__ import annotations

from sqlalchemy import Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from realtime.db.models import Base

FREE, RESERVED, RETIRED = "free", "reserved", "retired"


class GuestAccountRow(Base):
    __tablename__ = "guest_accounts"

    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    user_id: Mapped[str] = mapped_column(String, unique=True)
    login: Mapped[str] = mapped_column(String, unique=True)
    status: Mapped[str] = mapped_column(String, index=True)  # free | reserved | retired
    use_id: Mapped[str | None] = mapped_column(String, nullable=True)
    exam_id: Mapped[str | None] = mapped_column(String, nullable=True)
    title: Mapped[str | None] = mapped_column(String, nullable=True)
    first_name: Mapped[str | None] = mapped_column(Text, nullable=True)
    surname: Mapped[str | None] = mapped_column(Text, nullable=True)
    student_number: Mapped[str | None] = mapped_column(String, nullable=True)
    email: Mapped[str | None] = mapped_column(String, nullable=True)
    reserved_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    released_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class GuestUseRow(Base):
    """One reservation of a guest account. Kept after release (the record of who sat)."""

    __tablename__ = "guest_uses"
    __table_args__ = (Index("ix_guest_uses_user_exam", "user_id", "exam_id"),)

    id: Mapped[str] = mapped_column(String, primary_key=True)
    number: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[str] = mapped_column(String)
    login: Mapped[str] = mapped_column(String)
    exam_id: Mapped[str] = mapped_column(String, index=True)
    title: Mapped[str] = mapped_column(String, default="")
    first_name: Mapped[str] = mapped_column(Text)
    surname: Mapped[str] = mapped_column(Text)
    student_number: Mapped[str] = mapped_column(String, default="")
    email: Mapped[str] = mapped_column(String, default="")
    ip: Mapped[str] = mapped_column(String, default="")
    reserved_at: Mapped[float] = mapped_column(Float)
    released_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    session_id: Mapped[str | None] = mapped_column(String, nullable=True)
    reassigned_to: Mapped[str | None] = mapped_column(String, nullable=True)
    reassigned_by: Mapped[str | None] = mapped_column(String, nullable=True)
    reassigned_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class GuestPasswordRow(Base):
    """HMAC (server secret) of each password an account was given: never reused."""

    __tablename__ = "guest_passwords"
    __table_args__ = (UniqueConstraint("number", "digest", name="uq_guest_passwords"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    number: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String)
    at: Mapped[float] = mapped_column(Float)
