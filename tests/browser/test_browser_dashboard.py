"""The proctor dashboard in a real Chromium: sign-in, live table, commands, gap recovery."""

from __future__ import annotations

import re

import pytest
from browser_exams import make_exam
from browser_support import Browsers, ScriptedCandidates, row, screenshot
from clients import Api
from playwright.async_api import expect
from server import STAFF_TOKEN, ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


async def test_sign_in_lists_exams_and_monitors_one(browsers: Browsers, rt_api: Api) -> None:
    """The pasted staff token (dev token, scripts): bearer over REST, ?token= on the socket."""
    exam, _ = await make_exam(rt_api, 3, title="Chemistry midterm")
    page = await browsers.page(await browsers.context())
    await page.goto("/dashboard/")

    await expect(page.get_by_role("heading", name="Staff sign-in")).to_be_visible()
    await page.get_by_role("button", name="Use a staff token instead").click()
    await page.get_by_label("Staff token").fill("not-a-token")
    await page.get_by_role("button", name="Continue").click()
    await expect(page.locator("#login-error")).to_contain_text("not accepted")

    await page.get_by_label("Staff token").fill(STAFF_TOKEN)
    await page.get_by_role("button", name="Continue").click()
    link = page.locator(f'a[data-exam="{exam["id"]}"]')
    await expect(link).to_contain_text("Chemistry midterm")
    await expect(page.locator("#whoami-role")).to_have_text("staff token")
    await link.click()

    await expect(page).to_have_url(re.compile(rf"/dashboard/\?exam={exam['id']}$"))
    await expect(page.get_by_role("heading", name="Chemistry midterm")).to_be_visible()
    await expect(page.locator("#session-rows tr[data-session-id]")).to_have_count(3)
    await expect(page.locator("#conn-pill")).to_have_attribute("data-state", "open")

    # The token lives in this tab's sessionStorage: a reload stays signed in.
    await page.reload()
    await expect(page.locator("#session-rows tr[data-session-id]")).to_have_count(3)
    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Staff sign-in")).to_be_visible()


async def test_an_expired_token_returns_to_sign_in(browsers: Browsers, rt_api: Api) -> None:
    exam, _ = await make_exam(rt_api, 1)
    page = await browsers.page(await browsers.context(token="expired-or-revoked"))
    await page.goto(f"/dashboard/?exam={exam['id']}")
    await expect(page.get_by_role("heading", name="Staff sign-in")).to_be_visible()
    await expect(page.locator("#login-error")).to_be_visible()
    await page.get_by_label("Staff token").fill(STAFF_TOKEN)
    await page.get_by_role("button", name="Continue").click()
    await expect(page.locator("#sync-info")).to_have_attribute("data-sync", "snapshot")
    await expect(page.locator("#session-rows tr[data-session-id]")).to_have_count(1)


async def test_pause_reaches_the_candidate_page_without_reload(
    browsers: Browsers, rt_api: Api
) -> None:
    exam, [session] = await make_exam(rt_api, 1)
    dashboard = await browsers.dashboard(exam["id"])
    candidate = await browsers.candidate(session["access_code"])
    await expect(candidate.locator("#screen-exam")).to_be_visible()
    line = row(dashboard, session["id"])
    await expect(line).to_have_attribute("data-connected", "true")

    await line.get_by_role("checkbox").check()
    await dashboard.locator("#actionbar").get_by_role("button", name="Pause").click()

    overlay = candidate.get_by_role("alertdialog", name="Paused by the proctor")
    await expect(overlay).to_be_visible()
    await expect(line).to_have_attribute("data-status", "paused")
    await expect(line.locator(".delivery")).to_have_text("delivered")
    await expect(candidate.locator("#clock")).to_have_attribute("data-state", "paused")
    await screenshot(candidate, "candidate-paused")

    await dashboard.locator("#actionbar").get_by_role("button", name="Resume").click()
    await expect(overlay).to_be_hidden()
    await expect(line).to_have_attribute("data-status", "active")


async def test_bulk_pause_by_filter(
    browsers: Browsers, rt_api: Api, rt_server: ServerProcess
) -> None:
    exam, sessions = await make_exam(rt_api, 6, groups=["Hall A", "Hall B"])
    hall_a = [s for s in sessions if s["group"] == "Hall A"]
    hall_b = [s for s in sessions if s["group"] == "Hall B"]
    scripted = ScriptedCandidates(rt_server.ws_url)
    try:
        # Two of Hall A and all of Hall B are active; one of Hall A has not started.
        await scripted.open_many([s["access_code"] for s in hall_a[:2] + hall_b])
        dashboard = await browsers.dashboard(exam["id"])
        await expect(dashboard.locator('#session-rows tr[data-status="active"]')).to_have_count(5)

        await dashboard.locator("#group-filter summary").click()
        await dashboard.get_by_role("checkbox", name="Hall A").check()
        await dashboard.locator("#group-filter summary").click()
        await dashboard.locator('button[data-counter="active"]').click()
        await expect(dashboard.locator("#session-rows tr[data-session-id]")).to_have_count(2)
        await expect(dashboard.locator("#result-count")).to_have_text("Showing 2 of 6")

        await dashboard.get_by_label("Apply to").select_option("filter")
        await dashboard.locator("#actionbar").get_by_role("button", name="Pause").click()
        dialog = dashboard.get_by_role("dialog")
        await expect(dialog).to_contain_text("all 2 sessions matching the filter")
        await dialog.get_by_label("Reason").fill("noise in Hall A")
        await dialog.get_by_role("button", name="Pause 2 sessions").click()
        await expect(dialog).to_be_hidden()

        await dashboard.get_by_role("button", name="Clear filters").click()
        await expect(dashboard.locator("#session-rows tr[data-session-id]")).to_have_count(6)
        for s in hall_a[:2]:
            await expect(row(dashboard, s["id"])).to_have_attribute("data-status", "paused")
        await expect(row(dashboard, hall_a[2]["id"])).to_have_attribute("data-status", "ready")
        for s in hall_b:
            await expect(row(dashboard, s["id"])).to_have_attribute("data-status", "active")
        await expect(dashboard.locator('button[data-counter="paused"] .n')).to_have_text("2")
        history = await rt_api.history(exam["id"], hall_a[0]["id"])
        assert [e["details"].get("reason") for e in history if e["kind"] == "pause"] == [
            "noise in Hall A"
        ]
    finally:
        await scripted.close_all()


async def test_dashboard_flags_a_disconnect_when_the_candidate_page_closes(
    browsers: Browsers, rt_api: Api
) -> None:
    exam, [session] = await make_exam(rt_api, 1)
    dashboard = await browsers.dashboard(exam["id"])
    candidate = await browsers.candidate(session["access_code"])
    line = row(dashboard, session["id"])
    await expect(line).to_have_attribute("data-connected", "true")
    await expect(line.locator(".conn")).to_have_text("Online")

    await candidate.close()

    await expect(line).to_have_attribute("data-connected", "false")
    await expect(line).to_have_class(re.compile(r"\boffline\b"))
    await expect(line.locator(".conn")).to_have_text("Disconnected")
    await expect(dashboard.locator('button[data-counter="offline"] .n')).to_have_text("1")
    await expect(dashboard.locator("#announcer")).to_have_text(
        f"{session['candidate_name']} disconnected."
    )
    await dashboard.get_by_label("Offline only").check()
    await expect(dashboard.locator("#session-rows tr[data-session-id]")).to_have_count(1)


async def test_gap_recovery_after_the_dashboard_socket_is_cut(
    browsers: Browsers, rt_api: Api, rt_server: ServerProcess
) -> None:
    exam, sessions = await make_exam(rt_api, 3)
    first, second, third = sessions
    scripted = ScriptedCandidates(rt_server.ws_url)
    try:
        await scripted.open_many([s["access_code"] for s in sessions])
        dashboard = await browsers.dashboard(exam["id"])
        await expect(dashboard.locator('#session-rows tr[data-connected="true"]')).to_have_count(3)
        await expect(dashboard.locator("#sync-info")).to_have_attribute("data-sync", "snapshot")

        # Cut the network: the socket drops and reconnecting fails until it is back.
        await dashboard.context.set_offline(True)
        await dashboard.evaluate("window.__realtime.connection.dropSocket()")
        pill = dashboard.locator("#conn-pill")
        await expect(pill).to_have_attribute("data-state", "reconnecting")
        await expect(pill).to_contain_text("Connection lost")

        # Meanwhile another proctor (REST) pauses two sessions and locks the third ...
        await rt_api.command(exam["id"], action="pause", target=[first["id"], second["id"]])
        await rt_api.command(exam["id"], action="lock", target=third["id"])
        # ... and this proctor sends a notice, which waits for the connection.
        await row(dashboard, third["id"]).get_by_role("checkbox").check()
        await dashboard.locator("#actionbar").get_by_role("button", name="Notice…").click()
        dialog = dashboard.get_by_role("dialog")
        await dialog.get_by_label("Message to the candidates").fill("Ten minutes left")
        await dialog.get_by_role("button", name="Send notice").click()
        await expect(row(dashboard, third["id"]).locator(".delivery")).to_have_text("sending…")
        await expect(row(dashboard, first["id"])).to_have_attribute("data-status", "active")

        await dashboard.context.set_offline(False)

        await expect(pill).to_have_attribute("data-state", "open")
        await expect(dashboard.locator("#sync-info")).to_have_attribute("data-sync", "events")
        await expect(dashboard.locator("#sync-info")).to_contain_text("missed event")
        await expect(row(dashboard, first["id"])).to_have_attribute("data-status", "paused")
        await expect(row(dashboard, second["id"])).to_have_attribute("data-status", "paused")
        await expect(row(dashboard, third["id"])).to_have_attribute("data-locked", "true")
        await expect(row(dashboard, first["id"]).locator(".delivery")).to_have_text("delivered")
        await expect(row(dashboard, third["id"]).locator(".cmd")).to_have_text("Notice")
        await expect(row(dashboard, third["id"]).locator(".delivery")).to_have_text("delivered")
        reconnects = await dashboard.evaluate("window.__realtime.connection.reconnects")
        assert reconnects == 1
    finally:
        await scripted.close_all()


async def test_dashboard_with_240_sessions_panel_and_irregularity(
    browsers: Browsers, rt_api: Api, rt_server: ServerProcess
) -> None:
    exam, sessions = await make_exam(
        rt_api,
        240,
        groups=["Hall A", "Hall B", "Hall C"],
        title="Mathematics — Paper 2",
        duration_minutes=120,
    )
    live = sessions[:90]
    scripted = ScriptedCandidates(rt_server.ws_url)
    try:
        await scripted.open_many([s["access_code"] for s in live])
        dashboard = await browsers.dashboard(exam["id"])
        await expect(dashboard.locator("#count-total")).to_have_text("240")
        # Everything below happens live, while the dashboard watches.
        for i, s in enumerate(live):
            position = 1 + (i * 7) % 30
            await scripted.send(
                s["access_code"],
                {"type": "progress", "position": position, "answered": max(0, position - i % 4)},
            )
        for s in live[3:9]:
            await scripted.send(s["access_code"], {"type": "client_event", "name": "focus_lost"})
        await scripted.send(
            live[3]["access_code"], {"type": "client_event", "name": "fullscreen_exit"}
        )
        await scripted.send(live[10]["access_code"], {"type": "submit"})
        await rt_api.command(exam["id"], action="pause", target=[s["id"] for s in live[20:25]])
        await rt_api.command(exam["id"], action="lock", target=[s["id"] for s in live[:60:4]])
        await rt_api.command(exam["id"], action="terminate", target=live[30]["id"])
        await rt_api.command(exam["id"], action="extend", target=live[40]["id"], minutes=15)
        for s in live[50:54]:
            await scripted.close(s["access_code"])

        await expect(dashboard.locator('button[data-counter="offline"] .n')).to_have_text("4")
        await expect(dashboard.locator('button[data-counter="paused"] .n')).to_have_text("5")
        await expect(dashboard.locator('button[data-counter="completed"] .n')).to_have_text("1")
        await expect(dashboard.locator('button[data-counter="terminated"] .n')).to_have_text("1")
        await expect(dashboard.locator('button[data-counter="alerts"] .n')).to_have_text("6")
        await dashboard.locator('th[data-sort="status"] button').click()
        await dashboard.locator('th[data-sort="status"] button').click()
        await expect(dashboard.locator('th[data-sort="status"]')).to_have_attribute(
            "aria-sort", "descending"
        )
        rows = dashboard.locator("#session-rows tr[data-session-id]")
        await expect(rows.nth(3).locator(".delivery")).to_have_text("delivered")
        await rows.nth(2).locator(".row-check").check()
        await rows.nth(3).locator(".row-check").check()
        await screenshot(dashboard, "dashboard-240-sessions")

        # Sort by alerts: the session with two alerts comes first.
        await dashboard.locator('th[data-sort="alerts"] button').click()
        first_row = dashboard.locator("#session-rows tr[data-session-id]").first
        await expect(first_row).to_have_attribute("data-session-id", live[3]["id"])
        await expect(first_row.locator(".alerts")).to_have_text("2")

        # Search as you type.
        name = live[3]["candidate_name"]
        await dashboard.get_by_label("Search").press_sequentially(name[:6], delay=20)
        await expect(dashboard.locator("#session-rows tr[data-session-id]").first).to_contain_text(
            name[:6]
        )
        await dashboard.get_by_label("Search").fill(live[3]["candidate_id"])
        await expect(dashboard.locator("#session-rows tr[data-session-id]")).to_have_count(1)

        # The side panel: details, history, irregularity.
        await first_row.get_by_role("button", name=name).click()
        panel = dashboard.locator("#panel")
        await expect(panel.get_by_role("heading", name=name)).to_be_visible()
        history = panel.locator("#history")
        await expect(history).to_contain_text("Client alert")
        await expect(history).to_contain_text("fullscreen exit")
        await panel.get_by_label("Category").select_option("examinee/communication")
        await panel.get_by_label("Note").fill("Talking to the neighbour at 10:42.")
        await panel.get_by_role("button", name="Report").click()
        await expect(panel.locator("#irr-status")).to_have_text("Irregularity reported.")
        await expect(history.locator("li").first).to_contain_text("Irregularity reported")
        await expect(history.locator("li").first).to_contain_text("Talking to the neighbour")
        await expect(history.locator("li.h-irregularity")).to_have_count(1)
        await dashboard.get_by_label("Search").fill("")
        await expect(dashboard.locator("#sessions")).to_have_attribute("aria-rowcount", "241")
        await panel.evaluate("el => { el.scrollTop = 0; }")
        await screenshot(dashboard, "dashboard-session-panel")
        await panel.get_by_role("button", name="Close session details").click()
        await expect(panel).to_be_hidden()
        irregularities = await rt_api.http.get(f"/api/v1/exams/{exam['id']}/irregularities")
        assert irregularities.json()["irregularities"][0]["category"] == "examinee/communication"
    finally:
        await scripted.close_all()


async def test_2000_sessions_stay_smooth(browsers: Browsers, rt_api: Api) -> None:
    exam, _ = await make_exam(rt_api, 2000, groups=["Hall A", "Hall B", "Hall C", "Hall D"])
    dashboard = await browsers.dashboard(exam["id"])
    table = dashboard.locator("#sessions")
    # Virtualised: all 2,000 are rows of the table, only those in view are in the DOM.
    await expect(table).to_have_attribute("aria-rowcount", "2001")
    attached = await dashboard.locator("#session-rows tr[data-session-id]").count()
    assert 10 < attached < 100, attached
    # 2,000 deltas in one burst (the server may drop the dashboard as a slow consumer: it
    # then reconnects and catches up from the event log).
    await rt_api.command(exam["id"], action="lock", target="all")
    await expect(dashboard.locator('[data-counter="locked"] .n')).to_have_text("2000")
    await expect(dashboard.locator('#session-rows tr[data-locked="false"]')).to_have_count(0)
    # Scrolling renders the rows that come into view.
    await dashboard.locator("#table-wrap").evaluate("el => { el.scrollTop = el.scrollHeight; }")
    last = dashboard.locator('#session-rows tr[aria-rowindex="2001"]')
    await expect(last).to_have_attribute("data-locked", "true")
    # Typing in the search box filters 2,000 sessions per keystroke.
    await dashboard.get_by_label("Search").press_sequentially("S11999", delay=30)
    await expect(table).to_have_attribute("aria-rowcount", "2")
    await expect(dashboard.locator("#session-rows tr[data-session-id]")).to_contain_text("S11999")
    await dashboard.get_by_label("Search").fill("")
    await expect(table).to_have_attribute("aria-rowcount", "2001")
    await dashboard.locator('th[data-sort="group"] button').click()
    await dashboard.locator("#select-all").check()
    await expect(dashboard.get_by_label("Apply to")).to_contain_text("Selected sessions (2000)")
    # How long the main thread blocks is a figure of the machine, not a behaviour: it is
    # measured by `python -m loadtests.dashboard_smooth` (docs/performance.md).


async def test_dashboard_shows_new_sessions_and_other_proctors_commands(
    browsers: Browsers, rt_api: Api
) -> None:
    exam, [session] = await make_exam(rt_api, 1)
    dashboard = await browsers.dashboard(exam["id"])
    await expect(dashboard.locator("#session-rows tr[data-session-id]")).to_have_count(1)
    more = await rt_api.create_sessions(exam["id"], 2)
    await expect(dashboard.locator("#session-rows tr[data-session-id]")).to_have_count(3)
    await rt_api.command(exam["id"], action="lock", target=more[0]["id"])
    line = row(dashboard, more[0]["id"])
    await expect(line).to_have_attribute("data-locked", "true")
    await expect(line.locator(".cmd")).to_have_text("Lock")
    await expect(line.locator(".delivery")).to_have_text("queued")
    await expect(row(dashboard, session["id"])).to_have_attribute("data-locked", "false")
