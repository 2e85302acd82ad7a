"""audit rows keyed by a unique id: audit_log.uid, unique (NULLs allowed, never colliding)

The drainer inserts an outbox audit row with ON CONFLICT (uid) DO NOTHING, so no row is
stored twice: neither by two drains overlapping after a lease ran out (PostgreSQL's NOT EXISTS
could not see the other transaction's uncommitted row) nor by a batch that repeats a row.
Rows written directly (logins, user changes, ...) and every row stored before this revision
keep a NULL uid; a row whose details carried a `uid` gets it, the first of a repeated one only
(the later copies keep NULL: the audit log is append-only, nothing is deleted).

Revision ID: audit_uid
Revises: mail
Create Date: 2026-11-27 15:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "audit_uid"
down_revision = "mail"
branch_labels = None
depends_on = None

INDEX = "uq_audit_log_uid"


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    # A database made by `create_all` (then stamped as the first revision) may have both.
    columns = {c["name"] for c in inspector.get_columns("audit_log")}
    indexes = {i["name"] for i in inspector.get_indexes("audit_log")}
    if "uid" not in columns:
        with op.batch_alter_table("audit_log", schema=None) as batch_op:
            batch_op.add_column(sa.Column("uid", sa.String(), nullable=True))
        _backfill(bind)
    if INDEX not in indexes:
        with op.batch_alter_table("audit_log", schema=None) as batch_op:
            batch_op.create_index(INDEX, ["uid"], unique=True)


def _backfill(bind: sa.engine.Connection) -> None:
    """uid from the details of the rows that carry one; the lowest id of each value only."""
    audit = sa.table(
        "audit_log", sa.column("id", sa.Integer), sa.column("uid", sa.String),
        sa.column("details", sa.JSON),
    )
    other = audit.alias("carrier")
    carried = other.c.details["uid"].as_string()
    first = sa.select(sa.func.min(other.c.id)).where(carried.is_not(None)).group_by(carried)
    bind.execute(
        sa.update(audit)
        .where(audit.c.id.in_(first))
        .values(uid=audit.c.details["uid"].as_string())
    )


def downgrade() -> None:
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(INDEX)
        batch_op.drop_column("uid")
