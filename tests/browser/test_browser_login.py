"""Real staff logins in the browser: the HttpOnly cookie drives REST and /ws/proctor, the
role decides what is offered, blocked logins, unlocking from the Users page, the audit log."""

from __future__ import annotations

import re
import uuid

import pytest
from browser_exams import make_exam
from browser_support import Browsers, row, screenshot
from browser_users import PASSWORD, make_user, sign_in
from clients import Api
from playwright.async_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


async def test_login_cookie_session_pauses_a_candidate(browsers: Browsers, rt_api: Api) -> None:
    exam, [session] = await make_exam(rt_api, 1, groups=["Hall S"], title="Biology final")
    user = await make_user(rt_api, ["supervisor"], groups=["Hall S"], name="Sam Supervisor")
    context = await browsers.context()
    page = await browsers.page(context)
    sockets: list[str] = []
    page.on("websocket", lambda ws: sockets.append(ws.url))
    await page.goto("/dashboard/")
    await expect(page.get_by_role("heading", name="Staff sign-in")).to_be_visible()
    await screenshot(page, "dashboard-login")

    await sign_in(page, user["login"], "wrong password!")
    await expect(page.locator("#login-error")).to_have_text("Wrong login or password.")
    await sign_in(page, user["email"])
    await expect(page.locator("#whoami")).to_contain_text("Sam Supervisor")
    await expect(page.locator("#whoami-role")).to_have_text("supervisor")
    # The token is in an HttpOnly cookie: the page cannot read it, and no storage holds it.
    cookies = {c["name"]: c for c in await context.cookies()}
    assert cookies["realtime_token"]["httpOnly"] and not cookies["realtime_csrf"]["httpOnly"]
    assert "realtime_token" not in await page.evaluate("document.cookie")
    assert await page.evaluate("sessionStorage.length") == 0
    # A supervisor has no admin pages.
    await expect(page.locator('#sections a[data-nav="users"]')).to_be_hidden()

    await page.locator(f'a[data-exam="{exam["id"]}"]').click()
    candidate = await browsers.candidate(session["access_code"])
    line = row(page, session["id"])
    await expect(line).to_have_attribute("data-connected", "true")
    await line.get_by_role("checkbox").check()
    await page.locator("#actionbar").get_by_role("button", name="Pause").click()
    await expect(candidate.get_by_role("alertdialog", name="Paused by the proctor")).to_be_visible()
    await expect(line.locator(".delivery")).to_have_text("delivered")
    # The socket was authenticated by the cookie: no token in its URL (nor in access logs).
    assert sockets and all("token" not in url for url in sockets), sockets
    # The irregularity form POSTs with the CSRF header.
    await line.get_by_role("button", name=session["candidate_name"]).click()
    await page.locator("#panel").get_by_label("Category").select_option("examinee/communication")
    await page.get_by_label("Note").fill("Phone on the desk")
    await page.get_by_role("button", name="Report").click()
    await expect(page.locator("#irr-status")).to_have_text("Irregularity reported.")

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Staff sign-in")).to_be_visible()
    assert "realtime_token" not in {c["name"] for c in await context.cookies()}
    me = await page.request.get("/api/v1/auth/me")
    assert me.status == 401


async def test_a_proctor_is_not_offered_unlock_or_terminate(
    browsers: Browsers, rt_api: Api
) -> None:
    exam, [session] = await make_exam(rt_api, 1, groups=["Hall P"])
    user = await make_user(rt_api, ["proctor"], groups=["Hall P"], name="Pat Proctor")
    page = await browsers.page(await browsers.context())
    await page.goto(f"/dashboard/?exam={exam['id']}")
    await sign_in(page, user["login"])
    await expect(page.locator("#whoami-role")).to_have_text("proctor")
    await expect(page.locator("#session-rows tr[data-session-id]")).to_have_count(1)
    bar = page.locator("#actionbar")
    await expect(bar.get_by_role("button", name="Pause")).to_be_visible()
    await expect(bar.get_by_role("button", name="Lock")).to_be_visible()
    await expect(bar.get_by_role("button", name="Unlock…")).to_be_hidden()
    await expect(bar.get_by_role("button", name="Terminate…")).to_be_hidden()
    await row(page, session["id"]).get_by_role("button", name=session["candidate_name"]).click()
    panel = page.locator("#panel-actions")
    await expect(panel.get_by_role("button", name="Extend…")).to_be_visible()
    await expect(panel.get_by_role("button", name="Unlock…")).to_be_hidden()
    await expect(panel.get_by_role("button", name="Terminate…")).to_be_hidden()
    await expect(page.locator("#sections a[data-nav]:visible")).to_have_count(1)  # Exams


async def test_blocked_login_then_admin_unlocks_it_and_audit_shows_the_login(
    browsers: Browsers, rt_api: Api
) -> None:
    admin = await make_user(rt_api, ["admin"], name=f"Ada Admin {uuid.uuid4().hex[:4]}")
    victim = await make_user(rt_api, ["viewer"], name=f"Vic Viewer {uuid.uuid4().hex[:4]}")

    # Three wrong passwords block the login (the server is started with 3).
    page = await browsers.page(await browsers.context())
    await page.goto("/dashboard/")
    for _ in range(3):
        await sign_in(page, victim["login"], "not the password")
        await expect(page.locator("#login-error")).to_be_visible()
    await expect(page.locator("#login-error")).to_contain_text("blocked until")
    # Blocked also with the right password.
    await sign_in(page, victim["login"])
    await expect(page.locator("#login-error")).to_contain_text("blocked until")
    await screenshot(page, "dashboard-login-blocked")

    # The admin finds the user (search as you type) and lifts the block.
    admin_page = await browsers.page(await browsers.context())
    await admin_page.goto("/dashboard/")
    await sign_in(admin_page, admin["login"])
    await admin_page.locator("#sections").get_by_role("link", name="Users").click()
    await expect(admin_page).to_have_url(re.compile(r"\?page=users$"))
    find = admin_page.get_by_label("Find a user")
    await find.press_sequentially(victim["full_name"][:9], delay=20)
    line = admin_page.locator(f'#users-rows tr[data-user-id="{victim["id"]}"]')
    await expect(line).to_have_attribute("data-blocked", "true")
    await expect(line.locator(".col-blocked")).to_contain_text("Blocked until")
    await find.fill(victim["full_name"])
    await expect(admin_page.locator("#users-rows tr[data-user-id]")).to_have_count(1)
    await line.get_by_role("button", name="Unlock").click()
    await expect(line).to_have_attribute("data-blocked", "false")

    await sign_in(page, victim["login"])
    await expect(page.locator("#whoami")).to_contain_text(victim["full_name"])
    # A viewer watches but is offered no command and no admin page.
    await expect(page.locator('#sections a[data-nav="audit"]')).to_be_hidden()

    # The audit log shows the failures, the lockout, the unlock and the login.
    await admin_page.locator("#sections").get_by_role("link", name="Audit").click()
    audit = admin_page.locator("#view-audit")
    await audit.get_by_label("User", exact=True).select_option(victim["id"])
    rows = admin_page.locator("#audit-rows tr")
    await expect(rows.first).to_have_attribute("data-action", "login")
    await expect(rows.first).to_contain_text(victim["full_name"])
    for action in ("login_failed", "lockout", "login_blocked", "unlock"):
        entry = admin_page.locator(f'#audit-rows tr[data-action="{action}"]').first
        await expect(entry).to_be_visible()
    await expect(admin_page.locator('#audit-rows tr[data-action="unlock"]')).to_contain_text(
        admin["full_name"]
    )
    # A date range that ends before today shows nothing.
    await audit.get_by_label("To", exact=True).fill("2001-01-01T00:00")
    await audit.get_by_role("button", name="Show").click()
    await expect(admin_page.locator("#audit-rows")).to_contain_text("No entries")
    csv = await admin_page.request.get(f"/api/v1/audit.csv?user={victim['id']}")
    assert csv.status == 200 and "lockout" in await csv.text()


async def test_admin_creates_a_user_who_activates_and_signs_in(
    browsers: Browsers, rt_api: Api
) -> None:
    admin = await make_user(rt_api, ["admin"])
    page = await browsers.page(await browsers.context())
    await page.goto("/dashboard/?page=users")
    await sign_in(page, admin["login"])
    await expect(page.get_by_role("heading", name="Users")).to_be_visible()
    tag = uuid.uuid4().hex[:6]
    await page.get_by_role("button", name="New user…").click()
    dialog = page.locator("#user-dialog")
    await dialog.get_by_label("Full name").fill(f"Nora New {tag}")
    await dialog.get_by_label("E-mail").fill(f"nora-{tag}@example.org")
    await dialog.get_by_label("proctor").check()
    await dialog.get_by_label("Groups").fill("Hall A, Hall B")
    await dialog.get_by_role("button", name="Create user").click()
    invite = page.locator("#invite-dialog")
    await expect(invite).to_be_visible()
    link = await invite.get_by_label("Activation link").input_value()
    created_id = await page.locator("#users-rows tr[data-status=invited]").first.get_attribute(
        "data-user-id"
    )
    assert "/dashboard/#/activate?token=" in link
    await invite.get_by_role("button", name="Done").click()
    await expect(page.locator(f'#users-rows tr[data-user-id="{created_id}"]')).to_be_visible()
    await screenshot(page, "dashboard-users")
    await page.get_by_label("Find a user").fill(f"nora-{tag}")
    line = page.locator("#users-rows tr[data-user-id]")
    await expect(line).to_have_count(1)
    await expect(line).to_have_attribute("data-status", "invited")
    await expect(line).to_contain_text("Hall A, Hall B")

    # Edit the roles: add supervisor.
    await line.get_by_role("button", name="Edit…").click()
    await dialog.get_by_label("supervisor").check()
    await dialog.get_by_role("button", name="Save").click()
    await expect(line).to_contain_text("supervisor")

    newcomer = await browsers.page(await browsers.context())
    await newcomer.goto(link)
    await expect(newcomer.get_by_role("heading", name="Activate your account")).to_be_visible()
    await newcomer.get_by_label("New password").fill(PASSWORD)
    await newcomer.get_by_label("Repeat the password").fill(PASSWORD)
    await newcomer.get_by_role("button", name="Activate").click()
    await expect(newcomer.get_by_role("heading", name="Your account is active")).to_be_visible()
    assert "token" not in newcomer.url
    await newcomer.get_by_role("link", name="Go to sign-in").click()
    await sign_in(newcomer, f"nora-{tag}@example.org")
    await expect(newcomer.locator("#whoami-role")).to_have_text("supervisor, proctor")

    await page.locator("#view-users").get_by_label("Status").select_option("active")
    await expect(line).to_have_attribute("data-status", "active")
    await expect(line.locator(".col-online")).to_contain_text("Yes")
