"""The message catalogues (client/locales/*.json) are complete and match what the pages use.

Every language has exactly English's keys, each with the same placeholders and plural shape;
every catalogue key named in the client's JS and HTML exists in English.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

CLIENT = Path(__file__).resolve().parents[1] / "client"
LOCALES = CLIENT / "locales"
PLACEHOLDER = re.compile(r"\{(\w+)\}")
PLURAL_FORMS = {"zero", "one", "two", "few", "many", "other"}


def load(code: str) -> dict[str, Any]:
    data = json.loads((LOCALES / f"{code}.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


ENGLISH = load("en")
OTHERS = sorted(p.stem for p in LOCALES.glob("*.json") if p.stem != "en")
NAMESPACES = sorted({key.split(".", 1)[0] for key in ENGLISH})
SPACES = "|".join(NAMESPACES)
KEY_LITERAL = re.compile(r"""["'`]((?:""" + SPACES + r""")\.[A-Za-z0-9_.]+)["'`]""")
KEY_PREFIX = re.compile(r"""`((?:""" + SPACES + r""")\.[A-Za-z0-9_.]*)\$\{""")
HTML_KEY = re.compile(r"""data-i18n="([^"]+)\"""")
HTML_ATTR_KEYS = re.compile(r"""data-i18n-attr="([^"]+)\"""")


def placeholders(value: Any) -> set[str]:
    texts = value.values() if isinstance(value, dict) else [value]
    return {name for text in texts for name in PLACEHOLDER.findall(text)}


def test_there_is_a_second_language() -> None:
    """English and at least one more language ship."""
    assert OTHERS, "no language besides English in client/locales"


@pytest.mark.parametrize("code", OTHERS)
def test_every_language_has_exactly_the_english_keys(code: str) -> None:
    """A key missing from a language (or left over in it) fails, naming the key."""
    other = load(code)
    assert sorted(set(ENGLISH) - set(other)) == [], f"missing in {code}.json"
    assert sorted(set(other) - set(ENGLISH)) == [], f"not in en.json, left over in {code}.json"


@pytest.mark.parametrize("code", ["en", *OTHERS])
def test_values_are_texts_or_plural_forms_with_the_english_placeholders(code: str) -> None:
    """Plural entries carry `other`; a translation uses the same `{placeholders}` as English."""
    catalogue = load(code)
    for key, value in catalogue.items():
        if isinstance(value, dict):
            assert "other" in value and set(value) <= PLURAL_FORMS, key
            assert all(isinstance(v, str) and v for v in value.values()), key
            assert "count" in placeholders(value), f"{key}: a plural needs {{count}}"
        else:
            assert isinstance(value, str) and value.strip(), key
        assert placeholders(value) == placeholders(ENGLISH[key]), f"{code}: {key}"


def client_sources(suffix: str) -> list[Path]:
    return sorted(p for p in CLIENT.rglob(f"*{suffix}") if "node_modules" not in p.parts)


def test_every_key_the_scripts_use_exists() -> None:
    """Each catalogue key written in client JS (t(), localize(), key tables) is in en.json."""
    missing = []
    for path in client_sources(".js"):
        text = path.read_text(encoding="utf-8")
        for key in KEY_LITERAL.findall(text):
            if key not in ENGLISH and not key.endswith("."):
                missing.append(f"{path.relative_to(CLIENT)}: {key}")
        for prefix in KEY_PREFIX.findall(text):
            if not any(k.startswith(prefix) for k in ENGLISH):
                missing.append(f"{path.relative_to(CLIENT)}: {prefix}…")
    assert missing == []


def test_every_key_the_pages_use_exists() -> None:
    """Each data-i18n / data-i18n-attr key in client HTML is in en.json."""
    missing = []
    for path in client_sources(".html"):
        text = path.read_text(encoding="utf-8")
        keys = HTML_KEY.findall(text)
        for spec in HTML_ATTR_KEYS.findall(text):
            keys += [pair.split(":", 1)[1].strip() for pair in spec.split(";") if ":" in pair]
        missing += [f"{path.relative_to(CLIENT)}: {k}" for k in keys if k not in ENGLISH]
    assert missing == []


class _Untranslated(HTMLParser):
    """Text in client HTML that no `data-i18n` covers (code, keys and `translate="no"` aside)."""

    EXEMPT = {"code", "kbd", "script", "style", "title"}
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, bool]] = []  # (tag, its text needs no key)
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        names = dict(attrs)
        inherited = bool(self.stack) and self.stack[-1][0] in self.EXEMPT | {"no"}
        exempt = tag in self.EXEMPT or names.get("translate") == "no" or inherited
        name = "no" if names.get("translate") == "no" else tag
        self.stack.append((name, exempt or "data-i18n" in names))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] in (tag, "no"):
                del self.stack[i:]
                break

    def handle_data(self, data: str) -> None:
        text = " ".join(data.split())
        if self.stack and re.search(r"[A-Za-z]{2}", text) and not self.stack[-1][1]:
            self.found.append(f"<{self.stack[-1][0]}> {text[:60]}")


def test_no_page_text_is_left_outside_the_catalogues() -> None:
    """Every piece of visible text in client HTML carries a data-i18n key (a new string added
    without one fails here, naming it)."""
    left = []
    for path in client_sources(".html"):
        parser = _Untranslated()
        parser.feed(path.read_text(encoding="utf-8"))
        left += [f"{path.relative_to(CLIENT)}: {item}" for item in parser.found]
    assert left == []
