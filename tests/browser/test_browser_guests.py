"""Guest accounts in the browser: staff sizes the pool, a candidate who cannot sign in takes a
guest account on a lab computer, sees its password once, sits the exam, and staff reassigns
the session to the real candidate from the Guests page. Also the candidate's own sign-in."""

from __future__ import annotations

import uuid

import pytest
from browser_exams import make_exam
from browser_support import CANDIDATE_VIEWPORT, Browsers, row, screenshot
from browser_users import PASSWORD, make_user, sign_in
from clients import Api
from playwright.async_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


async def test_guest_account_end_to_end_and_reassignment(
    browsers: Browsers, rt_api: Api
) -> None:
    # The browser connects from 127.0.0.1, inside the exam's lab network.
    exam = await rt_api.create_exam(
        id=f"g-{uuid.uuid4().hex[:8]}",
        title="Statistics resit",
        groups=["Lab 1"],
        settings={"allow_guests": True, "lab_networks": ["127.0.0.0/8"]},
    )
    admin = await make_user(rt_api, ["admin"])
    staff = await browsers.page(await browsers.context())
    await staff.goto("/dashboard/?page=guests")
    await sign_in(staff, admin["login"])
    guests = staff.locator("#view-guests")
    await expect(guests.get_by_role("heading", name="Guest accounts", exact=True)).to_be_visible()
    await guests.get_by_label("Accounts in the pool").fill("4")
    await guests.get_by_role("button", name="Resize").click()
    await expect(guests.locator('#pool-stats [data-stat="accounts"] dd')).to_have_text("4")

    candidate = await browsers.page(await browsers.context(CANDIDATE_VIEWPORT))
    await candidate.goto(f"/candidate/?exam={exam['id']}")
    await candidate.get_by_role("button", name="I can't sign in — use a guest account").click()
    form = candidate.locator("#guest-form")
    await expect(form.get_by_label("Exam")).to_be_hidden()  # the link names the exam: no choice
    await form.get_by_label("Title").fill("Ms")
    await form.get_by_label("First name").fill("Grace")
    await form.get_by_label("Surname").fill("Hopper")
    await form.get_by_label("Student number").fill("S-1906")
    await form.get_by_label("E-mail").fill("grace@example.org")
    await form.get_by_role("button", name="Get a guest account").click()

    card = candidate.locator("#screen-guest-account")
    await expect(card.get_by_role("heading", name="Write these down now")).to_be_visible()
    account = (await card.locator("#ga-login").inner_text()).strip()
    password = (await card.locator("#ga-password").inner_text()).strip()
    assert account.startswith("guest") and len(password) >= 8, (account, password)
    go = card.get_by_role("button", name="Continue to the exam")
    await expect(go).to_be_disabled()
    await screenshot(candidate, "candidate-guest-password")
    await card.get_by_label("I have written down the account and the password").check()
    await go.click()

    await expect(candidate.locator("#screen-exam")).to_be_visible()
    await expect(candidate.locator("#exam-title")).to_have_text("Statistics resit")
    await expect(candidate.locator("#ga-password")).to_have_text("")  # shown once
    assert password not in await candidate.evaluate("JSON.stringify(sessionStorage)")
    await candidate.locator("#choices label").first.click()
    await candidate.get_by_role("button", name="Submit exam").click()
    await candidate.get_by_role("button", name="Submit", exact=True).click()
    await expect(candidate.locator("#screen-final")).to_be_visible()

    # Staff sees the guest session with what the guest typed, and gives it to the candidate.
    await guests.get_by_label("Exam").select_option(exam["id"])
    item = guests.locator(f'#gs-list li[data-account="{account}"]')
    await expect(item).to_contain_text("Ms Grace Hopper")
    await expect(item).to_contain_text("S-1906")
    await expect(item).to_contain_text("grace@example.org")
    await expect(guests.locator("#gs-warning")).to_contain_text("guest accounts")
    await expect(item.get_by_label("Candidate id")).to_have_value("S-1906")
    await item.get_by_label("Candidate id").fill("c-hopper")
    await item.get_by_label("Candidate name").fill("Grace Hopper")
    await screenshot(staff, "dashboard-guests")
    await item.get_by_role("button", name="Reassign").click()
    await expect(item).to_be_hidden()
    await expect(guests.locator("#gs-status")).to_contain_text("No session")
    sessions = (await rt_api.http.get(f"/api/v1/exams/{exam['id']}/sessions")).json()["sessions"]
    assert [(s["candidate_id"], s["candidate_name"]) for s in sessions] == [
        ("c-hopper", "Grace Hopper")
    ]
    await expect(guests.locator('#pool-stats [data-stat="reserved"] dd')).to_have_text("0")


async def test_candidate_signs_in_with_an_account_and_is_paused(
    browsers: Browsers, rt_api: Api
) -> None:
    exam, _ = await make_exam(rt_api, 1, title="Geography quiz")
    student = await make_user(rt_api, ["candidate"], name="Carl Candidate")
    dashboard = await browsers.dashboard(exam["id"])
    candidate = await browsers.page(await browsers.context(CANDIDATE_VIEWPORT))
    await candidate.goto("/candidate/")
    await candidate.get_by_role("button", name="Sign in with your account").click()
    form = candidate.locator("#signin-form")
    await form.get_by_label("Login or e-mail").fill(student["login"])
    await form.get_by_label("Password").fill("wrong password!")
    await form.get_by_label("Exam").fill(exam["id"])
    await form.get_by_role("button", name="Sign in and start").click()
    await expect(form.locator("#signin-error")).to_have_text("Wrong login or password.")
    await form.get_by_label("Password").fill(PASSWORD)
    await form.get_by_role("button", name="Sign in and start").click()
    await expect(candidate.locator("#screen-exam")).to_be_visible()
    await expect(candidate.locator("#candidate-name")).to_have_text("Carl Candidate")
    # The candidate's login sets no cookie in this browser (it is not a staff session).
    assert not await candidate.context.cookies()

    line = dashboard.locator("#session-rows tr[data-session-id]").filter(has_text="Carl")
    await expect(line).to_have_attribute("data-connected", "true")
    session_id = await line.get_attribute("data-session-id")
    await row(dashboard, session_id).get_by_role("checkbox").check()
    await dashboard.locator("#actionbar").get_by_role("button", name="Pause").click()
    await expect(candidate.get_by_role("alertdialog", name="Paused by the proctor")).to_be_visible()
    # A reload of the tab reopens the same session with the stored login token.
    await candidate.reload()
    await expect(candidate.get_by_role("alertdialog", name="Paused by the proctor")).to_be_visible()
