"""Languages and time zones in a real Chromium: the pages come up in the browser's language,
switch live, remember the choice, leave no English behind, and show times with their zone."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from browser_exams import make_exam
from browser_support import (
    CANDIDATE_VIEWPORT,
    DASHBOARD_VIEWPORT,
    TOKEN_KEY,
    Browsers,
    screenshot,
)
from browser_users import make_user
from clients import Api
from playwright.async_api import expect
from server import STAFF_TOKEN

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
            if form in theirs or not re.search(r"[A-Za-z]{3}", re.sub(r"\{\w+\}", "", form)):
                continue  # the same in both, or no words of its own ("{what}: {level}")
            pattern = re.escape(form)
            pattern = re.sub(r"\\\{\w+\\\}", ".+", pattern)
            patterns.append(pattern)
    return patterns


# Visible text nodes (screen-reader-only text counts: it is read out) matching a pattern; data
# such as a user's name is marked translate="no" (the HTML attribute for it) and skipped.
VISIBLE_MATCHES = """(patterns) => {
  const tests = patterns.map((p) => new RegExp(`^${p}$`, "s"));
  const found = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.textContent.trim();
    const el = node.parentElement;
    if (!text || !el || !el.checkVisibility({ visibilityProperty: true })) continue;
    if (el.closest('[translate="no"]')) continue; // names and other data, not interface text
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


async def french_dashboard(browsers: Browsers, path: str = "/dashboard/") -> Any:
    """A dashboard signed in with the staff token, in a browser speaking French in Paris."""
    context = await localized_context(browsers, "fr-FR", viewport=DASHBOARD_VIEWPORT)
    await context.add_init_script(
        f"sessionStorage.setItem({json.dumps(TOKEN_KEY)}, {json.dumps(STAFF_TOKEN)})"
    )
    page = await browsers.page(context)
    await page.goto(path)
    return page


# "14:05:09 UTC+1": a French time carries its zone (Paris: UTC+1 in winter, UTC+2 in summer).
PARIS_TIME = re.compile(r"\d{2}:\d{2}(:\d{2})? UTC\+[12]")


async def test_dashboard_sign_in_and_admin_pages_in_french(
    browsers: Browsers, rt_api: Api
) -> None:
    """Sign-in, exams, users, audit, guests, nodes and webhooks come up in French, times with
    their zone."""
    context = await localized_context(browsers, "fr-FR", viewport=DASHBOARD_VIEWPORT)
    page = await browsers.page(context)
    await page.goto("/dashboard/")
    await expect(page.locator("html")).to_have_attribute("lang", "fr")
    await expect(page.get_by_role("heading", name="Connexion du personnel")).to_be_visible()
    assert await english_left(page) == []
    await page.get_by_role("button", name="Utiliser plutôt un jeton du personnel").click()
    await page.get_by_label("Jeton du personnel").fill("not-a-token")
    await page.get_by_role("button", name="Continuer").click()
    await expect(page.locator("#login-error")).to_have_text(
        "Ce jeton n’a pas été accepté. Vérifiez-le et réessayez."
    )
    assert await english_left(page) == []

    exam, _ = await make_exam(rt_api, 2, title="Chimie")
    await page.get_by_label("Jeton du personnel").fill(STAFF_TOKEN)
    await page.get_by_role("button", name="Continuer").click()
    await expect(page.locator(f'a[data-exam="{exam["id"]}"]')).to_contain_text("Chimie")
    await expect(page.locator("#whoami-role")).to_have_text("jeton du personnel")
    assert await english_left(page) == []

    await page.locator("#sections").get_by_role("link", name="Utilisateurs").click()
    await expect(page.get_by_role("heading", name="Utilisateurs", exact=True)).to_be_visible()
    await expect(page.locator("#users-count")).to_contain_text("utilisateur")
    assert await english_left(page) == []
    # A server error shows in the page's words for its code, with the server's details.
    await page.get_by_role("button", name="Nouvel utilisateur…").click()
    dialog = page.get_by_role("dialog", name="Nouvel utilisateur")
    await dialog.get_by_label("Nom complet").fill("Zoé Test")
    await dialog.get_by_label("Adresse e-mail").fill("pas une adresse")
    await dialog.get_by_label("surveillant", exact=True).check()
    await dialog.get_by_role("button", name="Créer l’utilisateur").click()
    await expect(dialog.locator("#ud-error")).to_contain_text("Données invalides : ")
    await dialog.get_by_role("button", name="Annuler").click()

    await make_user(rt_api, ["proctor"])  # an entry in the audit log
    await page.locator("#sections").get_by_role("link", name="Journal").click()
    await expect(page.get_by_role("heading", name="Journal d’audit")).to_be_visible()
    first_time = page.locator("#audit-rows tr[data-action] td").first
    await expect(first_time).to_have_text(PARIS_TIME)
    assert await english_left(page) == []

    await page.locator("#sections").get_by_role("link", name="Invités").click()
    await expect(page.get_by_role("heading", name="Comptes invités")).to_be_visible()
    await expect(page.locator("#gs-status")).to_have_text(
        "Choisissez un examen pour voir ses sessions invitées."
    )
    assert await english_left(page) == []

    await page.locator("#sections").get_by_role("link", name="Nœuds").click()
    await expect(page.locator("#nodes-summary")).to_contain_text("nœud actif")
    await expect(page.locator("#nodes-status")).to_contain_text("UTC+")
    assert await english_left(page) == []

    await page.locator("#sections").get_by_role("link", name="Webhooks").click()
    await expect(page.get_by_role("heading", name="Nouvel abonnement")).to_be_visible()
    await expect(page.locator("#wh-status")).to_contain_text("actualisé toutes les")
    assert await english_left(page) == []

    # Switched live on an admin page: its list is drawn again in English.
    await page.locator("#sections").get_by_role("link", name="Utilisateurs").click()
    await expect(page.locator("#users-rows")).to_contain_text("Modifier…")
    await page.get_by_label("Langue").select_option("en")
    await expect(page.get_by_role("heading", name="Users", exact=True)).to_be_visible()
    await expect(page.locator("#users-rows")).to_contain_text("Edit…")
    await expect(page.locator("#users-rows")).not_to_contain_text("Modifier…")


async def test_dashboard_monitor_in_french_switches_live_and_remembers(
    browsers: Browsers, rt_api: Api
) -> None:
    """The monitor, its panel and a command dialog in French; English live, then after a
    reload; the session's start time shows its zone."""
    exam, sessions = await make_exam(rt_api, 3, groups=["Salle A"], title="Géographie")
    candidate = await browsers.candidate(sessions[0]["access_code"])
    await expect(candidate.locator("#screen-exam")).to_be_visible()
    page = await french_dashboard(browsers, f"/dashboard/?exam={exam['id']}")
    await page.locator("#sync-info[data-sync]").wait_for()
    synced = re.compile(r"^Synchronisé à .*UTC\+[12]$")
    await expect(page.locator("#sync-info")).to_have_text(synced)
    await expect(page.locator("#result-count")).to_have_text("3 sessions")
    line = page.locator(f'#session-rows tr[data-session-id="{sessions[0]["id"]}"]')
    await expect(line.locator(".conn")).to_have_text("En ligne")
    assert await english_left(page) == []

    await line.get_by_role("button", name=sessions[0]["candidate_name"]).click()
    panel = page.locator("#panel")
    await expect(panel.locator("#panel-details")).to_contain_text("Commencée")
    started = panel.locator("#panel-details div", has_text="Commencée").locator("dd")
    await expect(started).to_have_text(PARIS_TIME)
    await expect(panel.locator("#history li").first).to_be_visible()
    assert await english_left(page) == []
    await screenshot(page, "dashboard-fr")

    await page.locator("#select-all").check()
    await page.locator("#actionbar").get_by_role("button", name="Suspendre").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog.get_by_role("heading")).to_have_text("Suspendre 3 sessions ?")
    assert await english_left(page) == []
    await dialog.get_by_role("button", name="Annuler").click()

    await page.get_by_label("Langue").select_option("en")
    await expect(page.locator("html")).to_have_attribute("lang", "en")
    await expect(page.locator("#result-count")).to_have_text("3 sessions")
    await expect(line.locator(".conn")).to_have_text("Online")
    await expect(page.locator("#sync-info")).to_contain_text("Synchronised at")
    await expect(panel.locator("#panel-details")).to_contain_text("Started")
    await expect(page.locator("#actionbar").get_by_role("button", name="Pause")).to_be_visible()

    await page.reload()
    await expect(page.locator("#actionbar").get_by_role("button", name="Pause")).to_be_visible()
    await expect(page.get_by_label("Language")).to_have_value("en")


ZONE_CASES = [
    # (wall-clock time, zone): around Paris's spring and autumn changes, far east and west
    ("2026-11-26T09:30", "Europe/Paris"),
    ("2026-07-01T09:30", "Europe/Paris"),
    ("2026-03-29T03:30", "Europe/Paris"),
    ("2026-10-25T01:30", "Europe/Paris"),
    ("2026-06-15T23:45", "America/New_York"),
    ("2026-01-01T00:00", "Asia/Kolkata"),
    ("2026-12-31T23:59", "Pacific/Auckland"),
    ("2026-05-05T12:00", "UTC"),
]


async def test_a_time_entered_in_a_zone_is_the_right_utc_instant(browsers: Browsers) -> None:
    """timezone.js turns a wall-clock time in a named zone into the epoch seconds Python's
    zoneinfo gives for it (and back), whatever zone the browser itself is in."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    page = await browsers.page(await localized_context(browsers, "en-US", "Asia/Tokyo"))
    await page.goto("/candidate/")
    results = await page.evaluate(
        """async (cases) => {
          const tz = await import("/client/timezone.js");
          return cases.map(([wall, zone]) => {
            const epoch = tz.zonedToEpoch(wall, zone);
            return [epoch, tz.epochToZoned(epoch, zone)];
          });
        }""",
        ZONE_CASES,
    )
    for (wall, zone), (epoch, back) in zip(ZONE_CASES, results, strict=True):
        expected = datetime.fromisoformat(wall).replace(tzinfo=ZoneInfo(zone)).timestamp()
        assert epoch == expected, (wall, zone)
        assert back == wall, (wall, zone)


async def test_an_exam_window_entered_in_a_zone_is_stored_as_its_utc_instant(
    browsers: Browsers, rt_api: Api
) -> None:
    """The exam form's window is read in the zone chosen beside it (the browser's by default):
    09:00-11:00 in New York from a browser in Paris is stored as 14:00-16:00 UTC, shown again in
    Paris time when edited, and switching the zone keeps the instants."""
    from datetime import UTC, datetime

    exam_id = f"tz-{uuid.uuid4().hex[:8]}"
    page = await french_dashboard(browsers)
    await page.get_by_role("button", name="Nouvel examen…").click()
    dialog = page.get_by_role("dialog", name="Nouvel examen")
    zone = dialog.get_by_label("Fuseau horaire du créneau")
    await expect(zone).to_have_value("Europe/Paris")  # the browser's zone
    await dialog.get_by_label("Titre").fill("Histoire, session de New York")
    await dialog.get_by_label("Identifiant").fill(exam_id)
    await zone.select_option("America/New_York")
    await dialog.locator("#ed-starts").fill("2030-12-02T09:00")
    await dialog.locator("#ed-ends").fill("2030-12-02T11:00")
    assert await english_left(page) == []
    await screenshot(page, "dashboard-exam-zone-fr")
    await dialog.get_by_role("button", name="Créer l’examen").click()
    await expect(dialog).to_be_hidden()

    response = await rt_api.http.get(f"/api/v1/exams/{exam_id}")
    assert response.status_code == 200, response.text
    exam = response.json()
    assert exam["starts_at"] == datetime(2030, 12, 2, 14, 0, tzinfo=UTC).timestamp()
    assert exam["ends_at"] == datetime(2030, 12, 2, 16, 0, tzinfo=UTC).timestamp()

    row = page.locator(f'tr[data-exam-id="{exam_id}"]')
    await expect(row).to_contain_text("15:00 UTC+1")  # the list shows Paris time with its zone
    await row.get_by_role("button", name="Modifier…").click()
    dialog = page.get_by_role("dialog", name="Modifier Histoire, session de New York")
    await expect(dialog.locator("#ed-starts")).to_have_value("2030-12-02T15:00")
    await dialog.get_by_label("Fuseau horaire du créneau").select_option("Asia/Tokyo")
    await expect(dialog.locator("#ed-starts")).to_have_value("2030-12-02T23:00")
    await expect(dialog.locator("#ed-ends")).to_have_value("2030-12-03T01:00")
