"""Themes and devices in a real Chromium: the dark theme (system and switch), the dashboard on a
768 px tablet, and paper (every row, no chrome)."""

from __future__ import annotations

from typing import Any

import pytest
from browser_exams import make_exam
from browser_support import Browsers, screenshot
from browser_users import make_user, sign_in
from clients import Api
from playwright.async_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

TABLET = {"width": 768, "height": 1024}
LIGHT_BG = "rgb(244, 246, 249)"  # --bg of the light theme
DARK_BG = "rgb(15, 20, 27)"  # --bg of the dark theme


async def background(page: Any) -> str:
    value: str = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    return value


async def text_colour(page: Any, selector: str) -> str:
    value: str = await page.locator(selector).first.evaluate("e => getComputedStyle(e).color")
    return value


async def test_dark_theme_follows_the_system_until_chosen(browsers: Browsers, rt_api: Api) -> None:
    """prefers-color-scheme: dark gives the dark palette, live; a choice overrides it and is
    kept across reloads (localStorage); "auto" follows the system again."""
    exam, _ = await make_exam(rt_api, 3, title="Night shift exam")
    page = await browsers.dashboard(exam["id"], color_scheme="dark")
    html = page.locator("html")
    await expect(html).to_have_attribute("data-theme", "dark")
    assert await background(page) == DARK_BG
    light_text = "rgb(25, 32, 42)"
    assert await text_colour(page, "#exam-title") != light_text
    await screenshot(page, "dashboard-dark")

    await page.emulate_media(color_scheme="light")  # the system changes: the page follows
    await expect(html).to_have_attribute("data-theme", "light")
    assert await background(page) == LIGHT_BG
    assert await text_colour(page, "#exam-title") == light_text

    await page.get_by_label("Colour theme").select_option("dark")
    await expect(html).to_have_attribute("data-theme", "dark")
    await page.reload()
    await page.locator("#sync-info[data-sync]").wait_for()
    await expect(html).to_have_attribute("data-theme", "dark")
    await expect(page.get_by_label("Colour theme")).to_have_value("dark")
    assert await background(page) == DARK_BG

    await page.get_by_label("Colour theme").select_option("auto")
    await expect(html).to_have_attribute("data-theme", "light")
    assert await page.evaluate("localStorage.getItem('realtime.theme')") is None


async def test_candidate_page_in_the_dark_theme(browsers: Browsers, rt_api: Api) -> None:
    """The candidate page takes the system's dark theme too, exam screen included."""
    _, [session] = await make_exam(rt_api, 1)
    page = await browsers.candidate(session["access_code"], color_scheme="dark")
    await expect(page.locator("#screen-exam")).to_be_visible()
    await expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    card = await page.locator(".question").evaluate("e => getComputedStyle(e).backgroundColor")
    assert card == "rgb(23, 29, 38)"  # --surface of the dark theme
    await page.locator("label.choice").nth(1).click()
    await screenshot(page, "candidate-dark")


async def test_tablet_top_bar_fits(browsers: Browsers, rt_api: Api) -> None:
    """At 768 px the top bar (every section, a long name, the switches) keeps to the screen's
    width, and the page does not scroll sideways: the table scrolls in its own box."""
    exam, _ = await make_exam(rt_api, 12, groups=["Hall A", "Hall B"], title="Tablet exam")
    user = await make_user(rt_api, ["admin"], name="Maximiliana Bartholomew-Featherstonehaugh")
    page = await browsers.page(await browsers.context(TABLET))
    await page.goto("/dashboard/")
    await sign_in(page, user["login"])
    await expect(page.locator('#sections a[data-nav="nodes"]')).to_be_visible()

    fits = "e => e.scrollWidth <= e.clientWidth"
    topbar = page.locator(".topbar")
    for url in ("/dashboard/", f"/dashboard/?exam={exam['id']}", "/dashboard/?page=users"):
        await page.goto(url)
        await expect(page.locator("#sign-out")).to_be_visible()
        if "exam=" in url:
            await page.locator("#sync-info[data-sync]").wait_for()
        assert await topbar.evaluate(fits), url
        assert await page.locator("html").evaluate(fits), url
        box = await page.locator("#sign-out").bounding_box()
        assert box is not None and box["x"] + box["width"] <= TABLET["width"], url

    await page.goto(f"/dashboard/?exam={exam['id']}")
    await page.locator("#sync-info[data-sync]").wait_for()
    await expect(page.locator("#session-rows tr[data-session-id]")).to_have_count(12)
    await screenshot(page, "dashboard-tablet")


async def test_print_has_every_row_and_no_chrome(browsers: Browsers, rt_api: Api) -> None:
    """The live table attaches only the rows in view; on paper it has them all, in the light
    theme, without the top bar, toolbars and buttons; back on screen it is windowed again."""
    exam, _ = await make_exam(rt_api, 150, groups=["Hall A"])
    page = await browsers.dashboard(exam["id"], color_scheme="dark")
    rows = page.locator("#session-rows tr[data-session-id]")
    await expect(rows.first).to_be_visible()
    on_screen = await rows.count()
    assert on_screen < 150

    await page.emulate_media(media="print")
    await expect(rows).to_have_count(150)
    await expect(page.locator("html")).to_have_attribute("data-theme", "light")
    for chrome in (".topbar", "#view-monitor .toolbar", "#actionbar", "#select-all"):
        await expect(page.locator(chrome)).to_be_hidden()
    assert await page.locator(".btn:visible").count() == 0
    await expect(rows.last).to_be_visible()

    await page.emulate_media(media="screen")
    await expect(page.locator("html")).to_have_attribute("data-theme", "dark")
    await expect(page.locator(".topbar")).to_be_visible()
    await expect(rows).to_have_count(on_screen)


async def test_beforeprint_attaches_every_row(browsers: Browsers, rt_api: Api) -> None:
    """Printing from the browser's menu fires beforeprint/afterprint (no media change yet)."""
    exam, _ = await make_exam(rt_api, 120)
    page = await browsers.dashboard(exam["id"])
    rows = page.locator("#session-rows tr[data-session-id]")
    await expect(rows.first).to_be_visible()
    on_screen = await rows.count()
    assert on_screen < 120
    # Synchronous: the rows must be there before the browser lays the page out for paper.
    attached = await page.evaluate(
        """() => {
          dispatchEvent(new Event("beforeprint"));
          return document.querySelectorAll("#session-rows tr[data-session-id]").length;
        }"""
    )
    assert attached == 120
    await page.evaluate("dispatchEvent(new Event('afterprint'))")
    await expect(rows).to_have_count(on_screen)
