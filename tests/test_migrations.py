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


async def _drop_all(url: str) -> None:
    from sqlalchemy import text

    db = await Database.connect(url)
    try:
        async with db.engine.begin() as connection:
            await connection.run_sync(Base.metadata.drop_all)
            await connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    finally:
        await db.close()
