"""e-mail deliveries and password resets

Revision ID: mail
Revises: webhooks
Create Date: 2026-11-26 19:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "mail"
down_revision = "webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database made by `create_all` before migrations existed is stamped 0001 and upgraded
    # from there: its tables may already include these.
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "mail_deliveries" not in existing:
        _create_mail_deliveries()
    if "password_resets" not in existing:
        _create_password_resets()


def _create_mail_deliveries() -> None:
    op.create_table(
        "mail_deliveries",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("recipient", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("sent_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("mail_deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mail_deliveries_user_id"), ["user_id"], unique=False)


def _create_password_resets() -> None:
    op.create_table(
        "password_resets",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("used_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("password_resets", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_password_resets_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("password_resets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_password_resets_user_id"))
    op.drop_table("password_resets")
    with op.batch_alter_table("mail_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mail_deliveries_user_id"))
    op.drop_table("mail_deliveries")
