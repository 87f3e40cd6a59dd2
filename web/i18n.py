"""The web pages in French (default), Arabic (right to left) or English.

The language comes from `?lang=` (kept in a cookie) and the words from the catalogue
(infra/translations.py): `page.*` for the coordinators' pages, `partner_page.*` for the partner
page, `labels.*` for coded values, the same words as in the SMS and emails. A page never fails for
a catalogue: a text missing from, or a file broken in, REFERRAL_MESSAGES_DIR is taken from the
catalogues shipped with the code, then from French, then the key itself is shown.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import Request

from config.settings import Settings
from infra.translations import DEFAULT_LANGUAGE, LANGUAGES, PACKAGED_MESSAGES_DIR, CatalogueError, Translations, translations

LANGS = LANGUAGES
DEFAULT_LANG = DEFAULT_LANGUAGE

LANG_COOKIE = "referral_lang"

# --- language and rendering ----------------------------------------------------------------


def language_of(request: Request) -> str:
    asked = request.query_params.get("lang")
    if asked in LANGS:
        return asked
    kept = request.cookies.get(LANG_COOKIE)
    return kept if kept in LANGS else DEFAULT_LANG


def _catalogues(messages_dir: Path, lang: str) -> list[Translations]:
    """Where a page looks for a text, in order; unreadable files are left out."""
    places = [(messages_dir, lang), (PACKAGED_MESSAGES_DIR, lang), (messages_dir, DEFAULT_LANG), (PACKAGED_MESSAGES_DIR, DEFAULT_LANG)]
    found: list[Translations] = []
    for directory, language in dict.fromkeys((Path(d).resolve(), la) for d, la in places):
        try:
            found.append(translations(directory, language))
        except CatalogueError:
            continue
    return found


class Words:
    """What templates call `t(...)` and `label(...)`, in one language; `section` names the page's texts."""

    def __init__(self, lang: str, settings: Settings, section: str = "page") -> None:
        self.lang = lang
        self.section = section
        self._catalogues = _catalogues(settings.referral_messages_dir, lang)
        self._tz = ZoneInfo(settings.referral_timezone)

    def text(self, key: str) -> str | None:
        """The text of a full key (`labels.sex.male`), or None."""
        for catalogue in self._catalogues:
            found = catalogue.get(key)
            if found is not None:
                return found
        return None

    def t(self, key: str, **values: Any) -> str:
        text = self.text(f"{self.section}.{key}") or key
        if not values:
            return text
        if self.lang == "ar":
            # Latin names, codes and dates inside Arabic text: isolate each (FSI ... PDI) so the
            # bidirectional algorithm does not reorder their parts.
            values = {k: f"\u2068{v}\u2069" for k, v in values.items()}
        return text.format(**values)

    def label(self, kind: str, value: str | None, default: str | None = None) -> str:
        """The word for a coded value (`label("services", "shelter")`); the value itself if none."""
        if value is None:
            return ""
        found = self.text(f"labels.{kind}.{value}")
        if found is not None:
            return found
        return value if default is None else default

    def when(self, value: datetime | None) -> str:
        if value is None:
            return ""
        return value.astimezone(self._tz).strftime("%d/%m/%Y %H:%M")


LANGUAGE_NAMES = {"fr": "Français", "ar": "العربية", "en": "English"}
# Query parameters that announce something once; a language switch does not repeat them.
_ONE_OFF = ("lang", "created", "existing", "done", "rejected", "pending", "bye")


def lang_links(request: Request) -> list[dict[str, str]]:
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in _ONE_OFF]
    return [
        {"code": code, "name": name, "href": f"{request.url.path}?{urlencode([*kept, ('lang', code)])}"}
        for code, name in LANGUAGE_NAMES.items()
    ]

