"""The one catalogue (config/messages/{fr,ar,en}.po): gettext files Babel reads, the same keys and
placeholders in the three languages, operators' edits applied at once, and pages that survive a
broken file."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import pytest
from babel.messages.pofile import read_po

from infra.translations import (
    LANGUAGES,
    PACKAGED_MESSAGES_DIR,
    CatalogueError,
    UnknownPlaceholder,
    catalogue_file,
    placeholders,
    translations,
)
from web.app import create_app
from web.i18n import Words

KEY = re.compile(r"[a-z_]+(\.[A-Za-z0-9_-]+)+")
SECTIONS = ("message.", "sms_reply.", "labels.", "page.", "partner_page.")


@pytest.mark.parametrize("lang", LANGUAGES)
def test_each_catalogue_is_a_po_file_babel_reads(lang: str):
    path = catalogue_file(PACKAGED_MESSAGES_DIR, lang)
    with path.open("rb") as fh:
        catalog = read_po(fh, abort_invalid=True)
    assert str(catalog.locale) == lang  # the header's Language
    ids = [m.id for m in catalog if m.id]
    assert len(ids) > 300
    raw_ids = re.findall(r'^msgid "(.+)"$', path.read_text(encoding="utf-8"), re.MULTILINE)
    assert sorted(raw_ids) == sorted(ids)  # no key written twice (Babel would keep one silently)
    for message in catalog:
        if not message.id:
            continue
        assert isinstance(message.id, str) and KEY.fullmatch(message.id), message.id  # a key, no plural
        assert message.id.startswith(SECTIONS), message.id
        assert not message.fuzzy and isinstance(message.string, str) and message.string.strip(), message.id
    assert not catalog.obsolete


def test_every_key_in_the_three_languages_with_the_same_placeholders():
    fr, *others = (translations(PACKAGED_MESSAGES_DIR, lang) for lang in LANGUAGES)
    for other in others:
        assert set(other.texts) == set(fr.texts), (other.language, set(other.texts) ^ set(fr.texts))
        for key, text in fr.texts.items():
            assert placeholders(other.texts[key]) == placeholders(text), (other.language, key)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_texts_with_placeholders_are_flagged_for_translators(lang: str):
    """`#, python-brace-format` lets Poedit and Weblate check a translation keeps its placeholders."""
    text = catalogue_file(PACKAGED_MESSAGES_DIR, lang).read_text(encoding="utf-8")
    flagged = set(re.findall(r'^#, python-brace-format\nmsgid "(.+)"$', text, re.MULTILINE))
    words = translations(PACKAGED_MESSAGES_DIR, lang)
    assert flagged == {key for key, value in words.texts.items() if placeholders(value)}


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "messages"
    shutil.copytree(PACKAGED_MESSAGES_DIR, folder)
    return folder


def test_an_operators_edit_applies_without_a_restart(tmp_path: Path):
    folder = _copy(tmp_path)
    assert translations(folder, "en")["labels.services.shelter"] == "shelter"
    path = catalogue_file(folder, "en")
    edited = path.read_text(encoding="utf-8").replace(
        'msgid "labels.services.shelter"\nmsgstr "shelter"', 'msgid "labels.services.shelter"\nmsgstr "emergency housing"'
    )
    path.write_text(edited, encoding="utf-8")
    assert translations(folder, "en")["labels.services.shelter"] == "emergency housing"


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text.replace('msgstr "shelter"', 'msgstr "shelter'),  # an unclosed quote
        lambda text: text + '\nmsgid "labels.services.shelter"\nmsgstr "again"\n',  # a key twice
        lambda text: text.replace('msgid "labels.services.shelter"', "labels.services.shelter"),
        lambda text: "\udcff" + text,  # not UTF-8
    ],
)
def test_a_broken_catalogue_is_a_clear_error(tmp_path: Path, damage):
    folder = _copy(tmp_path)
    path = catalogue_file(folder, "en")
    path.write_bytes(damage(path.read_text(encoding="utf-8")).encode("utf-8", "surrogateescape"))
    with pytest.raises(CatalogueError, match=r"en\.po: unreadable"):
        translations(folder, "en")
    with pytest.raises(CatalogueError, match="xx"):
        translations(folder, "xx")
    path.unlink()
    with pytest.raises(CatalogueError, match=r"en\.po: unreadable"):
        translations(folder, "en")


def test_a_missing_text_or_placeholder_is_named():
    words = translations(PACKAGED_MESSAGES_DIR, "en")
    with pytest.raises(CatalogueError, match=r"en\.po: no text for message\.nothing\.sms"):
        words["message.nothing.sms"]
    with pytest.raises(UnknownPlaceholder, match=r"en.po: sms_reply.accepted: unknown placeholder \{services\}"):
        words.format("sms_reply.accepted", ref="R-7K3Q9")


async def test_a_broken_or_old_catalogue_does_not_take_the_pages_down(tmp_path: Path, make_settings):
    folder = _copy(tmp_path)
    fr = catalogue_file(folder, "fr")
    # An operator's French file from an older version (no page texts) with one edited label...
    kept = [block for block in fr.read_text(encoding="utf-8").split("\n\n") if 'msgid "page.' not in block]
    fr.write_text("\n\n".join(kept).replace('msgstr "hébergement"', 'msgstr "mise à l\'abri"'), encoding="utf-8")
    # ... and an Arabic file broken by a stray line.
    ar = catalogue_file(folder, "ar")
    ar.write_text(ar.read_text(encoding="utf-8") + "\nnot a po line\n", encoding="utf-8")
    settings = make_settings(referral_messages_dir=folder, web_session_secret="s" * 32)

    words = Words("fr", settings)
    assert words.t("login_title") == "Connexion de la coordination"  # from the packaged catalogue
    assert words.label("services", "shelter") == "mise à l'abri"  # the operator's word wins
    arabic = Words("ar", settings)
    assert arabic.t("login_title") == "دخول المنسقين"
    assert arabic.label("services", "child_protection") == "حماية الطفولة"

    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        for lang, title in (("fr", "Connexion de la coordination"), ("ar", "دخول المنسقين")):
            page = await http.get(f"/login?lang={lang}")
            assert page.status_code == 200 and title in page.text
