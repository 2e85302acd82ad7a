"""Shared fixtures. Redis tests run against a private redis-server, started once per run."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from clients import Api
from hypothesis import settings
from postgres import private_database
from redis_cluster import LocalCluster
from redis_server import RedisServer
from server import ServerProcess

from realtime.db.database import Database
from realtime.db.models import Base
from realtime.guests import models as _guest_tables  # noqa: F401 - every table on Base
from realtime.identity import models as _identity_tables  # noqa: F401
from realtime.state.memory import MemoryStore
from realtime.state.redis import RedisStore
from realtime.state.store import StateStore
from realtime.webhooks import models as _webhook_tables  # noqa: F401

StoreFactory = Callable[..., Awaitable[StateStore]]

# CI runs the property tests on a fixed sequence of examples (HYPOTHESIS_PROFILE=ci, set by
# .ci/run), so a landing is judged on the same cases every time; a developer's run explores
# new ones (and keeps any failure in .hypothesis/ to replay). Neither has a per-example
# deadline: it is a timing assertion, and on a loaded machine a pure example can take 200 ms.
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared server's URL; brings it back if an earlier test stopped it."""
    redis_server.start()
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A 3-master Redis Cluster shared by the run (tests that reshard or fail over start
    their own)."""
    cluster = LocalCluster(masters=3)
    try:
        yield cluster.start()
    finally:
        cluster.cleanup()


@pytest.fixture(params=["memory", "redis", "chunked", "cluster"])
def store_backend(request: pytest.FixtureRequest) -> str | None:
    """None for the memory store, else a Redis URL (Redis only starts when a test needs it).
    `chunked`: the single Redis, its stores committing an exam's commits of a call 2 by 2,
    each chunk its own script call (`RedisStore(commit_chunk=2)`)."""
    if request.param == "memory":
        return None
    if request.param == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    url: str = request.getfixturevalue("redis_url")
    return url


@pytest.fixture
async def make_store(
    store_backend: str | None, request: pytest.FixtureRequest
) -> AsyncIterator[StoreFactory]:
    """Started stores of the test's backend; Redis ones share a prefix unique to the test."""
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    stores: list[StateStore] = []
    chunked = request.node.callspec.params.get("store_backend") == "chunked"

    async def make(log_size: int = 10_000) -> StateStore:
        store: StateStore
        if store_backend is None:
            store = MemoryStore(log_size=log_size)
        elif chunked:
            store = RedisStore(store_backend, prefix=prefix, log_size=log_size, commit_chunk=2)
        else:
            store = RedisStore(store_backend, prefix=prefix, log_size=log_size)
        await store.start()
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> StateStore:
    return await make_store()


# -- end-to-end: a real uvicorn server per backend ------------------------------------------


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[ServerProcess]:
    """A running server on each state backend, shared by one test module."""
    process = ServerProcess.on_store(request.param, redis_server, "e")
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def api(server: ServerProcess) -> AsyncIterator[Api]:
    client = Api(server.url)
    yield client
    await client.close()


# -- SQL: SQLite and a private PostgreSQL database ---------------------------------------------


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database private to the test module."""
    yield from private_database()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each SQL test runs on a fresh SQLite file and on the module's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'rt.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def db(sql_url: str) -> AsyncIterator[Database]:
    """A connected Database with every table, empty (the PostgreSQL one is shared by the
    module, so each test starts from dropped and re-created tables)."""
    database = await Database.connect(sql_url)
    async with database.engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
    await database.create_all()
    try:
        yield database
    finally:
        await database.close()
