"""The messages of the catalogues (config/messages/{en,fr,ar}.po, `message.*`) and their rendering.

Every template renders in every language with the same placeholders, SMS stay short and carry the
code, and nothing that identifies the person can reach a message.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

import pytest
from babel.messages.pofile import read_po, write_po
from pydantic import ValidationError

from activities.messages import render
from infra.translations import Translations, UnknownPlaceholder, placeholders, translations
from workflows.intake import REGIONS, SERVICES
from workflows.models import Notice, NoticeContext, NoticeTemplate

ROOT = Path(__file__).resolve().parents[2]
MESSAGES_DIR = ROOT / "config" / "messages"
LANGS = ("en", "fr", "ar")
TEMPLATES: tuple[str, ...] = get_args(NoticeTemplate)
TZ = "Africa/Casablanca"
LINK = "https://x.example/p/abc"
CODE = "7K3Q9"
SMS_MAX = 320
PARTNER_TEMPLATES = ("offer", "reminder", "offer_withdrawn", "assigned", "checkin", "referral_closed")
LABEL_SECTIONS = ("services", "regions", "urgency", "age_group", "closed_reason", "problems")

# What an intake says about the person; none of it may ever reach a message.
PERSON = {"pseudonym": "Amina K.", "contact_phone": "+212650123456", "notes": "lives near the port"}

ARABIC = re.compile(r"[\u0600-\u06FF]")


def _raw(lang: str) -> Translations:
    return translations(MESSAGES_DIR, lang)


def _template(lang: str, template: str) -> dict[str, str]:
    """{"sms": ..., "subject": ..., "body": ...} of one notice template (no "sms": email only)."""
    return _raw(lang).section(f"message.{template}")


def _context(**overrides) -> NoticeContext:
    values = dict(
        code=CODE,
        urgency="urgent",
        region="fes-meknes",
        service="shelter",
        services=["shelter", "medical", "child_protection"],
        # 13:30 UTC is 14:30 in Casablanca (UTC+1 outside Ramadan)
        deadline=datetime(2026, 5, 12, 13, 30, tzinfo=UTC),
        partner_id="nat-shelter-amane",
        escalation_level=2,
        age_group="minor",
        languages=["ar", "fr"],
        interpreter_needed=True,
        checkin_number=2,
        alert_count=3,
        closed_reason="completed",
        channel="sms",
        problem="OptedOut",
        summary_lines=["shelter: completed by nat-shelter-amane", "medical: completed"],
    )
    values.update(overrides)
    return NoticeContext(**values)


def _notice(template: str, context: NoticeContext | None = None) -> Notice:
    to_partner = template in PARTNER_TEMPLATES
    return Notice(
        recipient="partner" if to_partner else "coordinator",
        recipient_id="nat-shelter-amane" if to_partner else "fes-meknes",
        template=template,
        context=context or _context(),
    )


def _longest_key(labels: dict) -> str:
    return max(labels, key=lambda key: len(str(labels[key])))


def _worst_context(lang: str) -> NoticeContext:
    """The context whose labels are the longest in this language, for the SMS length check."""
    labels = _raw(lang).labels
    return _context(
        urgency=_longest_key(labels("urgency")),
        region=_longest_key({k: v for k, v in labels("regions").items() if k in REGIONS}),
        service=_longest_key({k: v for k, v in labels("services").items() if k in SERVICES}),
        closed_reason=_longest_key(labels("closed_reason")),
        problem=_longest_key(labels("problems")),
        partner_id="nat-interp-solidaires",
        escalation_level=12,
        checkin_number=14,
        alert_count=120,
    )


def _all_text(message) -> str:
    return "\n".join(part for part in (message.sms, message.subject, message.body) if part)


# --- every template in every language ---------------------------------------------------------


def test_catalogues_cover_every_template():
    for lang in LANGS:
        written = {key.split(".")[1] for key in _raw(lang).texts if key.count(".") == 2 and key.startswith("message.")}
        assert written == set(TEMPLATES), lang
        for template in TEMPLATES:
            assert {"subject", "body"} <= set(_template(lang, template)), (lang, template)


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_renders(lang: str, template: str):
    message = render(_notice(template), lang, MESSAGES_DIR, TZ, link=LINK)
    assert message.language == lang
    assert f"R-{CODE}" in message.subject
    assert f"R-{CODE}" in message.body
    assert "{" not in message.subject and "}" not in message.subject
    has_sms = bool(_template(lang, template).get("sms"))
    if has_sms:
        assert message.sms is not None
        assert CODE in message.sms
        assert len(message.sms) <= SMS_MAX, (len(message.sms), message.sms)
    else:
        assert message.sms is None


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("template", TEMPLATES)
def test_sms_stays_short_with_the_longest_labels(lang: str, template: str):
    message = render(_notice(template, _worst_context(lang)), lang, MESSAGES_DIR, TZ, link=LINK)
    if message.sms is not None:
        assert CODE in message.sms
        assert len(message.sms) <= SMS_MAX, (len(message.sms), message.sms)


@pytest.mark.parametrize("lang", LANGS)
def test_labels_are_used_not_raw_keys(lang: str):
    labels = _raw(lang).labels
    message = render(_notice("offer"), lang, MESSAGES_DIR, TZ, link=LINK)
    assert labels("services")["shelter"] in message.sms
    assert labels("regions")["fes-meknes"] in message.sms
    assert labels("age_group")["minor"] in message.body
    assert LINK in message.body
    assert "12/05 14:30" in message.sms and "12/05 14:30" in message.body  # local time, not UTC


# --- the three catalogues agree ----------------------------------------------------------------


def test_catalogues_have_identical_keys():
    en = _raw("en")
    for lang in ("fr", "ar"):
        other = _raw(lang)
        assert set(other.texts) == set(en.texts), (lang, set(other.texts) ^ set(en.texts))
        for name in TEMPLATES:
            assert set(_template(lang, name)) == set(_template("en", name)), (lang, name)
        for section in LABEL_SECTIONS:
            assert set(other.labels(section)) == set(en.labels(section)), (lang, section)


@pytest.mark.parametrize("lang", LANGS)
def test_every_region_and_service_has_a_label(lang: str):
    labels = _raw(lang).labels
    assert set(REGIONS) <= set(labels("regions")), lang
    assert set(SERVICES) <= set(labels("services")), lang
    assert set(labels("urgency")) == {"normal", "urgent", "emergency"}
    for section in LABEL_SECTIONS:
        for key, value in labels(section).items():
            assert isinstance(value, str) and value.strip(), (lang, section, key)
    assert _raw(lang)["labels.yes"].strip() and _raw(lang)["labels.no"].strip()


@pytest.mark.parametrize("lang", ("fr", "ar"))
def test_placeholders_match_english(lang: str):
    en, other = _raw("en"), _raw(lang)
    for name in TEMPLATES:
        entry = _template("en", name)
        for part in ("sms", "subject", "body"):
            theirs = placeholders(_template(lang, name).get(part))
            assert theirs == placeholders(entry.get(part)), (lang, name, part)
    for key in ("message.footer", "message.no_link"):
        assert placeholders(other[key]) == placeholders(en[key]), (lang, key)


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("template", TEMPLATES)
def test_reply_commands_stay_literal(lang: str, template: str):
    """The SMS webhook parses A/D/OK/DONE/ISSUE in every language; translations keep them."""
    en_sms = _template("en", template).get("sms") or ""
    sms = _template(lang, template).get("sms") or ""
    for command in ("A", "D", "OK", "DONE", "ISSUE"):
        if f"{command} {{code}}" in en_sms:
            assert f"{command} {{code}}" in sms, (lang, template, command)
    if "referral assign {code}" in en_sms:
        assert "referral assign {code} --service ... --partner ..." in sms


def test_french_is_french():
    fr = _raw("fr")
    assert "Répondez A {code}" in fr["message.offer.sms"]
    assert "OUI {code}" in fr["message.offer.body"]
    assert fr.labels("regions")["fes-meknes"] == "Fès-Meknès"
    assert fr.labels("regions")["rabat-sale-kenitra"] == "Rabat-Salé-Kénitra"
    assert fr.labels("regions")["laayoune-sakia-el-hamra"] == "Laâyoune-Sakia El Hamra"
    message = render(_notice("offer"), "fr", MESSAGES_DIR, TZ, link=LINK)
    assert "Répondez" in message.sms and "hébergement" in message.sms
    assert "orientation" in message.body and "aucune donnée personnelle" in message.body


def test_arabic_is_arabic():
    ar = _raw("ar")
    for section in ("regions", "services", "urgency", "age_group", "closed_reason", "problems"):
        for key, value in ar.labels(section).items():
            assert ARABIC.search(value), (section, key)
    assert ar.labels("regions")["casablanca-settat"] == "الدار البيضاء-سطات"
    for template in TEMPLATES:
        message = render(_notice(template), "ar", MESSAGES_DIR, TZ, link=LINK)
        for part in (message.sms, message.subject, message.body):
            if part is not None:
                assert ARABIC.search(part), template
    assert "نعم {code}" in ar["message.offer.body"]


# --- no personal data ------------------------------------------------------------------------


def test_notice_context_rejects_personal_fields():
    """The real guard: a template can only see NoticeContext, and it has no room for the person."""
    for field, value in PERSON.items():
        with pytest.raises(ValidationError):
            _context(**{field: value})
    with pytest.raises(ValidationError):
        NoticeContext(code=CODE, urgency="normal", region="oriental", pseudonym="Amina K.")
    assert not set(PERSON) & set(NoticeContext.model_fields)


@pytest.mark.parametrize("lang", LANGS)
def test_person_never_in_a_message(lang: str):
    for template in TEMPLATES:
        text = _all_text(render(_notice(template), lang, MESSAGES_DIR, TZ, link=LINK))
        for value in PERSON.values():
            assert value not in text, (lang, template)
        assert "Amina" not in text and "650123456" not in text


def test_unknown_placeholder_fails_loudly(tmp_path: Path):
    with (MESSAGES_DIR / "en.po").open("rb") as fh:  # a copy of the English catalogue with one bad template
        catalogue = read_po(fh, locale="en")
    catalogue["message.offer.sms"].string = "{ref}: {service} for {pseudonym}. Reply A {code}."
    with (tmp_path / "en.po").open("wb") as fh:
        write_po(fh, catalogue)
    with pytest.raises(UnknownPlaceholder, match="pseudonym"):
        render(_notice("offer"), "en", tmp_path, TZ, link=LINK)
    # the untouched templates of that catalogue still render
    assert render(_notice("reminder"), "en", tmp_path, TZ, link=LINK).sms
