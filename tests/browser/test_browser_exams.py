"""The Exams page in Chromium: the list with status, dates and counts; create, edit, archive
(with the forced second confirmation while candidates are connected) and restore; a roster
import in pieces with progress and its error report; access codes as CSV and printable slips."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

import pytest
from browser_axe import assert_accessible
from browser_exams import person
from browser_support import Browsers, ScriptedCandidates, screenshot
from clients import Api
from playwright.async_api import expect
from server import ServerProcess

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]


def exam_row(page: Any, title: str) -> Any:
    return page.locator("#exam-rows tr", has=page.get_by_role("link", name=title, exact=True))


async def search(page: Any, text: str) -> None:
    await page.get_by_label("Find an exam").fill(text)


async def test_create_edit_archive_and_restore_an_exam(
    browsers: Browsers, rt_api: Api, rt_server: ServerProcess
) -> None:
    """A new exam appears with its status; an edit shows at once; archiving asks first, asks
    again while a candidate is connected, and hides the exam until "Archived" is chosen, where
    Restore brings it back."""
    now = time.time()
    chem = await rt_api.create_exam(title="Term exam: Chemistry", groups=["Hall A"],
                                    starts_at=now - 1800, ends_at=now + 5400,
                                    settings={"lock_sessions": True})
    sessions = await rt_api.create_sessions(chem["id"], 12, group="Hall A")
    await rt_api.command(chem["id"], action="terminate", target=sessions[11]["id"],
                         reason="absent")
    await rt_api.create_exam(title="Term exam: Physics", starts_at=now + 86400,
                             ends_at=now + 90000, duration_minutes=90)
    past = await rt_api.create_exam(title="Term exam: Biology", starts_at=now - 90000,
                                    ends_at=now - 86400)
    await rt_api.create_sessions(past["id"], 3)
    candidates = ScriptedCandidates(rt_server.ws_url)
    try:
        await candidates.open(sessions[0]["access_code"])
        page = await browsers.dashboard()
        await search(page, "Term exam")
        rows = page.locator("#exam-rows tr[data-exam-id]")
        await expect(rows).to_have_count(3)
        chem_row = exam_row(page, "Term exam: Chemistry")
        await expect(chem_row.locator("td:nth-child(3)")).to_have_text("Running")
        await expect(chem_row.locator(".exam-counts")).to_contain_text("1 terminated")
        for title, status in (("Physics", "Scheduled"), ("Biology", "Ended")):
            state = exam_row(page, f"Term exam: {title}").locator("td:nth-child(3)")
            await expect(state).to_have_text(status)
        await screenshot(page, "dashboard-exams")  # docs/screenshots has a copy

        await page.get_by_role("button", name="New exam…").click()
        dialog = page.get_by_role("dialog", name="New exam")
        await dialog.get_by_label("Title").fill("Term exam: History")
        await dialog.get_by_label("Duration (minutes)").fill("45")
        await dialog.get_by_label("Lock sessions on open").check()
        await assert_accessible(page, "new exam dialog")
        await dialog.get_by_role("button", name="Create exam").click()
        await expect(dialog).to_be_hidden()
        history = exam_row(page, "Term exam: History")
        await expect(history.locator("td:nth-child(3)")).to_have_text("Running")
        await expect(history.locator(".flags")).to_contain_text("Locks on open")
        await expect(history.locator(".sub")).to_contain_text("45 min")

        await history.get_by_role("button", name="Edit…").click()
        dialog = page.get_by_role("dialog", name="Edit Term exam: History")
        await expect(dialog.get_by_label("Duration (minutes)")).to_have_value("45")
        await expect(dialog.get_by_label("Lock sessions on open")).to_be_checked()
        await dialog.get_by_label("Title").fill("Term exam: Modern history")
        await dialog.get_by_label("Closes").fill("2020-01-01T10:00")
        await dialog.get_by_role("button", name="Save").click()
        await expect(dialog).to_be_hidden()
        modern = exam_row(page, "Term exam: Modern history")
        await expect(modern.locator("td:nth-child(3)")).to_have_text("Ended")
        await expect(history).to_have_count(0)

        await chem_row.get_by_role("button", name="Archive…").click()
        confirm = page.get_by_role("dialog", name="Archive Term exam: Chemistry?")
        await confirm.get_by_role("button", name="Archive").click()
        again = page.get_by_role("dialog", name="Candidates are connected to Term exam: Chemistry")
        await expect(again).to_contain_text("1 candidate(s) are connected")
        await again.get_by_role("button", name="Archive anyway").click()
        await expect(chem_row).to_have_count(0)
        await expect(rows).to_have_count(3)  # Physics, Biology, Modern history

        # the filter's option reads "Archived" (it once showed the toast's "Archived {title}")
        await expect(page.locator("#exams-state option[value=archived]")).to_have_text("Archived")
        await page.locator("#exams-state").select_option("archived")
        await expect(rows).to_have_count(1)
        await expect(chem_row.locator("td:nth-child(3)")).to_have_text("Archived")
        await chem_row.get_by_role("button", name="Restore").click()
        await expect(rows).to_have_count(0)
        await page.locator("#exams-state").select_option("running")
        await expect(chem_row.locator("td:nth-child(3)")).to_have_text("Running")
        got = (await rt_api.http.get(f"/api/v1/exams/{chem['id']}")).json()
        assert got["archived_at"] is None and got["status"] == "running"
    finally:
        await candidates.close_all()


def roster_csv(count: int, bad_line: int) -> bytes:
    """A roster of `count` candidates; the row on `bad_line` has a guessable access code."""
    lines = ["candidate_id,candidate_name,group,access_code"]
    for i in range(2, count + 2):
        code = "ABC" if i == bad_line else ""
        lines.append(f"r{i},{person(i)},{'Hall ' + str(i % 3 + 1)},{code}")
    return ("\r\n".join(lines) + "\r\n").encode()


async def test_roster_import_shows_progress_and_the_rows_in_error(
    browsers: Browsers, rt_api: Api
) -> None:
    """A 1,200-row roster goes in pieces; the report counts what was created and lists the one
    bad row by its line in the file; importing it again creates nothing twice."""
    exam = await rt_api.create_exam(title="Roster import")
    page = await browsers.dashboard()
    await search(page, "Roster import")
    await exam_row(page, "Roster import").get_by_role("button", name="Import roster…").click()
    dialog = page.get_by_role("dialog", name="Import a roster into Roster import")
    body = roster_csv(1200, bad_line=777)
    await dialog.get_by_label("Roster file").set_input_files(
        {"name": "hall.csv", "mimeType": "text/csv", "buffer": body})
    await dialog.get_by_role("button", name="Import").click()
    summary = dialog.locator("#rd-summary")
    await expect(summary).to_have_text(
        "1199 sessions created, 0 already in the exam (left as they were), 1 row with errors.")
    await expect(dialog.locator("#rd-progress")).to_have_attribute("value", "1200")
    errors = dialog.locator("#rd-error-rows tr")
    await expect(errors).to_have_count(1)
    await expect(errors.first).to_have_attribute("data-line", "777")
    await expect(errors.first).to_contain_text("r777")
    await expect(errors.first).to_contain_text("too easy to guess")
    await screenshot(page, "dashboard-roster-import")  # docs/screenshots has a copy
    await assert_accessible(page, "roster import report")

    await dialog.get_by_role("button", name="Import").click()  # the same file again
    await expect(summary).to_have_text(
        "0 sessions created, 1199 already in the exam (left as they were), 1 row with errors.")

    await dialog.get_by_label("Roster file").set_input_files(
        {"name": "wrong.csv", "mimeType": "text/csv", "buffer": b"id,email\r\nx,x@example.org\r\n"})
    await dialog.get_by_role("button", name="Import").click()
    await expect(dialog.get_by_role("alert")).to_contain_text("unknown column(s) ['id', 'email']")
    await expect(dialog.locator("#rd-progress-text")).to_have_text("Stopped after 0 of 1 row.")
    await dialog.get_by_role("button", name="Close").click()
    await expect(dialog).to_be_hidden()
    listed = (await rt_api.http.get(f"/api/v1/exams/{exam['id']}/sessions")).json()["sessions"]
    assert len(listed) == 1199
    await expect(exam_row(page, "Roster import").locator("td").nth(3)).to_contain_text("1199")


async def test_access_codes_download_and_print_slips(browsers: Browsers, rt_api: Api) -> None:
    """"Codes (CSV)" downloads every code; "Print slips" opens a print view with one slip per
    candidate, each with the exam, the name and the code."""
    exam = await rt_api.create_exam(title="Slips exam")
    sessions = await rt_api.create_sessions(exam["id"], 6, group="Hall B")
    page = await browsers.dashboard()
    await search(page, "Slips exam")
    row = exam_row(page, "Slips exam")
    async with page.expect_download() as caught:
        await row.get_by_role("button", name="Codes (CSV)").click()
    download = await caught.value
    text = (await download.path()).read_text(encoding="utf-8")  # type: ignore[union-attr]
    codes = {r["candidate_id"]: r["access_code"] for r in csv.DictReader(io.StringIO(text))}
    assert codes == {s["candidate_id"]: s["access_code"] for s in sessions}

    async with page.context.expect_page() as opened:
        await row.get_by_role("button", name="Print slips").click()
    slips = await opened.value
    await slips.wait_for_load_state()
    await expect(slips.locator(".slip")).to_have_count(6)
    first = slips.locator(".slip").first
    await expect(first.locator(".exam")).to_have_text("Slips exam")
    await expect(first.locator(".code")).to_have_text(sessions[0]["access_code"])
    await expect(first).to_contain_text("/candidate/")
    await slips.set_viewport_size({"width": 900, "height": 700})
    await screenshot(slips, "access-code-slips")  # docs/screenshots has a copy
    await assert_accessible(slips, "access-code slips")
