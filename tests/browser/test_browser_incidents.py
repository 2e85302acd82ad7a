"""Incidents on the live table in a real Chromium: the badge, "incidents first", the tab-title
count, the screen-reader announcement, and the opt-in sound and desktop notification."""

from __future__ import annotations

import re
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import pytest
from browser_exams import make_exam
from browser_support import STAFF_TOKEN, Browsers, ScriptedCandidates, row, screenshot
from clients import Api, open_candidate
from playwright.async_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

# Records what the page asks of the browser's sound and notification APIs (headless Chromium
# plays nothing and shows nothing), as `window.__beeps` and `window.__notifications`.
RECORD_BROWSER_APIS = """
window.__beeps = 0;
window.__notifications = [];
class RecordingAudioContext {
  constructor() { this.currentTime = 0; this.destination = {}; }
  resume() { return Promise.resolve(); }
  createGain() {
    return { gain: { setValueAtTime() {}, exponentialRampToValueAtTime() {} }, connect: (x) => x };
  }
  createOscillator() {
    return { frequency: {}, connect: (x) => x, start() { window.__beeps += 1; }, stop() {} };
  }
}
window.AudioContext = RecordingAudioContext;
class RecordingNotification {
  // The browser remembers a granted permission for the site.
  static permission = localStorage.getItem("test.permission") || "default";
  static requestPermission() {
    localStorage.setItem("test.permission", "granted");
    RecordingNotification.permission = "granted";
    return Promise.resolve("granted");
  }
  constructor(title, options) { window.__notifications.push({ title, body: options.body }); }
  close() {}
}
window.Notification = RecordingNotification;
"""


async def test_a_refused_second_device_shows_up_live_and_is_noticed(
    browsers: Browsers, rt_api: Api
) -> None:
    """A refused open on a locked session: a new badge on the row, sorted first, counted in
    the title until acknowledged, announced to screen readers."""
    exam, sessions = await make_exam(rt_api, 6, settings={"lock_sessions": True},
                                     title="Incidents demo")
    candidates = ScriptedCandidates(browsers.server.ws_url)
    try:
        await candidates.open_many([s["access_code"] for s in sessions])
        dashboard = await browsers.dashboard(exam["id"])
        title = await dashboard.title()
        target = sorted(sessions, key=lambda s: s["candidate_name"])[-1]  # last by name
        line = row(dashboard, target["id"])
        await expect(line).to_have_attribute("data-connected", "true")
        await expect(line.locator(".col-incidents")).to_have_text("0")

        second, refused = await open_candidate(browsers.server.ws_url, target["access_code"])
        assert refused["reason"] == "already_open"
        await second.close()

        badge = line.locator(".incident-badge")
        await expect(badge).to_have_text("1")
        await expect(badge).to_have_class(re.compile(r"\bnew\b"))
        await expect(line.locator(".col-incidents")).to_contain_text("Open refused")
        await expect(dashboard).to_have_title(f"(1) {title}")
        await expect(dashboard.locator("#notify-live")).to_contain_text(
            f"{target['candidate_name']}: Open refused"
        )
        await expect(dashboard.locator("#notify-live")).to_have_attribute("aria-live", "polite")

        first = dashboard.locator("#session-rows tr[data-session-id]").first
        assert await first.get_attribute("data-session-id") != target["id"]
        await dashboard.get_by_role("button", name="Incidents first").click()
        await expect(dashboard.get_by_role("button", name="Incidents first")).to_have_attribute(
            "aria-pressed", "true"
        )
        await expect(first).to_have_attribute("data-session-id", target["id"])
        await screenshot(dashboard, "dashboard-incidents")  # docs/screenshots has a copy

        await first.get_by_role("button", name=target["candidate_name"]).click()
        details = dashboard.locator("#panel-details")
        await expect(details).to_contain_text("Open refused")
        await expect(details).to_contain_text("Time offline")
        await dashboard.locator("#panel-close").click()

        await dashboard.locator("#notify-unseen").click()  # "1 new": mark as seen
        await expect(dashboard).to_have_title(title)
        await expect(dashboard.locator("#notify-unseen")).to_be_hidden()
        await expect(badge).not_to_have_class(re.compile(r"\bnew\b"))
        await expect(badge).to_have_text("1")
    finally:
        await candidates.close_all()


NEW = re.compile(r"\bnew\b")


async def refuse_second_device(ws_url: str, access_code: str) -> None:
    """A second device tries the (locked, open) session: one `refused` incident."""
    client, refused = await open_candidate(ws_url, access_code)
    assert refused["reason"] == "already_open"
    await client.close()


async def dashboard_with_skewed_clock(browsers: Browsers, exam_id: str, seconds: int) -> Any:
    """A dashboard whose estimate of the server clock is `seconds` off: every REST answer's
    `Date` header (what the page estimates the clock from) is shifted by that much."""
    context = await browsers.context(token=STAFF_TOKEN)

    async def shift_date(route: Any) -> None:
        response = await route.fetch()
        headers = dict(response.headers)
        if "date" in headers:
            shifted = parsedate_to_datetime(headers["date"]) + timedelta(seconds=seconds)
            headers["date"] = format_datetime(shifted, usegmt=True)
        await route.fulfill(response=response, headers=headers)

    await context.route("**/api/**", shift_date)
    page = await browsers.page(context)
    await page.goto(f"/dashboard/?exam={exam_id}")
    await page.locator("#sync-info[data-sync]").wait_for()
    return page


async def test_new_badges_follow_the_event_order_whatever_the_page_thinks_the_time_is(
    browsers: Browsers, rt_api: Api
) -> None:
    """Whether a badge is new does not hang on the page's estimate of the server clock: with
    the estimate an hour ahead or an hour behind, an incident the snapshot showed is not new,
    one that arrives live is, until acknowledged, and the next one after that is new again."""
    exam, sessions = await make_exam(rt_api, 2, settings={"lock_sessions": True})
    old, live = sessions
    ws_url = browsers.server.ws_url
    candidates = ScriptedCandidates(ws_url)
    try:
        await candidates.open_many([s["access_code"] for s in sessions])
        await refuse_second_device(ws_url, old["access_code"])  # before the dashboards look
        dashboards = [
            await dashboard_with_skewed_clock(browsers, exam["id"], seconds)
            for seconds in (3600, -3600)
        ]
        for page in dashboards:
            badge = row(page, old["id"]).locator(".incident-badge")
            await expect(badge).to_have_text("1")
            await expect(badge).not_to_have_class(NEW)

        await refuse_second_device(ws_url, live["access_code"])
        for page in dashboards:
            badge = row(page, live["id"]).locator(".incident-badge")
            await expect(badge).to_have_text("1")
            await expect(badge).to_have_class(NEW)
            await expect(row(page, old["id"]).locator(".incident-badge")).not_to_have_class(NEW)

            await page.locator("#notify-unseen").click()  # "1 new": mark as seen
            await expect(page.locator("#notify-unseen")).to_be_hidden()
            await expect(badge).not_to_have_class(NEW)

        await refuse_second_device(ws_url, live["access_code"])
        for page in dashboards:
            badge = row(page, live["id"]).locator(".incident-badge")
            await expect(badge).to_have_text("2")
            await expect(badge).to_have_class(NEW)
            await expect(row(page, old["id"]).locator(".incident-badge")).not_to_have_class(NEW)
    finally:
        await candidates.close_all()


async def test_incidents_missed_while_away_are_new_after_the_page_catches_up(
    browsers: Browsers, rt_api: Api
) -> None:
    """Back after its connection was closed, whether the page is sent the missed events or a
    fresh snapshot: an incident that happened meanwhile is new, one that was new stays new, one
    the user acknowledged stays seen."""
    exam, [seen, pending, away] = await make_exam(rt_api, 3, settings={"lock_sessions": True})
    ws_url = browsers.server.ws_url
    candidates = ScriptedCandidates(ws_url)
    try:
        await candidates.open_many([s["access_code"] for s in (seen, pending, away)])
        dashboard = await browsers.dashboard(exam["id"])
        sync = dashboard.locator("#sync-info")

        def badge(session: dict[str, Any]) -> Any:
            return row(dashboard, session["id"]).locator(".incident-badge")

        async def acknowledge() -> None:
            await dashboard.locator("#notify-unseen").click()
            await expect(dashboard.locator("#notify-unseen")).to_be_hidden()

        async def back_after_missing_a_refusal(disconnect: str, synced_by: str,
                                               away_incidents: str) -> None:
            """The page is cut off (`disconnect`, a script), `away` is refused meanwhile, and
            the page reconnects, catching up by `synced_by`: `away` has `away_incidents`,
            new; `pending` is still new, `seen` still seen; acknowledging sees all."""
            await dashboard.evaluate(disconnect)
            await refuse_second_device(ws_url, away["access_code"])
            await dashboard.evaluate("__realtime.connection.connect()")
            await expect(sync).to_have_attribute("data-sync", synced_by)
            await expect(badge(away)).to_have_text(away_incidents)
            await expect(badge(away)).to_have_class(NEW)
            await expect(badge(pending)).to_have_class(NEW)
            await expect(badge(seen)).not_to_have_class(NEW)

            await acknowledge()
            for session in (seen, pending, away):
                await expect(badge(session)).not_to_have_class(NEW)

        await refuse_second_device(ws_url, seen["access_code"])
        await expect(badge(seen)).to_have_class(NEW)
        await acknowledge()
        await expect(badge(seen)).not_to_have_class(NEW)
        await refuse_second_device(ws_url, pending["access_code"])
        await expect(badge(pending)).to_have_class(NEW)

        # The missed events are replayed.
        await back_after_missing_a_refusal("__realtime.connection.close()", "events", "1")
        await refuse_second_device(ws_url, pending["access_code"])
        await expect(badge(pending)).to_have_text("2")
        await expect(badge(pending)).to_have_class(NEW)

        # A fresh snapshot (as when the exam's event log no longer reaches back that far: here
        # the page forgets where it was).
        await back_after_missing_a_refusal(
            "(c => { c.close(); c.lastSeq = null; })(__realtime.connection)", "snapshot", "2"
        )
    finally:
        await candidates.close_all()


async def test_sound_and_desktop_notifications_are_opt_in_and_remembered(
    browsers: Browsers, rt_api: Api
) -> None:
    """Off by default; turned on they beep and notify (permission asked on turning on), and
    the choice survives a reload."""
    exam, [session] = await make_exam(rt_api, 1, settings={"lock_sessions": True})
    candidates = ScriptedCandidates(browsers.server.ws_url)
    try:
        await candidates.open(session["access_code"])
        dashboard = await browsers.dashboard(exam["id"])
        await dashboard.add_init_script(RECORD_BROWSER_APIS)
        await dashboard.reload()
        await dashboard.locator("#sync-info[data-sync]").wait_for()
        await expect(dashboard.locator("#notify-sound")).not_to_be_checked()
        await expect(dashboard.locator("#notify-desktop")).not_to_be_checked()

        async def refuse_once() -> None:
            client, refused = await open_candidate(browsers.server.ws_url,
                                                   session["access_code"])
            assert refused["reason"] == "already_open"
            await client.close()

        await refuse_once()
        await expect(row(dashboard, session["id"]).locator(".incident-badge")).to_have_text("1")
        assert await dashboard.evaluate("window.__beeps") == 0
        assert await dashboard.evaluate("window.__notifications.length") == 0

        await dashboard.locator("#notify-settings summary").click()
        await dashboard.get_by_label("Sound").check()
        await dashboard.get_by_label("Desktop notifications").check()
        await expect(dashboard.get_by_label("Desktop notifications")).to_be_checked()
        await dashboard.reload()
        await dashboard.locator("#sync-info[data-sync]").wait_for()
        await dashboard.locator("#notify-settings summary").click()
        await expect(dashboard.get_by_label("Sound")).to_be_checked()
        await expect(dashboard.get_by_label("Desktop notifications")).to_be_checked()

        await dashboard.evaluate("document.hasFocus = () => false")  # staff look elsewhere
        await refuse_once()
        await expect(row(dashboard, session["id"]).locator(".incident-badge")).to_have_text("2")
        await dashboard.wait_for_function("window.__beeps > 0")
        notes = await dashboard.evaluate("window.__notifications")
        assert len(notes) == 1 and "Open refused" in notes[0]["title"]
        assert "already open elsewhere" in notes[0]["body"]
    finally:
        await candidates.close_all()
