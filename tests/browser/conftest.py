"""Browser tests: Debian's Chromium driven by Playwright against a real server.

One server (memory state backend) and one Chromium serve the whole browser suite; every test
makes its own exam and its own browser contexts, so tests stay independent. Async fixtures and
tests share the session's event loop (Playwright objects are bound to the loop that made them).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from browser_support import CHROMIUM, CHROMIUM_ARGS, PING_INTERVAL, PING_TIMEOUT, Browsers
from clients import Api
from server import ServerProcess


@pytest.fixture(scope="session")
def rt_server() -> Iterator[ServerProcess]:
    """A server for the browser suite; pings every second so RTT and liveness move quickly, and
    a login is blocked after 3 failures."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium")
    process = ServerProcess(ping_interval=PING_INTERVAL, ping_timeout=PING_TIMEOUT,
                            login_max_failures=3)
    # The guest tests need the browser (127.0.0.1) seen as itself: uvicorn trusts nobody's
    # X-Forwarded-For (TEST-NET-1), as in tests/test_guests_e2e.py.
    process.env["FORWARDED_ALLOW_IPS"] = "192.0.2.1"
    process.start()
    yield process
    process.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def rt_chromium(rt_server: ServerProcess) -> AsyncIterator[object]:
    from playwright.async_api import async_playwright, expect

    # Assertions wait up to 15 s (Playwright's default is 5 s, shorter than the 10 s of the
    # actions): on two cores shared with the rest of the suite a page can go seconds without
    # a rendering update (the theme test's print -> screen switch did, in a full run).
    expect.set_options(timeout=15_000)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            timeout=float(os.environ.get("RT_BROWSER_LAUNCH_TIMEOUT", "30000")),
        )
        yield browser
        await browser.close()


@pytest_asyncio.fixture(loop_scope="session")
async def rt_api(rt_server: ServerProcess) -> AsyncIterator[Api]:
    client = Api(rt_server.url)
    yield client
    await client.close()


@pytest_asyncio.fixture(loop_scope="session")
async def browsers(rt_server: ServerProcess, rt_chromium: object) -> AsyncIterator[Browsers]:
    """Opens dashboards and candidate pages in fresh contexts; fails the test on page errors."""
    helper = Browsers(rt_chromium, rt_server)
    yield helper
    await helper.close()
    helper.assert_no_page_errors()
