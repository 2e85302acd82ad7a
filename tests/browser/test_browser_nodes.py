"""The Nodes page: two server processes on one Redis, both listed alive with the sockets each
holds, and one shown dead after it is SIGKILLed, without anybody reloading the page."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from browser_support import Browsers, screenshot
from clients import Api, LiveCandidate, eventually, open_candidate, watch
from playwright.async_api import expect
from redis_server import RedisServer
from server import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Two processes sharing a private Redis and one SQLite file; dead after 3 s of silence."""
    redis = RedisServer()
    redis.start()
    shared: dict[str, Any] = {"redis_url": redis.url, "workdir": tmp_path, "node_timeout": 3,
                              "stale_after": 60}
    first = ServerProcess(**shared)
    processes = [first, ServerProcess(database_url=first.database_url, **shared)]
    try:
        for process in processes:
            process.start()
        yield processes
    finally:
        for process in processes:
            process.stop()
        redis.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def nodes_browsers(
    two_nodes: list[ServerProcess], rt_chromium: object
) -> AsyncIterator[Browsers]:
    helper = Browsers(rt_chromium, two_nodes[0])
    yield helper
    await helper.close()
    helper.assert_no_page_errors()


async def node_ids(api: Api) -> dict[int, str]:
    """pid -> node id, from the nodes endpoint."""
    response = await api.http.get("/api/v1/nodes")
    assert response.status_code == 200, response.text
    return {n["info"]["pid"]: n["id"] for n in response.json()["nodes"]}


async def test_nodes_page_lists_both_processes_and_shows_a_killed_one_dead(
    two_nodes: list[ServerProcess], nodes_browsers: Browsers
) -> None:
    first, second = two_nodes
    api = Api(first.url)
    pages: list[LiveCandidate] = []
    watcher = None
    try:
        ids = await eventually(lambda: _both(api, two_nodes), timeout=10)
        first_id, second_id = ids[first.process.pid], ids[second.process.pid]  # type: ignore[union-attr]
        exam = await api.create_exam(title="Nodes page")
        sessions = await api.create_sessions(exam["id"], 3)
        for session, server in zip(sessions, (first, second, second), strict=True):
            client, opened = await open_candidate(server.ws_url, session["access_code"])
            assert opened["type"] == "opened", opened
            pages.append(LiveCandidate(client, opened))
        watcher, _ = await watch(second.ws_url, exam["id"])

        page = await nodes_browsers.dashboard()
        await page.locator('#sections a[data-nav="nodes"]').click()
        await expect(page.get_by_role("heading", name="Nodes", exact=True)).to_be_visible()
        mine = page.locator(f'#nodes-rows tr[data-node="{first_id}"]')
        other = page.locator(f'#nodes-rows tr[data-node="{second_id}"]')
        # The page refreshes itself: the counts arrive with the processes' next heartbeats.
        await expect(mine.locator('[data-col="state"]')).to_have_text("Alive")
        await expect(other.locator('[data-col="state"]')).to_have_text("Alive")
        await expect(mine.locator('[data-col="candidates"]')).to_have_text("1")
        await expect(other.locator('[data-col="candidates"]')).to_have_text("2")
        await expect(other.locator('[data-col="dashboards"]')).to_have_text("1")
        await expect(mine.locator('[data-col="subscription"]')).to_have_text("Subscribed")
        await expect(mine.locator('[data-col="id"]')).to_contain_text("this")
        await expect(other.locator('[data-col="id"]')).not_to_contain_text("this")
        await expect(mine.locator('[data-col="process"]')).to_contain_text(
            f"pid {first.process.pid}")  # type: ignore[union-attr]
        await expect(page.locator("#nodes-summary")).to_have_text(
            "2 nodes alive · 3 candidates · 1 dashboard")

        second.kill()
        await expect(other).to_have_attribute("data-alive", "false", timeout=15_000)
        await expect(other.locator('[data-col="state"]')).to_contain_text("Dead since")
        await expect(mine.locator('[data-col="state"]')).to_have_text("Alive")
        await expect(page.locator("#nodes-summary")).to_contain_text("1 node alive · 1 dead")
        # To artifacts/ only; docs/screenshots/dashboard-nodes.png is a copy of it taken by hand
        # (a test run never changes tracked files).
        await screenshot(page, "dashboard-nodes")
    finally:
        for candidate in pages:
            await candidate.close()
        if watcher is not None:
            await watcher.close()
        await api.close()


async def _both(api: Api, processes: list[ServerProcess]) -> dict[int, str] | None:
    ids = await node_ids(api)
    pids = [p.process.pid for p in processes]  # type: ignore[union-attr]
    return ids if all(pid in ids for pid in pids) else None
