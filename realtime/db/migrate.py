"""Schema migrations with Alembic: `upgrade()` brings a database to the newest schema.

Run at every start (cheap when up to date) and by `realtime migrate`. On PostgreSQL an
advisory lock serialises processes that start together; a database that an older version
created with `create_all` (tables but no version) is stamped as the first revision first.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from realtime.db.database import Database

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
FIRST_REVISION = "0001"
ADVISORY_LOCK = 7_312_026  # any constant shared by every process of this application


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    """The newest revision of the migration scripts (what `upgrade()` brings a database to)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _upgrade(connection: Connection, revision: str) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK})
    config = alembic_config(connection)
    current = MigrationContext.configure(connection).get_current_revision()
    if current is None and inspect(connection).has_table("exams"):
        command.stamp(config, FIRST_REVISION)  # created by create_all before migrations existed
    command.upgrade(config, revision)


async def upgrade(db: Database, revision: str = "head") -> None:
    """Migrate `db` to `revision` (default: the newest)."""
    async with db.engine.begin() as connection:
        await connection.run_sync(_upgrade, revision)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(db: Database) -> str | None:
    async with db.engine.connect() as connection:
        return await connection.run_sync(_current)
