"""The Webhooks page: create a subscription (its secret shown once), send a test ping that a
real receiver on 127.0.0.1 refuses once, see the error in the delivery log, retry, see it
delivered; lock sessions and see the event delivered and logged."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browser_axe import assert_accessible
from browser_support import Browsers, screenshot
from clients import Api
from playwright.async_api import expect
from webhook_receiver import Receiver

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hooks = Receiver().start()
    yield hooks
    hooks.close()


async def test_webhooks_page_creates_tests_and_logs(
    browsers: Browsers, rt_api: Api, receiver: Receiver
) -> None:
    exam = await rt_api.create_exam(title="Webhooks page")
    page = await browsers.dashboard()
    await page.locator('#sections a[data-nav="webhooks"]').click()
    await expect(page.get_by_role("heading", name="Webhooks", exact=True)).to_be_visible()

    form = page.locator("#wh-form")
    await form.get_by_label("URL (http or https)").fill(receiver.url())
    await form.get_by_label("Exam", exact=True).select_option(exam["id"])
    await form.get_by_label("Description").fill("LMS grade sync")
    await form.get_by_label("lock", exact=True).check()
    await form.get_by_role("button", name="Create subscription").click()
    secret = page.locator("#wh-secret-value")
    await expect(secret).to_contain_text("whsec_")
    receiver.secrets["/hook"] = (await secret.text_content() or "").strip()

    row = page.locator("#wh-rows tr", has_text=receiver.url())
    await expect(row.locator('[data-col="exam"]')).to_have_text(exam["id"])
    await expect(row.locator('[data-col="kinds"]')).to_have_text("lock")
    await expect(row.locator('[data-col="state"]')).to_have_text("Active")

    receiver.plan = ["500"]  # the first ping is refused on purpose
    await row.get_by_role("button", name="Send test").click()
    log = page.locator("#wh-log-rows")
    ping = log.locator('tr[data-status="pending"]', has_text="ping")
    await expect(ping.locator('[data-col="error"]')).to_contain_text("HTTP 500")
    await expect(ping.locator('[data-col="attempts"]')).to_have_text("1")
    await ping.get_by_role("button", name="Retry now").click()
    delivered_ping = log.locator('tr[data-status="delivered"]', has_text="ping")
    await expect(delivered_ping.locator('[data-col="attempts"]')).to_have_text("2")
    assert [r.kind for r in receiver.accepted()] == ["ping"]

    await rt_api.create_sessions(exam["id"], 2)
    await rt_api.command(exam["id"], action="lock", target="all")
    await expect(log.locator('tr[data-status="delivered"]', has_text="lock")).to_have_count(2)
    await expect(row.locator('[data-col="delivered"]')).to_have_text("3")
    # To artifacts/ only; docs/screenshots/dashboard-webhooks.png is a copy of it taken by hand
    # (a test run never changes tracked files).
    await page.locator("#wh-secret-close").click()
    await page.locator("#toasts").evaluate("e => e.replaceChildren()")
    await page.locator("#view-webhooks").evaluate("e => e.scrollTo(0, 0)")
    await screenshot(page, "dashboard-webhooks")
    await assert_accessible(page, "webhooks page with a delivery log")

    await row.get_by_role("button", name="Disable").click()
    await expect(row.locator('[data-col="state"]')).to_have_text("Disabled")
