"""The pages behind the mailed links, in Chromium: an invited user activates the account from
the link in the invitation e-mail and signs in; "Forgot your password?" mails a reset link
whose page sets a new password; the Users page shows that the invitation was e-mailed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browser_axe import assert_accessible
from browser_support import Browsers, screenshot
from browser_users import PASSWORD, sign_in
from clients import Api, eventually
from playwright.async_api import expect
from server import STAFF_TOKEN, ServerProcess
from smtp_server import LocalSmtp, link_of, mail_server

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

NEW_PASSWORD = "a brand new password"


@pytest.fixture(scope="module")
def mailing() -> Iterator[tuple[ServerProcess, LocalSmtp]]:
    smtp = LocalSmtp().start()
    process = mail_server(smtp.port).start()
    yield process, smtp
    process.stop()
    smtp.stop()


async def choose_password(page: object, password: str) -> None:
    await page.locator("#activate-password").fill(password)  # type: ignore[attr-defined]
    await page.locator("#activate-confirm").fill(password)  # type: ignore[attr-defined]
    await page.locator("#activate-submit").click()  # type: ignore[attr-defined]


async def test_mailed_links_activate_and_reset(
    rt_chromium: object, mailing: tuple[ServerProcess, LocalSmtp]
) -> None:
    """Invitation mail → its link's page activates the account → sign in; the Users page says
    the invitation was e-mailed; a reset requested on the sign-in page → its link's page sets a
    new password → sign in with it."""
    server, smtp = mailing
    browsers = Browsers(rt_chromium, server)
    api = Api(server.url)
    try:
        email = "ada.lovelace@example.org"
        created = await api.http.post("/api/v1/users", json={
            "full_name": "Ada Lovelace", "email": email, "login": "ada", "roles": ["proctor"]})
        assert created.status_code == 201, created.text
        user_id = created.json()["user"]["id"]
        [invitation] = await eventually(lambda: smtp.to(email))
        link, _, _ = link_of(invitation)

        admin = await browsers.page(await browsers.context(token=STAFF_TOKEN))
        await admin.goto("/dashboard/?page=users")
        note = admin.locator(f'tr[data-user-id="{user_id}"] .invitation')
        await expect(note).to_have_attribute("data-mail", "sent")
        await expect(note).to_contain_text("Invitation e-mailed")

        page = await browsers.page(await browsers.context())
        await page.goto(link)
        await expect(page.get_by_role("heading", name="Activate your account")).to_be_visible()
        await choose_password(page, PASSWORD)
        await expect(page.get_by_role("heading", name="Your account is active")).to_be_visible()
        assert "token" not in page.url  # not left in the address bar
        await page.get_by_role("link", name="Go to sign-in").click()
        await sign_in(page, email)
        await expect(page.locator("#whoami")).to_contain_text("Ada Lovelace")
        await page.get_by_role("button", name="Sign out").click()

        await expect(page.get_by_role("heading", name="Staff sign-in")).to_be_visible()
        await page.get_by_text("Forgot your password?").click()
        await page.get_by_label("E-mail address of your account").fill(email)
        await page.get_by_role("button", name="E-mail me a reset link").click()
        await expect(page.locator("#forgot-status")).to_contain_text("on its way")
        await assert_accessible(page, "sign-in with the password-reset request")
        [reset] = await eventually(lambda: [m for m in smtp.to(email) if m is not invitation])
        reset_link, kind, _ = link_of(reset)
        assert kind == "reset"
        await page.goto(reset_link)
        await expect(page.get_by_role("heading", name="Choose a new password")).to_be_visible()
        await screenshot(page, "dashboard-password-reset")
        await assert_accessible(page, "password reset page")
        await choose_password(page, NEW_PASSWORD)
        await expect(page.get_by_role("heading", name="Your password is changed")).to_be_visible()
        await page.get_by_role("link", name="Go to sign-in").click()
        await sign_in(page, "ada", NEW_PASSWORD)
        await expect(page.locator("#whoami")).to_contain_text("Ada Lovelace")
    finally:
        await api.close()
        await browsers.close()
    browsers.assert_no_page_errors()
