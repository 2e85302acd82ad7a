"""Exam-day alerts in a real Chromium: the hall-wide drop banner (also after a reload, and
dismissed for good), rows coloured by indicator thresholds, the raise-hand button and its
acknowledgement, and a pause queued while the page was offline shown `delivered`."""

from __future__ import annotations

import re

import pytest
from browser_axe import assert_accessible
from browser_exams import make_exam
from browser_support import DROP_SEEN_MS, Browsers, ScriptedCandidates, row, screenshot
from clients import Api
from playwright.async_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


async def test_drop_alert_banner_and_indicator_colours(
    browsers: Browsers, rt_api: Api
) -> None:
    """Three candidates of hall-A drop at once: every dashboard shows one banner (a dashboard
    opened afterwards too) until dismissed; rows are coloured by the exam's thresholds."""
    exam, sessions = await make_exam(
        rt_api, 6, groups=["hall-A"], title="Chemistry final",
        settings={"drop_alert_count": 3, "drop_alert_window_seconds": 60,
                  "indicators": {"alerts": {"warning": 1, "danger": 2},
                                 "offline_seconds": {"warning": 0, "danger": 3600}}},
    )
    candidates = ScriptedCandidates(browsers.server.ws_url)
    try:
        await candidates.open_many([s["access_code"] for s in sessions])
        dashboard = await browsers.dashboard(exam["id"])
        banner = dashboard.locator("#alert-banner")
        await expect(banner).to_be_hidden()

        # Client alerts: one is a warning, two are danger (the exam's thresholds).
        await candidates.send(sessions[0]["access_code"],
                              {"type": "client_event", "name": "focus_lost"})
        for _ in range(2):
            await candidates.send(sessions[1]["access_code"],
                                  {"type": "client_event", "name": "fullscreen_exit"})
        await expect(row(dashboard, sessions[0]["id"])).to_have_attribute(
            "data-indicator", "warning")
        await expect(row(dashboard, sessions[1]["id"])).to_have_attribute(
            "data-indicator", "danger")
        await expect(row(dashboard, sessions[5]["id"])).to_have_attribute(
            "data-indicator", "ok")

        for s in sessions[2:5]:  # three sockets cut without a close frame
            client = candidates.clients.pop(s["access_code"])
            assert client.ws.transport is not None
            client.ws.transport.abort()
        await expect(banner).to_be_visible()
        await expect(banner.locator(".alert-item")).to_have_count(1)
        await expect(banner).to_contain_text("3 candidates of hall-A lost their connection")
        # Staff are told without staring (js/notify.js): the live region and the tab title.
        await expect(dashboard.locator("#notify-live")).to_contain_text(
            "3 candidates of hall-A lost their connection")
        await expect(dashboard).to_have_title(re.compile(r"^\(\d+\) "))
        for s in sessions[2:5]:
            line = row(dashboard, s["id"])
            await expect(line).to_have_attribute("data-connected", "false")
            await expect(line).to_have_attribute("data-indicator", "warning")  # offline
        await assert_accessible(dashboard, "dashboard with a drop alert and coloured rows")
        await screenshot(dashboard, "dashboard-drop-alert")  # docs/screenshots has a copy

        # "Show them" selects the three; a dashboard opened now sees the active alert too.
        await banner.get_by_role("button", name="Show them").click()
        await expect(dashboard.locator("#session-rows tr.selected")).to_have_count(3)
        later = await browsers.dashboard(exam["id"])
        await expect(later.locator("#alert-banner .alert-item")).to_have_count(1)

        # Dismissed stays dismissed in this browser, also after a reload.
        await banner.get_by_role("button", name="Dismiss this alert").click()
        await expect(banner).to_be_hidden()
        await dashboard.reload()
        await dashboard.locator("#sync-info[data-sync]").wait_for()
        await expect(dashboard.locator("#alert-banner")).to_be_hidden()
        await expect(later.locator("#alert-banner .alert-item")).to_have_count(1)
    finally:
        await candidates.close_all()


async def test_raise_hand_is_shown_filtered_and_acknowledged(
    browsers: Browsers, rt_api: Api
) -> None:
    """The candidate raises a hand: the dashboard row shows it (and filters on it), a proctor
    acknowledges it from the row, and the candidate sees the acknowledgement."""
    exam, sessions = await make_exam(rt_api, 3, title="Physics")
    session = sessions[1]
    dashboard = await browsers.dashboard(exam["id"])
    candidate = await browsers.candidate(session["access_code"])
    await expect(candidate.locator("#screen-exam")).to_be_visible()

    hand = candidate.locator("#raise-hand")
    await hand.click()
    await expect(hand).to_be_disabled()
    await expect(hand).to_have_text("Hand raised")
    await expect(candidate.locator("#hand-status")).to_have_text("Waiting for a proctor")
    await assert_accessible(candidate, "candidate page with a raised hand")
    await screenshot(candidate, "candidate-hand-raised")  # docs/screenshots has a copy

    line = row(dashboard, session["id"])
    await expect(line).to_have_attribute("data-hand", "true")
    await expect(line.locator(".col-hand")).to_contain_text("Raised")
    await expect(dashboard.locator('[data-counter="hands"] .n')).to_have_text("1")
    await dashboard.get_by_label("Hands raised").check()
    await expect(dashboard.locator("#session-rows tr[data-session-id]")).to_have_count(1)
    await dashboard.locator('th[data-sort="hand"] button').click()

    await assert_accessible(dashboard, "dashboard with a raised hand")
    await screenshot(dashboard, "dashboard-hand-raised")  # docs/screenshots has a copy
    await line.get_by_role("button", name="Acknowledge").click()
    ack = candidate.get_by_role("alertdialog", name="A proctor has seen your hand")
    await expect(ack).to_be_visible()
    # Acknowledged: no longer a raised hand, so the filter hides it.
    await expect(dashboard.locator("#session-rows tr[data-session-id]")).to_have_count(0)
    await dashboard.get_by_label("Hands raised").uncheck()
    await expect(line.locator(".col-hand")).to_have_text("Seen")
    await expect(line.locator(".delivery")).to_have_text("delivered")
    await ack.get_by_role("button", name="OK").click()
    await expect(hand).to_be_enabled()
    await expect(hand).to_have_text("Raise hand")
    await expect(candidate.locator("#hand-status")).to_have_text("A proctor is coming")


async def test_pause_queued_offline_is_delivered_after_reconnect(
    browsers: Browsers, rt_api: Api
) -> None:
    """A pause issued while the page is offline shows `queued`, then `delivered` once the
    page is back and shows the pause."""
    exam, [session] = await make_exam(rt_api, 1)
    dashboard = await browsers.dashboard(exam["id"])
    candidate = await browsers.candidate(session["access_code"])
    await expect(candidate.locator("#screen-exam")).to_be_visible()
    line = row(dashboard, session["id"])
    await expect(line).to_have_attribute("data-connected", "true")

    await candidate.context.set_offline(True)
    await candidate.evaluate("window.__realtime.connection.dropSocket()")
    await expect(line).to_have_attribute("data-connected", "false", timeout=DROP_SEEN_MS)
    await line.get_by_role("button", name=session["candidate_name"]).click()
    await dashboard.locator("#panel").get_by_role("button", name="Pause", exact=True).click()
    await expect(line.locator(".delivery")).to_have_text("queued")
    # A dashboard opened now knows it from the session (status_command_id) too.
    later = await browsers.dashboard(exam["id"])
    later_line = row(later, session["id"])
    await expect(later_line.locator(".delivery")).to_have_text("queued")
    await expect(later_line.locator(".cmd")).to_have_text("Pause")

    await candidate.context.set_offline(False)
    await expect(candidate.locator("#overlay-paused")).to_be_visible()
    await expect(line).to_have_attribute("data-connected", "true")
    await expect(line.locator(".delivery")).to_have_text("delivered")
    await expect(later_line.locator(".delivery")).to_have_text("delivered")
