"""axe-core over the candidate page and the dashboard in a real Chromium, in each main state,
in the light and the dark theme: no serious or critical violation (colour contrast included)."""

from __future__ import annotations

import pytest
from browser_axe import assert_accessible, require_axe
from browser_exams import make_exam
from browser_support import Browsers, ScriptedCandidates, row
from browser_users import make_user, sign_in
from clients import Api
from playwright.async_api import expect
from server import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

SCHEMES = ["light", "dark"]


@pytest.fixture(autouse=True)
def _axe_installed() -> None:
    require_axe()


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_candidate_page_states(browsers: Browsers, rt_api: Api, scheme: str) -> None:
    """Sign-in screens, the lock notice, the running exam, paused, and refused (locked)."""
    exam, [session] = await make_exam(rt_api, 1, settings={"lock_sessions": True})
    page = await browsers.candidate(color_scheme=scheme)
    await expect(page.locator("html")).to_have_attribute("data-theme", scheme)
    await expect(page.locator("#screen-code")).to_be_visible()
    await assert_accessible(page, f"candidate access code ({scheme})")
    await page.get_by_role("button", name="Sign in with your account").click()
    await expect(page.locator("#screen-signin")).to_be_visible()
    await assert_accessible(page, f"candidate sign-in ({scheme})")

    page = await browsers.candidate(session["access_code"], color_scheme=scheme)
    notice = page.get_by_role("alertdialog", name="Session locked to this window")
    await expect(notice).to_be_visible()
    await assert_accessible(page, f"candidate lock notice ({scheme})")
    await notice.get_by_role("button", name="OK").click()
    await page.locator("label.choice").nth(2).click()
    await expect(page.locator("#progress-text")).to_have_text("1 of 20 answered")
    await assert_accessible(page, f"candidate running ({scheme})")

    await rt_api.command(exam["id"], action="pause", target=[session["id"]])
    paused = page.get_by_role("alertdialog", name="Paused by the proctor")
    await expect(paused).to_be_visible()
    await assert_accessible(page, f"candidate paused ({scheme})")

    # Another window cannot open the locked session.
    other = await browsers.candidate(session["access_code"], color_scheme=scheme)
    await expect(other.locator("#screen-refused")).to_be_visible()
    await assert_accessible(other, f"candidate refused, locked ({scheme})")

    await rt_api.command(exam["id"], action="resume", target=[session["id"]])
    await expect(paused).to_be_hidden()
    await page.keyboard.press("?")
    await expect(page.get_by_role("dialog", name="Keyboard shortcuts")).to_be_visible()
    await assert_accessible(page, f"candidate shortcuts dialog ({scheme})")


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_dashboard_sign_in_and_exams(browsers: Browsers, rt_api: Api, scheme: str) -> None:
    """The sign-in form (with an error shown) and the exam list."""
    await make_exam(rt_api, 1, title="Accessible exam")
    page = await browsers.page(await browsers.context(color_scheme=scheme))
    await page.goto("/dashboard/")
    await expect(page.get_by_role("heading", name="Staff sign-in")).to_be_visible()
    await expect(page.locator("html")).to_have_attribute("data-theme", scheme)
    await assert_accessible(page, f"dashboard sign-in ({scheme})")
    await page.get_by_label("Login or e-mail").fill("nobody")
    await page.get_by_label("Password", exact=True).fill("wrong password")
    await page.get_by_role("button", name="Sign in", exact=True).click()
    await expect(page.locator("#login-error")).to_be_visible()
    await assert_accessible(page, f"dashboard sign-in error ({scheme})")

    page = await browsers.dashboard(color_scheme=scheme)
    await expect(page.locator("#exam-rows tr[data-exam-id]").first).to_be_visible()
    await assert_accessible(page, f"dashboard exam list ({scheme})")


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_dashboard_monitor_panel_and_dialogs(
    browsers: Browsers, rt_api: Api, rt_server: ServerProcess, scheme: str
) -> None:
    """A live exam with every kind of row (active, paused, locked, offline with its incident,
    a raised hand, selected, a delivered command), the session panel with its history, the
    command and help dialogs."""
    exam, sessions = await make_exam(rt_api, 8, groups=["Hall A", "Hall B"])
    scripted = ScriptedCandidates(rt_server.ws_url)
    try:
        await scripted.open_many([s["access_code"] for s in sessions[:5]])
        await rt_api.command(exam["id"], action="pause", target=[sessions[0]["id"]])
        await rt_api.command(exam["id"], action="lock", target=[sessions[1]["id"]])
        await scripted.close(sessions[2]["access_code"])  # offline
        await scripted.send(sessions[4]["access_code"], {"type": "raise_hand"})
        page = await browsers.dashboard(exam["id"], color_scheme=scheme)
        await expect(row(page, sessions[2]["id"])).to_have_attribute("data-connected", "false")
        await expect(row(page, sessions[0]["id"])).to_have_attribute("data-status", "paused")
        await expect(row(page, sessions[4]["id"])).to_have_attribute("data-hand", "true")
        await row(page, sessions[3]["id"]).get_by_role("checkbox").check()
        await page.locator("#actionbar").get_by_role("button", name="Resume").click()
        await expect(row(page, sessions[3]["id"]).locator(".delivery")).to_be_visible()
        await page.locator('button[data-counter="active"]').click()
        await page.locator('button[data-counter="active"]').click()
        await page.keyboard.press("j")
        await assert_accessible(page, f"dashboard monitor ({scheme})")

        await row(page, sessions[0]["id"]).locator("button.cand").click()
        panel = page.locator("#panel")
        await expect(panel).to_be_visible()
        await expect(panel.locator("#history li").first).to_be_visible()
        await assert_accessible(page, f"dashboard session panel ({scheme})")

        await panel.get_by_role("button", name="Terminate…").click()
        dialog = page.get_by_role("dialog")
        await expect(dialog).to_be_visible()
        await assert_accessible(page, f"dashboard command dialog ({scheme})")
        await dialog.get_by_role("button", name="Cancel").click()
        await expect(dialog).to_be_hidden()

        await page.locator("#exam-title").click()
        await page.keyboard.press("?")
        await expect(page.get_by_role("dialog", name="Keyboard shortcuts")).to_be_visible()
        await assert_accessible(page, f"dashboard shortcuts dialog ({scheme})")
    finally:
        await scripted.close_all()


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_dashboard_admin_pages(browsers: Browsers, rt_api: Api, scheme: str) -> None:
    """Every section an admin (signed in with a password) is offered: users, audit, guests,
    nodes, and whatever page is added to the top bar later."""
    admin = await make_user(rt_api, ["admin"], name="Ada Admin")
    await make_exam(rt_api, 1, settings={"allow_guests": True, "lab_networks": ["127.0.0.0/8"]})
    page = await browsers.page(await browsers.context(color_scheme=scheme))
    await page.goto("/dashboard/")
    await sign_in(page, admin["login"])
    await expect(page.locator("#view-exams")).to_be_visible()

    content = {  # what shows once a page has loaded
        "users": "#users-rows tr",
        "audit": "#audit-rows tr",
        "guests": "#pool-stats dt",
        "nodes": "#nodes-rows tr",
    }
    links = page.locator("#sections a[data-nav]:visible")
    pages = await links.evaluate_all("els => els.map((a) => [a.dataset.nav, a.search])")
    sections = {name: href for name, href in pages if name != "exams"}
    assert set(content) <= set(sections), sections
    for name, href in sections.items():
        await page.goto(f"/dashboard/{href}")  # "?page=…"
        await expect(page.locator("main > .view:not([hidden])")).to_have_count(1)
        if name in content:
            await expect(page.locator(content[name]).first).to_be_visible()
        await page.wait_for_load_state("networkidle")
        await assert_accessible(page, f"dashboard {name} page ({scheme})")
