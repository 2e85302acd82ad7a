"""Corrections in a real Chromium: reopening a terminated session with a reason, the reason
category select (irregularities, and commands when the deployment requires a category), and
time taken away shown live on the candidate page."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from browser_exams import make_exam
from browser_support import Browsers, ScriptedCandidates, row, screenshot
from browser_users import PASSWORD, make_user
from clients import Api
from playwright.async_api import expect
from server import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


async def login_token(api: Api, login: str) -> str:
    response = await api.http.post("/api/v1/auth/login", json={"login": login,
                                                               "password": PASSWORD},
                                   headers={"Authorization": ""})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def test_reopen_with_a_reason_from_the_panel_and_the_candidate_opens_again(
    browsers: Browsers, rt_api: Api, rt_server: ServerProcess
) -> None:
    """A terminated session's panel offers Reopen…; the dialog refuses to send without a
    reason; reopened, the row is paused, the history names the reason, and the candidate's page
    opens the exam again. A proctor (no sessions.reopen) is not offered the action."""
    exam, sessions = await make_exam(rt_api, 2, groups=["Hall R"], title="Reopen exam")
    target = sessions[0]
    scripted = ScriptedCandidates(rt_server.ws_url)
    try:
        await scripted.open(target["access_code"])
        await rt_api.command(exam["id"], action="terminate", target=target["id"],
                             reason="wrong candidate")
        dashboard = await browsers.dashboard(exam["id"])
        line = row(dashboard, target["id"])
        await expect(line.locator(".badge")).to_have_text("Terminated")
        await line.get_by_role("button", name=target["candidate_name"]).click()
        panel = dashboard.locator("#panel")
        reopen = panel.get_by_role("button", name="Reopen…")
        await expect(reopen).to_be_enabled()
        await reopen.click()
        dialog = dashboard.locator("#command-dialog")
        await expect(dialog.get_by_role("heading")).to_have_text("Reopen 1 session?")
        await expect(dialog.locator("#cd-reason-hint")).to_have_text(
            "(required, kept in the history)")
        await dialog.get_by_role("button", name="Reopen 1 session").click()
        await expect(dialog.locator("#cd-error")).to_contain_text("Give the reason")
        await expect(dialog).to_be_visible()
        await dialog.get_by_label("Category").select_option("proctor/error")
        await dialog.get_by_label("Reason").fill(
            "Terminated the neighbour by mistake")
        await screenshot(dashboard, "dashboard-reopen")
        await dialog.get_by_role("button", name="Reopen 1 session").click()
        await expect(dialog).to_be_hidden()
        await expect(line.locator(".badge")).to_have_text("Paused")
        history = panel.locator("#history")
        await expect(history.locator("li").first).to_contain_text("Reopen")
        await expect(history.locator("li").first).to_contain_text(
            "reason: Terminated the neighbour by mistake")
        await expect(history.locator("li").first).to_contain_text("Proctor / staff › Error")
        await expect(reopen).to_be_disabled()  # not terminated any more

        # The candidate opens the exam again (paused until a proctor resumes it).
        candidate = await browsers.candidate(target["access_code"])
        await expect(candidate.locator("body")).to_have_attribute("data-screen", "exam")
        await expect(line.locator(".badge")).to_have_text("Paused")
        await expect(line).to_contain_text("Online")

        # A proctor has no sessions.reopen: no Reopen button, in the panel or the bulk bar.
        user = await make_user(rt_api, ["proctor"], ["Hall R"])
        proctor = await browsers.dashboard(exam["id"], token=await login_token(
            rt_api, user["login"]))
        await row(proctor, target["id"]).get_by_role(
            "button", name=target["candidate_name"]).click()
        await expect(proctor.locator("#panel").get_by_role("button", name="Pause")).to_be_visible()
        await expect(proctor.locator('#panel-actions [data-action="reopen"]')).to_be_hidden()
        await expect(proctor.locator('#actionbar [data-action="reopen"]')).to_be_hidden()
    finally:
        await scripted.close_all()


async def test_irregularity_form_uses_the_category_tree(
    browsers: Browsers, rt_api: Api
) -> None:
    """The irregularity select is the deployment's tree, grouped by top category; the report
    is filed under the chosen leaf and labelled with it in the history."""
    exam, sessions = await make_exam(rt_api, 1)
    dashboard = await browsers.dashboard(exam["id"])
    await row(dashboard, sessions[0]["id"]).get_by_role(
        "button", name=sessions[0]["candidate_name"]).click()
    panel = dashboard.locator("#panel")
    select = panel.get_by_label("Category")
    await expect(select.locator("optgroup")).to_have_count(4)
    labels = await select.locator("optgroup").evaluate_all("els => els.map(e => e.label)")
    assert labels == ["Environment", "Examinee", "Proctor / staff", "Technical"]
    await panel.get_by_role("button", name="Report").click()  # the browser asks for a category
    assert await select.evaluate("el => el.validity.valueMissing")
    await expect(panel.locator("#irr-status")).to_have_text("")
    await select.select_option("technical/network")
    await panel.get_by_label("Note").fill("Wi-Fi dropped twice")
    await panel.get_by_role("button", name="Report").click()
    await expect(panel.locator("#irr-status")).to_have_text("Irregularity reported.")
    await expect(panel.locator("#history li").first).to_contain_text("Technical › Network")
    listed = await rt_api.http.get(f"/api/v1/exams/{exam['id']}/irregularities")
    assert [i["category"] for i in listed.json()["irregularities"]] == ["technical/network"]


@pytest.fixture(scope="module")
def strict_server(rt_server: ServerProcess) -> Iterator[ServerProcess]:
    """A second server whose deployment requires a reason category for pause."""
    process = ServerProcess(ping_interval=1, reason_category_required="pause")
    process.start()
    yield process
    process.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def strict(strict_server: ServerProcess, rt_chromium: object) -> AsyncIterator[
    tuple[Browsers, Api]
]:
    helper = Browsers(rt_chromium, strict_server)
    api = Api(strict_server.url)
    yield helper, api
    await api.close()
    await helper.close()
    helper.assert_no_page_errors()


async def test_pause_asks_for_the_required_reason_category(
    strict: tuple[Browsers, Api],
) -> None:
    """With REALTIME_REASON_CATEGORY_REQUIRED=pause, Pause opens the dialog with a category
    select that must be chosen; the command then carries the category into the history, and
    the candidate's page shows the pause."""
    browsers, api = strict
    exam, sessions = await make_exam(api, 1, title="Category exam " + uuid.uuid4().hex[:4])
    candidate = await browsers.candidate(sessions[0]["access_code"])
    await expect(candidate.locator("body")).to_have_attribute("data-screen", "exam")
    dashboard = await browsers.dashboard(exam["id"])
    line = row(dashboard, sessions[0]["id"])
    await expect(line.locator(".badge")).to_have_text("Active")
    await line.get_by_role("button", name=sessions[0]["candidate_name"]).click()
    panel = dashboard.locator("#panel")
    await panel.get_by_role("button", name="Pause").click()
    dialog = dashboard.locator("#command-dialog")
    await expect(dialog.locator("#cd-category-hint")).to_have_text("(required)")
    await dialog.get_by_role("button", name="Pause 1 session").click()
    await expect(dialog.locator("#cd-error")).to_have_text("Choose a reason category.")
    await dialog.get_by_label("Category").select_option("environment/noise")
    await dialog.get_by_role("button", name="Pause 1 session").click()
    await expect(dialog).to_be_hidden()
    await expect(line.locator(".badge")).to_have_text("Paused")
    await expect(panel.locator("#history li").first).to_contain_text("Environment › Noise")
    await expect(candidate.locator("#overlay-paused")).to_be_visible()
    history = await api.history(exam["id"], sessions[0]["id"])
    [pause] = [e for e in history if e["kind"] == "pause"]
    assert pause["details"]["reason_category"] == "environment/noise"


async def test_reduce_time_from_the_bulk_bar_shows_the_new_end_on_the_candidate_page(
    browsers: Browsers, rt_api: Api
) -> None:
    """Reduce time… (bulk, the whole exam) takes 20 minutes off: the candidate page says so and
    its clock shows the new time left at once; more than is left is skipped with a reason."""
    exam, sessions = await make_exam(rt_api, 1, duration_minutes=60)
    candidate = await browsers.candidate(sessions[0]["access_code"])
    await expect(candidate.locator("body")).to_have_attribute("data-screen", "exam")
    await expect(candidate.locator("#time-left")).to_have_text(re.compile(r"^(1:00:00|59:\d\d)$"))
    dashboard = await browsers.dashboard(exam["id"])
    await expect(row(dashboard, sessions[0]["id"]).locator(".badge")).to_have_text("Active")
    await dashboard.locator("#scope").select_option("filter")
    await dashboard.locator('#actionbar [data-action="reduce"]').click()
    dialog = dashboard.locator("#command-dialog")
    await expect(dialog.get_by_role("heading")).to_have_text("Reduce time")
    await dialog.get_by_label("Minutes to take away").fill("20")
    await dialog.get_by_role("button", name="Reduce").click()
    await expect(candidate.locator("#message-title")).to_have_text("Time shortened")
    await expect(candidate.locator("#time-left")).to_have_text(re.compile(r"^(40:00|39:\d\d)$"))
    await candidate.get_by_role("button", name="OK").click()

    await dashboard.locator('#actionbar [data-action="reduce"]').click()
    await dialog.get_by_label("Minutes to take away").fill("45")
    await dialog.get_by_role("button", name="Reduce").click()
    await expect(dashboard.locator("#toasts")).to_contain_text("1 less time left than that")
    await expect(candidate.locator("#time-left")).to_have_text(re.compile(r"^(40:00|39:\d\d)$"))


async def test_the_exam_form_sets_a_strict_or_own_resume_grace(
    browsers: Browsers, rt_api: Api
) -> None:
    """The exam dialog's resume grace: 0 makes the exam strict (flagged in the list and on the
    monitor), empty gives it back to the server's default."""
    title = f"Strict exam {uuid.uuid4().hex[:6]}"
    page = await browsers.dashboard()
    await page.get_by_role("button", name="New exam…").click()
    dialog = page.get_by_role("dialog", name="New exam")
    await dialog.get_by_label("Title").fill(title)
    await dialog.get_by_label("Same-tab resume after a drop (seconds)").fill("0")
    await dialog.get_by_role("button", name="Create exam").click()
    await expect(dialog).to_be_hidden()
    line = page.locator("#exam-rows tr", has=page.get_by_role("link", name=title, exact=True))
    await expect(line.locator(".flags")).to_contain_text("Strict resume")
    exams = (await rt_api.http.get("/api/v1/exams")).json()["exams"]
    [exam] = [e for e in exams if e["title"] == title]
    assert exam["settings"]["resume_grace_seconds"] == 0

    await line.get_by_role("button", name="Edit…").click()
    dialog = page.get_by_role("dialog", name=f"Edit {title}")
    grace = dialog.get_by_label("Same-tab resume after a drop (seconds)")
    await expect(grace).to_have_value("0")
    await grace.fill("")
    await dialog.get_by_role("button", name="Save").click()
    await expect(dialog).to_be_hidden()
    await expect(line).to_have_count(1)
    await expect(line).not_to_contain_text("Strict resume")
    got = (await rt_api.http.get(f"/api/v1/exams/{exam['id']}")).json()
    assert got["settings"]["resume_grace_seconds"] is None

    monitor = await browsers.dashboard(exam["id"])
    await expect(monitor.locator("#exam-meta")).not_to_contain_text("strict")
    await rt_api.http.patch(f"/api/v1/exams/{exam['id']}",
                            json={"settings": {"resume_grace_seconds": 0}})
    again = await browsers.dashboard(exam["id"])
    await expect(again.locator("#exam-meta")).to_contain_text(
        "strict: no resume without an unlock")
