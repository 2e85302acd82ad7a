"""How smooth the dashboard stays with thousands of sessions: the longest main-thread task
(Chromium's Long Tasks API) while 2,000 lock deltas arrive at once, the table scrolls to the
end, a search is typed key by key and the table is re-sorted.

    python -m loadtests.dashboard_smooth --sessions 2000

Prints the figure; it asserts nothing (the browser test checks the behaviour; a time depends
on the machine). Starts its own server (memory state) and Debian's /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import httpx

from loadtests.servers import BENCH_STAFF_TOKEN, ServerProcess, workdir

CHROMIUM = os.environ.get("RT_CHROMIUM", "/usr/bin/chromium")
OBSERVE_LONG_TASKS = """() => {
  window.__longTasks = [];
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) window.__longTasks.push(e.duration);
  }).observe({ type: "longtask" });
}"""


async def measure(base: str, sessions: int) -> list[float]:
    """Long tasks (ms) of one dashboard through the burst, the scroll, the search and a sort."""
    from playwright.async_api import async_playwright, expect

    headers = {"Authorization": f"Bearer {BENCH_STAFF_TOKEN}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
        exam = (await http.post("/api/v1/exams", json={
            "title": "Dashboard smoothness", "groups": ["Hall A", "Hall B", "Hall C", "Hall D"],
        })).json()
        groups = ["Hall A", "Hall B", "Hall C", "Hall D"]
        created = await http.post(f"/api/v1/exams/{exam['id']}/sessions", json={"candidates": [
            {"candidate_id": f"S{10000 + i}", "name": f"Candidate {i}", "group": groups[i % 4]}
            for i in range(sessions)]})
        created.raise_for_status()
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True,
                args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
            page = await browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(60_000)
            await page.goto(f"{base}/dashboard/?exam={exam['id']}#token={BENCH_STAFF_TOKEN}")
            await page.locator("#sync-info[data-sync]").wait_for()
            await page.evaluate(OBSERVE_LONG_TASKS)
            await http.post(f"/api/v1/exams/{exam['id']}/commands",
                            json={"action": "lock", "target": "all"})
            await expect(page.locator('[data-counter="locked"] .n')).to_have_text(str(sessions))
            await page.locator("#table-wrap").evaluate("el => { el.scrollTop = el.scrollHeight; }")
            await page.get_by_label("Search").press_sequentially(f"S{10000 + sessions - 1}",
                                                                 delay=30)
            await page.get_by_label("Search").fill("")
            await page.locator('th[data-sort="group"] button').click()
            tasks: list[float] = await page.evaluate("window.__longTasks")
            await browser.close()
    return tasks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.dashboard_smooth",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=2000)
    args = parser.parse_args(argv)
    server = ServerProcess(workdir()).start()
    try:
        tasks = asyncio.run(measure(server.url, args.sessions))
    finally:
        server.stop()
    longest = max(tasks, default=0.0)
    print(f"dashboard with {args.sessions} sessions: {len(tasks)} long tasks, "
          f"longest {longest:.0f} ms (before the table was virtualised: ~800 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
