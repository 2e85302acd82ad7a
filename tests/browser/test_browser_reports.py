"""The dashboard's reports in Chromium: natural order of names, several groups at once, the
history panel's date and kind filters, downloads, and toasts that never cover the table."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path
from typing import Any

import pytest
from browser_exams import make_exam
from browser_support import Browsers, ScriptedCandidates, row, screenshot
from clients import Api
from playwright.async_api import expect
from server import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

# A datetime-local value `hours` from now, in the page's own time zone.
LOCAL_IN_HOURS = """(hours) => {
  const d = new Date(Date.now() + hours * 3600e3);
  return new Date(d - d.getTimezoneOffset() * 60e3).toISOString().slice(0, 19);
}"""


def names_in_order(rows: list[str]) -> list[str]:
    return [r.split("\n")[0].strip() for r in rows]


async def test_names_sort_naturally_and_several_groups_filter(
    browsers: Browsers, rt_api: Api
) -> None:
    """"Candidate 2" comes before "Candidate 10"; ticking two groups shows both, and a bulk
    command on the filter reaches exactly those sessions."""
    exam = await rt_api.create_exam(title="Natural order")
    names = ["Candidate 10", "Candidate 2", "candidate 1", "Candidate 21", "Candidate 3"]
    groups = ["Hall 10", "Hall 2", "Hall 1", "Hall 2", "Hall 10"]
    created = (await rt_api.http.post(f"/api/v1/exams/{exam['id']}/sessions", json={
        "candidates": [{"candidate_id": f"c{i}", "name": n, "group": g}
                       for i, (n, g) in enumerate(zip(names, groups, strict=True))]})).json()
    by_name = {s["candidate_name"]: s for s in created["sessions"]}
    dashboard = await browsers.dashboard(exam["id"])
    cands = dashboard.locator("#session-rows tr[data-session-id] .cand")
    await expect(cands).to_have_text(
        ["candidate 1", "Candidate 2", "Candidate 3", "Candidate 10", "Candidate 21"])
    # the group choices are in natural order too
    await dashboard.locator("#group-filter summary").click()
    options = dashboard.locator("#group-options label")
    await expect(options).to_have_text(["Hall 1", "Hall 2", "Hall 10"])
    await dashboard.get_by_role("checkbox", name="Hall 1", exact=True).check()
    await dashboard.get_by_role("checkbox", name="Hall 10", exact=True).check()
    await dashboard.locator("#group-filter summary").click()
    await expect(dashboard.locator("#group-filter-summary")).to_have_text("Hall 1, Hall 10")
    await expect(cands).to_have_text(["candidate 1", "Candidate 3", "Candidate 10"])
    await expect(dashboard.locator("#result-count")).to_have_text("Showing 3 of 5")
    await dashboard.get_by_label("Apply to").select_option("filter")
    await dashboard.locator("#actionbar").get_by_role("button", name="Lock", exact=True).click()
    dialog = dashboard.get_by_role("dialog")
    await dialog.get_by_role("button", name="Lock 3 sessions").click()
    await expect(dialog).to_be_hidden()
    for name in ("candidate 1", "Candidate 3", "Candidate 10"):
        await expect(row(dashboard, by_name[name]["id"])).to_have_attribute("data-locked", "true")
    for name in ("Candidate 2", "Candidate 21"):
        assert (await rt_api.session(exam["id"], by_name[name]["id"]))["locked"] is False
    # the delivery state is never cut off, and the toast is not over the table
    badge = row(dashboard, by_name["Candidate 10"]["id"]).locator(".delivery")
    await expect(badge).to_have_text("queued")
    cell = row(dashboard, by_name["Candidate 10"]["id"]).locator("td.col-command")
    assert await badge.evaluate("el => el.scrollWidth <= el.clientWidth")
    inner, outer = await badge.bounding_box(), await cell.bounding_box()
    assert inner and outer and inner["x"] + inner["width"] <= outer["x"] + outer["width"]
    toast = dashboard.locator("#toasts .toast").first
    await expect(toast).to_be_visible()
    assert not overlaps(await toast.bounding_box(),
                        await dashboard.locator("#table-wrap").bounding_box())


def overlaps(a: dict[str, float] | None, b: dict[str, float] | None) -> bool:
    assert a and b
    return not (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
                or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])


async def test_history_panel_filters_by_date_and_kind(
    browsers: Browsers, rt_api: Api, rt_server: ServerProcess
) -> None:
    """The panel's history obeys From/To, hides progress and deliveries unless asked, names
    staff, shows where each open came from, and downloads the same rows as CSV."""
    exam, [session] = await make_exam(rt_api, 1, groups=["Hall A"], title="History filters")
    scripted = ScriptedCandidates(rt_server.ws_url)
    try:
        await scripted.open(session["access_code"])
        await scripted.send(session["access_code"], {"type": "progress", "position": 2,
                                                     "answered": 1})
        await rt_api.command(exam["id"], action="notice", text="Ten minutes left",
                             target=session["id"])
        await rt_api.command(exam["id"], action="extend", minutes=5, target=session["id"],
                             reason="fire alarm")
        dashboard = await browsers.dashboard(exam["id"])
        await row(dashboard, session["id"]).locator(".cand").click()
        panel = dashboard.locator("#panel")
        history = panel.locator("#history")
        await expect(history.locator("li.h-extend")).to_have_count(1)
        await expect(history.locator("li.h-opened .h-place")).to_contain_text("from 127.0.0.1")
        await expect(history.locator("li.h-extend .h-actor")).to_have_text("admin")
        await expect(history.locator("li.h-delivered")).to_have_count(0)
        await expect(history.locator("li.h-progress")).to_have_count(0)
        await panel.get_by_label("Progress and deliveries").check()
        await expect(history.locator("li.h-delivered")).to_have_count(2)  # notice and extend
        await expect(history.locator("li.h-progress")).to_have_count(1)
        await panel.get_by_label("Progress and deliveries").uncheck()
        await expect(history.locator("li.h-delivered")).to_have_count(0)
        # a period that starts in an hour holds nothing; one around now holds everything
        since, until = panel.get_by_label("From", exact=True), panel.get_by_label("To", exact=True)
        await since.fill(await dashboard.evaluate(LOCAL_IN_HOURS, 1))
        await panel.get_by_role("button", name="Show").click()
        await expect(panel.locator("#history-status")).to_have_text("No history in this period.")
        await expect(history.locator("li")).to_have_count(0)
        await since.fill(await dashboard.evaluate(LOCAL_IN_HOURS, -1))
        await until.fill(await dashboard.evaluate(LOCAL_IN_HOURS, 1))
        await panel.get_by_role("button", name="Show").click()
        await expect(history.locator("li.h-extend")).to_have_count(1)
        await expect(history.locator("li.h-created")).to_have_count(1)
        await panel.evaluate(
            "el => { el.scrollTop = el.querySelector('#history-title').offsetTop - 80; }")
        await screenshot(dashboard, "dashboard-history-panel")  # docs/screenshots has a copy
        # the CSV button downloads what the panel shows
        async with dashboard.expect_download() as info:
            await panel.get_by_role("button", name="CSV").click()
        rows = await _csv_rows(await info.value)
        assert {r["kind"] for r in rows} >= {"created", "opened", "notice", "extend"}
        assert not {r["kind"] for r in rows} & {"progress", "delivered"}
        # the exam's downloads
        await panel.get_by_role("button", name="Close session details").click()
        await dashboard.locator("#downloads summary").click()
        async with dashboard.expect_download() as info:
            await dashboard.get_by_role("button", name="Sessions (CSV)").click()
        sessions = await _csv_rows(await info.value)
        assert [s["session_id"] for s in sessions] == [session["id"]]
    finally:
        await scripted.close_all()


async def _csv_rows(download: Any) -> list[dict[str, str]]:
    text = await asyncio.to_thread(Path(await download.path()).read_text, encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text, newline="")))
