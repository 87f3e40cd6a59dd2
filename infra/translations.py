"""Every word of the service in French, Arabic and English: one gettext catalogue per language.

`<REFERRAL_MESSAGES_DIR>/<language>.po`, monolingual: each msgid is a key (`message.offer.sms`,
`labels.services.shelter`, `page.login_title`, `partner_page.accept`), its msgstr the text.
Babel reads the .po itself (nothing to compile) and a file is read again when it changes, so an
operator's edit applies without a restart. Activities and the web app both read it through here.

An empty msgstr counts as missing (gettext's rule). A fuzzy one is still used: Weblate marks a
translation fuzzy when the base text changes, and last week's wording beats sending a key.
"""

from __future__ import annotations

import io
import re
import string
from collections import Counter
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import structlog
from babel.messages.pofile import PoFileError, read_po

import config

LANGUAGES = ("fr", "ar", "en")
DEFAULT_LANGUAGE = "fr"
# The catalogues shipped with the code: the web pages fall back on them (web/i18n.py).
PACKAGED_MESSAGES_DIR = Path(config.__file__).resolve().parent / "messages"

log = structlog.get_logger(__name__)


class CatalogueError(Exception):
    """A catalogue that cannot be read, or a text it lacks."""


class UnknownPlaceholder(CatalogueError):
    """A text names a placeholder its caller does not give: never send it half filled."""


class _Strict(dict):
    def __missing__(self, key: str) -> str:
        raise UnknownPlaceholder(f"unknown placeholder {{{key}}}")


def _fill(text: str, values: Mapping[str, object]) -> str:
    """`text` with its `{placeholders}` filled from `values`; an unknown one raises."""
    return string.Formatter().vformat(text, (), _Strict(values))


def placeholders(text: str | None) -> set[str]:
    if not text:
        return set()
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


class Translations:
    """The texts of one language, by key."""

    def __init__(self, language: str, source: str, texts: Mapping[str, str]) -> None:
        self.language = language
        self.source = source
        self.texts = texts

    def get(self, key: str) -> str | None:
        return self.texts.get(key) or None

    def __getitem__(self, key: str) -> str:
        text = self.get(key)
        if text is None:
            raise CatalogueError(f"{self.source}: no text for {key}")
        return text

    def __contains__(self, key: str) -> bool:
        return self.get(key) is not None

    def format(self, key: str, **values: object) -> str:
        try:
            return _fill(self[key], values)
        except UnknownPlaceholder as err:
            raise UnknownPlaceholder(f"{self.source}: {key}: {err}") from None
        except (ValueError, IndexError, AttributeError) as err:  # "{ref" or "{0}" or "{ref.x}"
            raise CatalogueError(f"{self.source}: {key}: bad placeholder: {err}") from None

    def section(self, prefix: str) -> dict[str, str]:
        """The texts under `prefix`, by the rest of their key: `section("labels.services")` is
        {"shelter": "hébergement", ...}, `section("partner_page")` holds "state.offered"."""
        start = f"{prefix}."
        return {key[len(start):]: text for key, text in self.texts.items() if key.startswith(start) and text}

    def labels(self, kind: str) -> dict[str, str]:
        return self.section(f"labels.{kind}")


def catalogue_file(messages_dir: Path, language: str) -> Path:
    return Path(messages_dir) / f"{language}.po"


# A line of a .po entry: a keyword and a quoted string, or a quoted continuation.
_PO_LINE = re.compile(r'(?:(?:msgctxt|msgid|msgid_plural|msgstr(?:\[\d+\])?)\s+)?"(?:[^"\\]|\\.)*"')
_KEY_LINE = re.compile(r'^msgid "(.+)"$', re.MULTILINE)


def _check(text: str) -> None:
    """What Babel lets through: an unclosed quote (it drops the last character) or a key twice."""
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#") and not _PO_LINE.fullmatch(line):
            raise ValueError(f"line {number}: not a quoted string")
    twice = sorted(key for key, count in Counter(_KEY_LINE.findall(text)).items() if count > 1)
    if twice:
        raise ValueError(f"msgid written twice: {', '.join(twice)}")


@lru_cache(maxsize=32)
def _read(path: Path, language: str, version: tuple[int, int]) -> Translations | CatalogueError:
    try:
        data = path.read_bytes()
        _check(data.decode("utf-8"))
        catalog = read_po(io.BytesIO(data), locale=language, abort_invalid=True)
    except (OSError, PoFileError, ValueError) as err:
        log.warning("catalogue unreadable", file=str(path), error=str(err))
        return CatalogueError(f"{path.name}: unreadable: {err}")
    texts = {m.id: m.string for m in catalog if m.id and isinstance(m.id, str) and isinstance(m.string, str)}
    return Translations(language, path.name, texts)


def translations(messages_dir: Path, language: str) -> Translations:
    """The catalogue of `language` in `messages_dir`; CatalogueError when it cannot be read."""
    if language not in LANGUAGES:
        raise CatalogueError(f"language: {language!r} is not one of {', '.join(LANGUAGES)}")
    path = catalogue_file(messages_dir, language)
    try:
        stat = path.stat()
    except OSError as err:
        raise CatalogueError(f"{path.name}: unreadable: {err.strerror}") from None
    found = _read(path, language, (stat.st_mtime_ns, stat.st_size))
    if isinstance(found, CatalogueError):
        raise found
    return found
