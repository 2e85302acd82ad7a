"""webhook subscriptions and their deliveries

Revision ID: webhooks
Revises: exam_archive
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "webhooks"
down_revision = "exam_archive"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database made by `create_all` (then stamped as the first revision) may have them.
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "webhook_subscriptions" not in existing:
        op.create_table(
            "webhook_subscriptions",
            sa.Column("id", sa.String(), nullable=False),
            sa.Column("url", sa.Text(), nullable=False),
            sa.Column("exam_id", sa.String(), nullable=True),
            sa.Column("kinds", sa.JSON(), nullable=False),
            sa.Column("description", sa.Text(), nullable=False),
            sa.Column("secret", sa.String(), nullable=False),
            sa.Column("active", sa.Boolean(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("created_by", sa.String(), nullable=False),
            sa.Column("updated_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        with op.batch_alter_table("webhook_subscriptions", schema=None) as batch_op:
            batch_op.create_index(
                batch_op.f("ix_webhook_subscriptions_exam_id"), ["exam_id"], unique=False
            )
    if "webhook_deliveries" not in existing:
        op.create_table(
            "webhook_deliveries",
            sa.Column("id", sa.String(), nullable=False),
            sa.Column("subscription_id", sa.String(), nullable=False),
            sa.Column("event_id", sa.String(), nullable=True),
            sa.Column("exam_id", sa.String(), nullable=True),
            sa.Column("seq", sa.Integer(), nullable=True),
            sa.Column("kind", sa.String(), nullable=False),
            sa.Column("body", sa.Text(), nullable=False),
            sa.Column("status", sa.String(), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("last_error", sa.Text(), nullable=False),
            sa.Column("last_status_code", sa.Integer(), nullable=True),
            sa.Column("errors", sa.JSON(), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("next_attempt_at", sa.Float(), nullable=False),
            sa.Column("last_attempt_at", sa.Float(), nullable=True),
            sa.Column("delivered_at", sa.Float(), nullable=True),
            sa.Column("lease_owner", sa.String(), nullable=True),
            sa.Column("lease_until", sa.Float(), nullable=True),
            sa.ForeignKeyConstraint(
                ["subscription_id"], ["webhook_subscriptions.id"], ondelete="CASCADE"
            ),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint(
                "subscription_id", "event_id", name="uq_webhook_deliveries_event"
            ),
        )
        with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
            batch_op.create_index(
                "ix_webhook_deliveries_due", ["status", "next_attempt_at"], unique=False
            )
            batch_op.create_index(
                "ix_webhook_deliveries_log", ["subscription_id", "created_at"], unique=False
            )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_subscriptions")
