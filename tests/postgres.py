"""Private PostgreSQL databases for tests, on the server at RT_TEST_PG_DSN (127.0.0.1:5432)."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator

import asyncpg
import pytest

PG_ADMIN_DSN = os.environ.get("RT_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def pg_admin(sql: str) -> None:
    """Run one statement on the maintenance database, on a private loop (sync fixtures)."""

    async def run() -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(run())
    finally:
        loop.close()


def private_database() -> Iterator[str]:
    """A fresh database (its URL), dropped afterwards. Fails, never skips, without a server."""
    name = f"rt_test_{secrets.token_hex(6)}"
    problem = None
    try:
        pg_admin(f'CREATE DATABASE "{name}"')
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        problem = repr(exc)
    if problem is not None:  # fail outside the except: one clear line, no chain
        pytest.fail(
            f"PostgreSQL is required for these tests but {PG_ADMIN_DSN} is not usable: {problem}"
            " (set RT_TEST_PG_DSN to point elsewhere)",
            pytrace=False,
        )
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1].split("?", 1)[0]


def refuse_connections(url: str) -> None:
    """An outage of one database: new connections are refused, existing ones are cut."""
    name = database_name(url)
    pg_admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
    pg_admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )


def allow_connections(url: str) -> None:
    pg_admin(f'ALTER DATABASE "{database_name(url)}" WITH ALLOW_CONNECTIONS true')
