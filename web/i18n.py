"""The coordinators' pages in French (default), Arabic (right to left) or English.

The language comes from `?lang=` (kept in a cookie) and the words from the catalogue.
"""

from __future__ import annotations


from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import yaml
from fastapi import Request

from activities.messages import catalogue
from config.settings import Settings



STRINGS = Path(__file__).resolve().parent / "templates" / "strings.yaml"

LANGS = ("fr", "ar", "en")
DEFAULT_LANG = "fr"

LANG_COOKIE = "referral_lang"

# --- language and rendering ----------------------------------------------------------------


@lru_cache(maxsize=1)
def ui_strings() -> dict[str, dict[str, dict[str, str]]]:
    return yaml.safe_load(STRINGS.read_text(encoding="utf-8"))


def language_of(request: Request) -> str:
    asked = request.query_params.get("lang")
    if asked in LANGS:
        return asked
    kept = request.cookies.get(LANG_COOKIE)
    return kept if kept in LANGS else DEFAULT_LANG


class Words:
    """What templates call `t(...)` and `label(...)`, in one language."""

    def __init__(self, lang: str, settings: Settings) -> None:
        self.lang = lang
        self._ui = ui_strings()
        try:
            self._labels = catalogue(settings.referral_messages_dir, lang)["labels"]
        except Exception:  # a broken messages file must not take the form down
            self._labels = {}
        self._tz = ZoneInfo(settings.referral_timezone)

    def t(self, key: str, **values: Any) -> str:
        entry = self._ui["strings"].get(key)
        text = entry.get(self.lang) or entry[DEFAULT_LANG] if entry else key
        if not values:
            return text
        if self.lang == "ar":
            # Latin names, codes and dates inside Arabic text: isolate each (FSI ... PDI) so the
            # bidirectional algorithm does not reorder their parts.
            values = {k: f"\u2068{v}\u2069" for k, v in values.items()}
        return text.format(**values)

    def label(self, kind: str, value: str | None) -> str:
        if value is None:
            return ""
        if kind in ("services", "regions", "urgency", "age_group", "closed_reason", "problems"):
            return str(self._labels.get(kind, {}).get(value, value))
        entry = self._ui.get(kind, {}).get(value)
        return entry.get(self.lang, value) if entry else value

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

