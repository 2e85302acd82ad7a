"""Languages and time zones in a real Chromium: the pages come up in the browser's language,
switch live, remember the choice, leave no English behind, and show times with their zone."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from browser_exams import make_exam
from browser_support import CANDIDATE_VIEWPORT, Browsers, screenshot
from clients import Api
from playwright.async_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

LOCALES = Path(__file__).resolve().parents[2] / "client" / "locales"


def catalogue(code: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((LOCALES / f"{code}.json").read_text(encoding="utf-8"))
    return data


def english_only_patterns(code: str) -> list[str]:
    """JS regexps matching each English text whose translation into `code` differs (the
    placeholders match anything): seeing one on a page in `code` means a string was missed."""
    english, other = catalogue("en"), catalogue(code)
    patterns = []
    for key, value in english.items():
        forms = value.values() if isinstance(value, dict) else [value]
        theirs = other[key].values() if isinstance(other[key], dict) else [other[key]]
        for form in forms:
            if form in theirs:
                continue
            pattern = re.escape(form)
            pattern = re.sub(r"\\\{\w+\\\}", ".+", pattern)
            patterns.append(pattern)
    return patterns


# Visible text nodes (screen-reader-only text counts: it is read out) matching a pattern.
VISIBLE_MATCHES = """(patterns) => {
  const tests = patterns.map((p) => new RegExp(`^${p}$`, "s"));
  const found = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.textContent.trim();
    const el = node.parentElement;
    if (!text || !el || !el.checkVisibility({ visibilityProperty: true })) continue;
    if (tests.some((re) => re.test(text))) found.push(text);
  }
  return found;
}"""


async def english_left(page: Any, code: str = "fr") -> list[str]:
    found: list[str] = await page.evaluate(VISIBLE_MATCHES, english_only_patterns(code))
    return found


async def localized_context(
    browsers: Browsers,
    locale: str,
    timezone_id: str = "Europe/Paris",
    viewport: dict[str, int] | None = None,
) -> Any:
    """A fresh context whose browser speaks `locale` and lives in `timezone_id`."""
    context = await browsers.browser.new_context(
        viewport=viewport or CANDIDATE_VIEWPORT,
        base_url=browsers.server.url,
        locale=locale,
        timezone_id=timezone_id,
    )
    context.set_default_timeout(10_000)
    browsers.contexts.append(context)
    return context


async def test_candidate_page_follows_the_browser_language_and_the_switch_persists(
    browsers: Browsers,
) -> None:
    """fr-FR gets French; switching to English changes the page live and survives a reload."""
    page = await browsers.page(await localized_context(browsers, "fr-FR"))
    await page.goto("/candidate/")
    await expect(page.locator("html")).to_have_attribute("lang", "fr")
    await expect(page.get_by_role("heading", name="Commencer votre examen")).to_be_visible()
    await expect(page.get_by_label("Code d’accès")).to_be_focused()
    assert await english_left(page) == []
    await page.get_by_role("button", name="Commencer").click()
    await expect(page.locator("#code-error")).to_have_text("Saisissez votre code d’accès.")
    await screenshot(page, "candidate-fr")

    await page.get_by_label("Langue").select_option("en")
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await expect(page.get_by_role("heading", name="Start your exam")).to_be_visible()
    await expect(page.locator("#code-error")).to_have_text("Enter your access code.")
    assert "Start your exam" in await english_left(page)  # the check sees English when it is there

    await page.reload()
    await expect(page.get_by_role("heading", name="Start your exam")).to_be_visible()
    await expect(page.get_by_label("Language")).to_have_value("en")


async def test_an_english_browser_gets_english_and_an_unknown_language_falls_back(
    browsers: Browsers,
) -> None:
    """en-GB and a language without a catalogue (ja) both come up in English."""
    for locale in ("en-GB", "ja-JP"):
        page = await browsers.page(await localized_context(browsers, locale))
        await page.goto("/candidate/")
        await expect(page.locator("html")).to_have_attribute("lang", "en")
        await expect(page.get_by_role("heading", name="Start your exam")).to_be_visible()


async def test_candidate_exam_screens_have_no_english_in_french(
    browsers: Browsers, rt_api: Api
) -> None:
    """Sign-in, the running exam, the submit dialog and the final screen, all in French."""
    _exam, [session] = await make_exam(rt_api, 1, title="Histoire")
    context = await localized_context(browsers, "fr-FR")
    page = await browsers.page(context)
    await page.goto("/candidate/")
    await page.get_by_role("button", name="Se connecter avec son compte").click()
    await expect(page.get_by_role("heading", name="Connexion à votre examen")).to_be_visible()
    assert await english_left(page) == []

    await page.goto(f"/candidate/?code={session['access_code']}")
    await expect(page.locator("#screen-exam")).to_be_visible()
    await expect(page.locator("#net-text")).to_have_text("Connecté")
    await page.get_by_label("Choix B").check()
    await expect(page.locator("#progress-text")).to_have_text("1 sur 20 répondue")
    await page.get_by_role("button", name="Suivante →").click()
    await expect(page.locator("#question-count")).to_have_text("Question 2 sur 20")
    assert await english_left(page) == []
    await screenshot(page, "candidate-exam-fr")

    await page.get_by_role("button", name="Rendre la copie").click()
    dialog = page.get_by_role("dialog", name="Rendre votre copie ?")
    await expect(dialog).to_contain_text("19 questions sont sans réponse.")
    assert await english_left(page) == []
    await dialog.get_by_role("button", name="Rendre", exact=True).click()
    await expect(page.get_by_role("heading", name="Réponses rendues")).to_be_visible()
    assert await english_left(page) == []

    # Switched live on the final screen: its text follows.
    await page.get_by_label("Langue").select_option("en")
    await expect(page.get_by_role("heading", name="Answers submitted")).to_be_visible()
