"""SQL tables of e-mail delivery and password resets (on the shared `Base` metadata)."""

from __future__ import annotations

from sqlalchemy import Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from realtime.db.models import Base


class MailRow(Base):
    """One e-mail and how its delivery went: what the admin sees, on any process."""

    __tablename__ = "mail_deliveries"

    id: Mapped[str] = mapped_column(String, primary_key=True)
    kind: Mapped[str] = mapped_column(String)  # invitation | password_reset
    user_id: Mapped[str] = mapped_column(String, index=True)
    recipient: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String)  # pending | sent | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[float] = mapped_column(Float)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class PasswordResetRow(Base):
    """A password-reset token: only its SHA-256 is kept; single use, time-limited."""

    __tablename__ = "password_resets"

    id: Mapped[str] = mapped_column(String, primary_key=True)  # sha256(token) hex
    user_id: Mapped[str] = mapped_column(String, index=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
