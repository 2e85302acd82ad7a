"""Incidents on the live table in a real Chromium: the badge, "incidents first", the tab-title
count, the screen-reader announcement, and the opt-in sound and desktop notification."""

from __future__ import annotations

import re

import pytest
from browser_exams import make_exam
from browser_support import Browsers, ScriptedCandidates, row, screenshot
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
