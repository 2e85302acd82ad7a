"""Helpers for the browser tests: pages in fresh contexts, screenshots, scripted candidates."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Any

from clients import MSGPACK, WsClient, open_candidate
from server import STAFF_TOKEN, ServerProcess
from websockets.exceptions import ConnectionClosed

CHROMIUM = os.environ.get("RT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "artifacts" / "screenshots"
DASHBOARD_VIEWPORT = {"width": 1440, "height": 900}
CANDIDATE_VIEWPORT = {"width": 1280, "height": 800}
TOKEN_KEY = "realtime.staffToken"
# The suite's server pings every second (RTT and liveness move quickly) and gives up on a
# silent page after the default 12 s.
PING_INTERVAL, PING_TIMEOUT = 1, 12
# How long a row may take to show a page dropped while offline. Chromium's offline mode holds
# back what reaches the page, not what it sends: the page's close frame reached the server
# within 0.4 s in 36 of 36 runs on a loaded machine (history: `lost 4000`). Were it lost, only
# unanswered pings would tell, PING_TIMEOUT and up to an interval after the last answer: a
# wait of the server's, then the suite's usual 15 s for the row to change. (That wait once
# took over 15 s in CI: the heartbeat counted timer latency as stalls, fixed in f17b814.)
DROP_SEEN_MS = (PING_TIMEOUT + PING_INTERVAL) * 1000 + 15_000


class Browsers:
    """Pages of one test, each in its own context (its own sessionStorage, like a device)."""

    def __init__(self, browser: Any, server: ServerProcess) -> None:
        self.browser = browser
        self.server = server
        self.contexts: list[Any] = []
        self.errors: list[str] = []

    async def context(
        self,
        viewport: dict[str, int] | None = None,
        token: str | None = None,
        color_scheme: str = "light",
    ) -> Any:
        """A fresh context; `color_scheme` is what prefers-color-scheme says ("light", "dark")."""
        context = await self.browser.new_context(
            viewport=viewport or DASHBOARD_VIEWPORT,
            base_url=self.server.url,
            color_scheme=color_scheme,
        )
        context.set_default_timeout(10_000)
        if token is not None:
            await context.add_init_script(
                f"sessionStorage.setItem({json.dumps(TOKEN_KEY)}, {json.dumps(token)})"
            )
        self.contexts.append(context)
        return context

    async def page(self, context: Any) -> Any:
        page = await context.new_page()
        page.on("pageerror", lambda err: self.errors.append(f"{page.url}: {err}"))
        return page

    async def dashboard(
        self,
        exam_id: str | None = None,
        token: str = STAFF_TOKEN,
        color_scheme: str = "light",
        viewport: dict[str, int] | None = None,
    ) -> Any:
        """A signed-in dashboard; with `exam_id`, monitoring that exam and synchronised."""
        context = await self.context(viewport or DASHBOARD_VIEWPORT, token, color_scheme)
        page = await self.page(context)
        await page.goto(f"/dashboard/?exam={exam_id}" if exam_id else "/dashboard/")
        if exam_id:
            await page.locator("#sync-info[data-sync]").wait_for()
        return page

    async def candidate(
        self, code: str | None = None, context: Any = None, color_scheme: str = "light"
    ) -> Any:
        """A candidate page (in a new context unless one is given)."""
        context = context or await self.context(CANDIDATE_VIEWPORT, color_scheme=color_scheme)
        page = await self.page(context)
        await page.goto(f"/candidate/?code={code}" if code else "/candidate/")
        return page

    async def close(self) -> None:
        for context in self.contexts:
            with contextlib.suppress(Exception):
                await context.close()
        self.contexts.clear()

    def assert_no_page_errors(self) -> None:
        assert not self.errors, "uncaught errors in the pages:\n" + "\n".join(self.errors)


async def screenshot(page: Any, name: str, **options: Any) -> Path:
    """Save a screenshot to artifacts/screenshots/ (gitignored); returns its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), animations="disabled", caret="hide", **options)
    return path


def row(page: Any, session_id: str) -> Any:
    return page.locator(f'#session-rows tr[data-session-id="{session_id}"]')


class ScriptedCandidates:
    """Candidates as plain WebSocket clients (cheaper than pages): open, answer pings, ack."""

    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url
        self.clients: dict[str, WsClient] = {}
        self.tasks: list[asyncio.Task[None]] = []

    async def open(self, code: str) -> dict[str, Any]:
        client, reply = await open_candidate(self.ws_url, code, MSGPACK)
        assert reply["type"] == "opened", reply
        self.clients[code] = client
        self.tasks.append(asyncio.create_task(self._serve(client)))
        opened: dict[str, Any] = reply
        return opened

    async def open_many(self, codes: list[str]) -> None:
        await asyncio.gather(*(self.open(code) for code in codes))

    async def send(self, code: str, message: dict[str, Any]) -> None:
        await self.clients[code].send(message)

    async def close(self, code: str) -> None:
        client = self.clients.pop(code)
        await client.close()

    @staticmethod
    async def _serve(client: WsClient) -> None:
        with contextlib.suppress(ConnectionClosed, asyncio.CancelledError):
            while True:
                message = await client.recv_any(timeout=3600)
                if message["type"] == "ping":
                    await client.send({"type": "pong", "t": message["t"]})
                elif message["type"] == "command":
                    await client.send({"type": "ack", "command_id": message["command_id"]})

    async def close_all(self) -> None:
        for task in self.tasks:
            task.cancel()
        for client in self.clients.values():
            with contextlib.suppress(Exception):
                await client.close()
        self.clients.clear()
