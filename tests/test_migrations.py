"""Schema migrations: the migrated schema is exactly the models', on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from realtime.db import migrate
from realtime.db.database import Database
from realtime.db.models import Base
from realtime.guests import models as _guests  # noqa: F401 - all tables on Base.metadata
from realtime.identity import models as _identity  # noqa: F401
from realtime.mail import models as _mail  # noqa: F401
from realtime.webhooks import models as _webhooks  # noqa: F401


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_build_exactly_the_models_schema(sql_url: str) -> None:
    """Upgrading an empty database gives the models' schema; a second upgrade is a no-op."""
    url = sql_url
    db = await Database.connect(url)
    try:
        await migrate.upgrade(db)
        await migrate.upgrade(db)
        assert await migrate.current_revision(db) == migrate.head_revision()
        async with db.engine.connect() as connection:
            assert await connection.run_sync(_differences) == []
    finally:
        await db.close()
        if "postgresql" in url:  # leave the shared module database empty for the next test
            await _drop_all(url)


async def test_a_database_made_before_migrations_is_adopted(tmp_path: Path) -> None:
    """Tables made by create_all (no version table) are stamped, not created twice."""
    db = await Database.connect(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    try:
        await db.create_all()
        await migrate.upgrade(db)
        assert await migrate.current_revision(db) == migrate.head_revision()
    finally:
        await db.close()


async def test_audit_uids_migrate_onto_a_log_holding_older_rows(sql_url: str) -> None:
    """A database at the revision before audit uids holds rows written directly (no uid, two
    alike) and a row whose details carried a uid, stored twice. The upgrade keeps every row
    as it was; the carried uid becomes the first copy's key. Afterwards a drained row of a
    stored uid is skipped, new ones are stored once, and rows without a uid still go in."""
    import sqlalchemy as sa

    from realtime.identity.audit import AuditLog, Ctx

    url = sql_url
    db = await Database.connect(url)
    try:
        await migrate.upgrade(db, "mail")
        older = sa.table(
            "audit_log", sa.column("at", sa.Float), sa.column("actor", sa.String),
            sa.column("ip", sa.String), sa.column("action", sa.String),
            sa.column("subject", sa.String), sa.column("details", sa.JSON),
        )

        def row(n: int, **details: Any) -> dict[str, Any]:
            return {"at": 5.0, "actor": "staff:1", "ip": "", "action": "session_command",
                    "subject": "exam:e", "details": {"n": n, **details}}

        async with db.engine.begin() as connection:
            await connection.execute(sa.insert(older), [
                row(1), row(1), row(2, uid="old"), row(2, uid="old"),
            ])
        await migrate.upgrade(db)
        assert await migrate.current_revision(db) == migrate.head_revision()
        assert await _audit_log(db) == [(1, 1, None), (2, 1, None), (3, 2, "old"), (4, 2, None)]

        drained = {**row(3), "uid": "new"}
        await db.write_outbox([], [{**row(2), "uid": "old"}, drained, drained])
        await db.write_outbox([], [drained])
        await AuditLog(db, clock=lambda: 5.0).record(Ctx("staff:1"), "session_command",
                                                     "exam:e", n=4)
        assert [(n, uid) for _, n, uid in await _audit_log(db)] == [
            (1, None), (1, None), (2, "old"), (2, None), (3, "new"), (4, None),
        ]
    finally:
        await db.close()
        if "postgresql" in url:
            await _drop_all(url)


async def _audit_log(db: Database) -> list[tuple[int, Any, str | None]]:
    import sqlalchemy as sa

    query = sa.text("SELECT id, details, uid FROM audit_log ORDER BY id").columns(
        sa.column("id", sa.Integer), sa.column("details", sa.JSON), sa.column("uid", sa.String)
    )
    async with db.engine.connect() as connection:
        found = await connection.execute(query)
        return [(i, details["n"], uid) for i, details, uid in found]


async def _drop_all(url: str) -> None:
    from sqlalchemy import text

    db = await Database.connect(url)
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(Base.metadata.drop_all)
            await connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    finally:
        await db.close()
