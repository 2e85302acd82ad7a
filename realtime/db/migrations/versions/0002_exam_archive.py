"""exams can be archived (soft delete): archived_at, archived_by

Revision ID: exam_archive
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "exam_archive"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A database made by `create_all` and then stamped as 0001 has these columns already.
    have = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("exams")}
    with op.batch_alter_table("exams", schema=None) as batch_op:
        if "archived_at" not in have:
            batch_op.add_column(sa.Column("archived_at", sa.Float(), nullable=True))
        if "archived_by" not in have:
            batch_op.add_column(sa.Column("archived_by", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("exams", schema=None) as batch_op:
        batch_op.drop_column("archived_by")
        batch_op.drop_column("archived_at")
