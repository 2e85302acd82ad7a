"""The candidate page in a real Chromium, driven from the dashboard in another context."""

from __future__ import annotations

import re

import pytest
from browser_exams import make_exam
from browser_support import DROP_SEEN_MS, Browsers, row, screenshot
from clients import Api
from playwright.async_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


async def test_lock_refuses_a_second_tab_and_unlock_then_reopen_locks_again(
    browsers: Browsers, rt_api: Api
) -> None:
    exam, [session] = await make_exam(rt_api, 1, title="History essay")
    dashboard = await browsers.dashboard(exam["id"])
    first_tab = await browsers.candidate(session["access_code"])
    await expect(first_tab.locator("#screen-exam")).to_be_visible()
    line = row(dashboard, session["id"])
    await expect(line).to_have_attribute("data-connected", "true")

    # Lock from the session's side panel (one session: no confirmation needed).
    await line.get_by_role("button", name=session["candidate_name"]).click()
    panel = dashboard.locator("#panel")
    await panel.get_by_role("button", name="Lock", exact=True).click()
    notice = first_tab.get_by_role("alertdialog", name="Session locked")
    await expect(notice).to_be_visible()
    await expect(line).to_have_attribute("data-locked", "true")
    await screenshot(first_tab, "candidate-locked")
    await notice.get_by_role("button", name="OK").click()
    await expect(notice).to_be_hidden()

    # A second tab of the same browser cannot open the locked session.
    second_tab = await browsers.candidate(session["access_code"], context=first_tab.context)
    refused = second_tab.locator("#screen-refused")
    await expect(refused).to_be_visible()
    await expect(refused).to_have_attribute("data-reason", "already_open")
    await expect(refused.get_by_role("heading")).to_have_text("Already open elsewhere")
    await expect(refused).to_contain_text("supervisor")
    await screenshot(second_tab, "candidate-refused")
    await expect(first_tab.locator("#screen-exam")).to_be_visible()

    # Unlock (confirmed in a dialog), then the second tab tries again: it opens, takes the
    # session over, and the session is locked again at once.
    await panel.get_by_role("button", name="Unlock…").click()
    dialog = dashboard.get_by_role("dialog")
    await expect(dialog).to_contain_text("Unlock")
    await dialog.get_by_role("button", name="Unlock 1 session").click()
    await expect(line).to_have_attribute("data-locked", "false")

    await second_tab.get_by_role("button", name="Try again").click()
    await expect(second_tab.locator("#screen-exam")).to_be_visible()
    await expect(
        second_tab.get_by_role("alertdialog", name="Session locked to this window")
    ).to_be_visible()
    await expect(line).to_have_attribute("data-locked", "true")
    await expect(first_tab.locator("#screen-final")).to_have_attribute("data-reason", "superseded")
    await expect(first_tab.get_by_role("heading", name="Opened in another window")).to_be_visible()


async def test_waiting_authorize_progress_and_submit(browsers: Browsers, rt_api: Api) -> None:
    exam, [session] = await make_exam(
        rt_api, 1, title="Physics lab quiz", settings={"requires_authorization": True}
    )
    dashboard = await browsers.dashboard(exam["id"])
    candidate = await browsers.candidate(session["access_code"])
    await expect(candidate.get_by_role("heading", name="Waiting for your proctor")).to_be_visible()
    await screenshot(candidate, "candidate-waiting")
    line = row(dashboard, session["id"])
    await expect(line).to_have_attribute("data-status", "awaiting")

    await line.get_by_role("checkbox").check()
    await dashboard.locator("#actionbar").get_by_role("button", name="Authorize").click()
    await expect(candidate.locator("#screen-exam")).to_be_visible()
    await expect(line).to_have_attribute("data-status", "active")
    await expect(candidate.locator("#time-left")).to_have_text(
        re.compile(r"^(59:[0-5]\d|1:00:00)$")
    )

    await candidate.get_by_text("Option C").click()
    await candidate.get_by_role("button", name="Next →").click()
    await candidate.get_by_text("Option A").click()
    await candidate.get_by_role("button", name="Next →").click()
    await expect(candidate.locator("#progress-text")).to_have_text("2 of 20 answered")
    await expect(line.locator(".col-progress")).to_have_text("Q 3 2 answered")
    await screenshot(candidate, "candidate-exam")

    await candidate.get_by_role("button", name="Submit exam").click()
    confirm = candidate.get_by_role("dialog", name="Submit your exam?")
    await expect(confirm).to_contain_text("18 questions are not answered")
    await confirm.get_by_role("button", name="Submit", exact=True).click()
    await expect(candidate.get_by_role("heading", name="Answers submitted")).to_be_visible()
    await expect(candidate.locator("#screen-final")).to_have_attribute("data-reason", "completed")
    await expect(line).to_have_attribute("data-status", "completed")
    # The resume token is forgotten: nothing is left to resume.
    stored = await candidate.evaluate(
        "Object.keys(sessionStorage).filter(k => k.startsWith('realtime.resume.'))"
    )
    assert stored == []


async def test_notice_extend_focus_loss_and_terminate(browsers: Browsers, rt_api: Api) -> None:
    exam, [session] = await make_exam(rt_api, 1, duration_minutes=30)
    dashboard = await browsers.dashboard(exam["id"])
    candidate = await browsers.candidate(session["access_code"])
    await expect(candidate.locator("#screen-exam")).to_be_visible()
    line = row(dashboard, session["id"])
    await line.get_by_role("checkbox").check()
    actions = dashboard.locator("#actionbar")

    await actions.get_by_role("button", name="Notice…").click()
    dialog = dashboard.get_by_role("dialog")
    await dialog.get_by_label("Message to the candidates").fill(
        "Please keep your eyes on your own screen."
    )
    await dialog.get_by_role("button", name="Send notice").click()
    message = candidate.get_by_role("alertdialog", name="Message from the proctor")
    await expect(message).to_contain_text("keep your eyes on your own screen")
    await expect(candidate.locator("#announcer")).to_contain_text("keep your eyes")
    await expect(line.locator(".delivery")).to_have_text("delivered")
    await screenshot(candidate, "candidate-notice")
    await message.get_by_role("button", name="OK").click()

    await actions.get_by_role("button", name="Extend…").click()
    await dialog.get_by_label("Minutes to add").fill("15")
    await dialog.get_by_role("button", name="Extend").click()
    extra = candidate.get_by_role("alertdialog", name="Extra time")
    await expect(extra).to_contain_text("15 more minutes")
    await expect(candidate.locator("#time-left")).to_have_text(re.compile(r"^(44:[0-5]\d|45:00)$"))
    await extra.get_by_role("button", name="OK").click()

    # Leaving the window is reported to the proctor.
    await candidate.evaluate("window.dispatchEvent(new Event('blur'))")
    await expect(line.locator(".alerts")).to_have_text("1")
    await expect(line.locator(".col-alerts")).to_contain_text("focus lost")

    await actions.get_by_role("button", name="Terminate…").click()
    await expect(dialog).to_contain_text("cannot be undone")
    await dialog.get_by_role("button", name="Terminate 1 session").click()
    await expect(candidate.get_by_role("heading", name="Your exam was ended")).to_be_visible()
    await expect(candidate.locator("#screen-final")).to_have_attribute("data-reason", "terminated")
    await expect(line).to_have_attribute("data-status", "terminated")
    await screenshot(candidate, "candidate-terminated")


async def test_candidate_reconnects_by_itself(browsers: Browsers, rt_api: Api) -> None:
    exam, [session] = await make_exam(rt_api, 1, settings={"lock_sessions": True})
    dashboard = await browsers.dashboard(exam["id"])
    candidate = await browsers.candidate(session["access_code"])
    await expect(candidate.locator("#screen-exam")).to_be_visible()
    locked = candidate.get_by_role("alertdialog", name="Session locked to this window")
    await locked.get_by_role("button", name="OK").click()
    line = row(dashboard, session["id"])
    await expect(line).to_have_attribute("data-locked", "true")

    await candidate.context.set_offline(True)
    await candidate.evaluate("window.__realtime.connection.dropSocket()")
    banner = candidate.locator("#reconnecting")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text("Reconnecting")
    await expect(line).to_have_attribute("data-connected", "false", timeout=DROP_SEEN_MS)
    await screenshot(candidate, "candidate-reconnecting")

    await candidate.context.set_offline(False)
    # The same tab resumes its locked session with its resume token: no unlock needed.
    await expect(banner).to_be_hidden()
    await expect(line).to_have_attribute("data-connected", "true")
    await expect(line.locator(".col-connection")).to_contain_text("↻ 1")
    await expect(candidate.locator("#screen-exam")).to_be_visible()
    await expect(candidate.locator("#overlay-message")).to_be_hidden()


async def test_access_code_form(browsers: Browsers, rt_api: Api) -> None:
    exam, [session] = await make_exam(rt_api, 1, title="Geography")
    candidate = await browsers.candidate()
    await candidate.get_by_label("Access code").fill("NOSUCHCODE")
    await candidate.get_by_role("button", name="Start").click()
    await expect(candidate.locator("#code-error")).to_contain_text("not recognised")
    await candidate.get_by_label("Access code").fill(session["access_code"].lower())
    await candidate.get_by_role("button", name="Start").click()
    await expect(candidate.locator("#screen-exam")).to_be_visible()
    await expect(candidate.locator("#exam-title")).to_have_text("Geography")
    # A reload in the same tab resumes the same session.
    await candidate.reload()
    await expect(candidate.locator("#screen-exam")).to_be_visible()
    await expect(candidate.locator("#net")).to_have_attribute("data-state", "open")
    state = await rt_api.session(exam["id"], session["id"])
    assert state["reconnects"] == 1  # resumed with the tab's resume token
