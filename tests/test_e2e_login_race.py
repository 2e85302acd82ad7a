"""The login lockout under concurrent guessing, on real servers over SQLite and PostgreSQL:
the block check and the failure count are one SQL step, so of any burst at most
`REALTIME_LOGIN_MAX_FAILURES` passwords are ever checked and a right password racing in
after the limit is refused."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from clients import Api
from server import ServerProcess
from test_identity_e2e import PASSWORD, make_user

BURST = 60
LIMIT = 5


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def lserver(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """One server (memory state) on each SQL database."""
    database_url = None if request.param == "sqlite" else str(request.getfixturevalue("pg_url"))
    # The per-address login limit (tests/test_limits_e2e.py) is off: every guess here comes
    # from 127.0.0.1, and this module is about the per-account block alone.
    process = ServerProcess(database_url=database_url, login_max_failures=LIMIT, login_rate=0)
    process.start()
    yield process
    process.stop()


@pytest.fixture
async def admin(lserver: ServerProcess) -> AsyncIterator[Api]:
    client = Api(lserver.url)
    yield client
    await client.close()


async def _burst(url: str, login: str, passwords: list[str]) -> list[int]:
    """Every password at once, each on its own connection; the statuses in the same order."""
    limits = httpx.Limits(max_connections=len(passwords))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        responses = await asyncio.gather(*(
            client.post("/api/v1/auth/login", json={"login": login, "password": p})
            for p in passwords
        ))
    return [r.status_code for r in responses]


async def _checked(admin: Api, user_id: str) -> int:
    """How many wrong passwords the server actually checked (one `login_failed` each)."""
    audit = (await admin.http.get("/api/v1/audit", params={"user": user_id,
                                                           "action": "login_failed"})).json()
    return len(audit["entries"])


async def test_a_burst_of_guesses_checks_only_the_limit(lserver: ServerProcess,
                                                        admin: Api) -> None:
    """60 parallel wrong guesses: exactly 5 are checked, every other one is refused unchecked,
    and afterwards even the right password is refused."""
    user, _ = await make_user(admin, ["proctor"], ["A"], email=f"b-{uuid.uuid4().hex[:8]}@x.org")
    statuses = await _burst(lserver.url, user["email"], ["wrong password"] * BURST)
    assert sorted(set(statuses)) == [401, 429]
    assert statuses.count(401) == LIMIT - 1  # the 5th failure answers 429 (it set the block)
    assert await _checked(admin, user["id"]) == LIMIT
    [after] = await _burst(lserver.url, user["email"], [PASSWORD])
    assert after == 429


async def test_a_right_password_racing_in_after_the_limit_is_refused(
    lserver: ServerProcess, admin: Api
) -> None:
    """59 wrong guesses and the right password in one burst: the right one only wins if it
    was one of the first 5 attempts admitted; otherwise it is refused with them."""
    user, _ = await make_user(admin, ["proctor"], ["A"], email=f"r-{uuid.uuid4().hex[:8]}@x.org")
    statuses = await _burst(lserver.url, user["email"],
                            ["wrong password"] * (BURST - 1) + [PASSWORD])
    assert set(statuses) <= {200, 401, 429}
    checked = await _checked(admin, user["id"])
    if statuses[-1] == 200:
        # admitted among the first five: at most 4 failures before it, and from its success
        # on a fresh window of at most 5
        assert checked <= 2 * LIMIT - 1
        assert statuses.count(200) == 1
    else:
        assert statuses[-1] == 429
        assert checked == LIMIT
        [after] = await _burst(lserver.url, user["email"], [PASSWORD])
        assert after == 429  # blocked for the hour
