"""Keyboard shortcuts in a real Chromium: the help dialog, moving through the table, commands
by key (through the same confirmation as the buttons), never while typing."""

from __future__ import annotations

import re

import pytest
from browser_exams import make_exam
from browser_support import Browsers, ScriptedCandidates, row
from clients import Api
from playwright.async_api import expect
from server import ServerProcess

CURSOR = re.compile(r"\bcursor\b")

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


async def test_help_dialog_opens_with_question_mark(browsers: Browsers, rt_api: Api) -> None:
    """? opens the list of shortcuts as a modal dialog that keeps the focus; Esc closes it and
    the focus goes back."""
    exam, _ = await make_exam(rt_api, 2)
    page = await browsers.dashboard(exam["id"])
    await page.locator("#search").fill("?")  # typing a ? in a field is typing
    await expect(page.locator("#help-dialog")).to_be_hidden()
    await page.locator("#search").fill("")
    await page.locator("#exam-title").click()

    await page.keyboard.press("?")
    dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text("Pause")
    close = dialog.get_by_role("button", name="Close")
    await expect(close).to_be_focused()
    for key in ("Tab", "Shift+Tab", "Tab"):
        await page.keyboard.press(key)
        assert await page.evaluate("document.activeElement.closest('dialog')?.id") == "help-dialog"
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()

    await page.get_by_role("button", name="Keyboard shortcuts").click()
    await expect(dialog).to_be_visible()
    await close.click()
    await expect(dialog).to_be_hidden()
    await expect(page.get_by_role("button", name="Keyboard shortcuts")).to_be_focused()


async def test_table_keys_move_open_and_command(
    browsers: Browsers, rt_api: Api, rt_server: ServerProcess
) -> None:
    """j/k move the current row, Enter opens it, p/r/l command the open, selected or current
    session; several sessions ask for confirmation as the buttons do; "p" typed in the search
    box is only typed."""
    exam, sessions = await make_exam(rt_api, 3)
    first, second, third = sorted(sessions, key=lambda s: s["candidate_id"])
    scripted = ScriptedCandidates(rt_server.ws_url)
    try:
        await scripted.open_many([s["access_code"] for s in sessions])
        page = await browsers.dashboard(exam["id"])
        await expect(page.locator('#session-rows tr[data-status="active"]')).to_have_count(3)

        await page.keyboard.press("/")
        await expect(page.locator("#search")).to_be_focused()
        await page.keyboard.type("p")
        await expect(page.locator("#search")).to_have_value("p")
        await expect(page.locator('#session-rows tr[data-status="paused"]')).to_have_count(0)
        await page.locator("#search").fill("")
        # the search applies a moment later: move only among all three rows, as a user sees them
        await expect(page.locator('#session-rows tr[data-status="active"]')).to_have_count(3)
        await page.locator("#exam-title").click()

        await page.keyboard.press("j")
        await page.keyboard.press("j")
        await page.keyboard.press("k")
        await page.keyboard.press("j")
        await expect(row(page, second["id"])).to_have_class(CURSOR)
        await expect(row(page, second["id"]).locator("button.cand")).to_be_focused()
        await page.keyboard.press("p")  # the current session: one, no confirmation
        await expect(row(page, second["id"])).to_have_attribute("data-status", "paused")
        await expect(row(page, first["id"])).to_have_attribute("data-status", "active")

        await page.keyboard.press("Enter")
        panel = page.locator("#panel")
        await expect(panel).to_be_visible()
        await expect(panel.locator("#panel-title")).to_have_text(second["candidate_name"])
        await page.locator("#panel-title").click()
        await page.keyboard.press("r")  # the open session
        await expect(row(page, second["id"])).to_have_attribute("data-status", "active")
        await page.keyboard.press("l")
        await expect(row(page, second["id"])).to_have_attribute("data-locked", "true")
        await page.keyboard.press("Escape")
        await expect(panel).to_be_hidden()

        # Two selected with x: the key asks for confirmation, like the Pause button.
        await page.locator("#exam-title").click()
        await page.keyboard.press("k")
        await expect(row(page, first["id"])).to_have_class(CURSOR)
        await page.keyboard.press("x")
        await page.keyboard.press("j")
        await page.keyboard.press("j")
        await page.keyboard.press("x")
        await expect(row(page, third["id"])).to_have_attribute("aria-selected", "true")
        await page.keyboard.press("p")
        dialog = page.get_by_role("dialog")
        await expect(dialog).to_contain_text("Pause 2 selected sessions?")
        await dialog.get_by_role("button", name="Cancel").click()
        await expect(dialog).to_be_hidden()
        await expect(page.locator('#session-rows tr[data-status="paused"]')).to_have_count(0)
        await page.keyboard.press("p")
        await dialog.get_by_role("button", name="Pause 2 sessions").click()
        await expect(row(page, first["id"])).to_have_attribute("data-status", "paused")
        await expect(row(page, third["id"])).to_have_attribute("data-status", "paused")
        await expect(row(page, second["id"])).to_have_attribute("data-status", "active")
    finally:
        await scripted.close_all()


async def test_candidate_keys(browsers: Browsers, rt_api: Api) -> None:
    """n / b move between questions, 1-4 choose an answer (reported as progress), ? lists them."""
    _, [session] = await make_exam(rt_api, 1)
    page = await browsers.candidate(session["access_code"])
    await expect(page.locator("#screen-exam")).to_be_visible()
    await page.keyboard.press("n")
    await expect(page.locator("#question-title")).to_have_text("Question 2")
    await page.keyboard.press("2")
    await expect(page.get_by_role("radio", name="B Option B")).to_be_checked()
    await expect(page.locator("#progress-text")).to_have_text("1 of 20 answered")
    await page.keyboard.press("b")
    await expect(page.locator("#question-title")).to_have_text("Question 1")
    await page.keyboard.press("?")
    dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
    await expect(dialog).to_be_visible()
    await page.keyboard.press("n")  # behind the dialog: nothing moves
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(page.locator("#question-title")).to_have_text("Question 1")
