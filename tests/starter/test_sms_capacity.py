"""The capacity commands of the SMS grammar (FULL, OPEN, LINK) in French, Arabic and English:
examples, then properties (hypothesis)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from starter.sms_capacity import CapacityCommand
from starter.sms_commands import SmsCommand, parse_sms

# Written here rather than imported, so the tests check the module against the brief.
FULL_WORDS = ["FULL", "COMPLET", "COMPLÈTE", "PLEIN", "ممتلئ", "مكتمل"]
OPEN_WORDS = ["OPEN", "OUVERT", "DISPONIBLE", "متاح", "مفتوح"]
LINK_WORDS = ["LINK", "LIEN", "رابط"]
# A service as each language writes it (the catalogues' words, with and without the article).
SERVICE_WORDS = {
    "shelter": ["shelter", "hébergement", "HEBERGEMENT", "الإيواء", "إيواء"],
    "medical": ["medical", "medical care", "soins médicaux", "médical", "الرعاية الطبية"],
    "psychosocial": ["psychosocial", "soutien psychosocial", "الدعم النفسي والاجتماعي"],
    "legal": ["legal", "legal aid", "aide juridique", "juridique", "المساعدة القانونية"],
    "child_protection": ["child protection", "child_protection", "protection de l'enfance", "protection de l’enfance", "حماية الطفولة"],
    "interpretation": ["interpretation", "interprétariat", "الترجمة الفورية"],
    "return_and_reintegration": ["return and reintegration", "retour et réintégration", "العودة وإعادة الإدماج"],
}
ARABIC_DIGITS = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")


def full(service: str | None = None, days: int | None = None, hours: int | None = None) -> CapacityCommand:
    duration = timedelta(days=days) if days else timedelta(hours=hours) if hours else None
    return CapacityCommand("full", service, duration)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("FULL", full()),
        ("full shelter", full("shelter")),
        ("FULL shelter 3d", full("shelter", 3)),
        ("Full, medical care, for 12 hours!", full("medical", hours=12)),
        ("COMPLET hébergement 3j", full("shelter", 3)),
        ("complet pour 2 jours", full(None, 2)),
        ("plein protection de l'enfance", full("child_protection")),
        ("ممتلئ", full()),
        ("ممتلئ الإيواء ٣ أيام", full("shelter", 3)),
        ("مكتمل المساعدة القانونية 2 يوم", full("legal", 2)),
        ("OPEN", CapacityCommand("open")),
        ("open shelter", CapacityCommand("open", "shelter")),
        ("OUVERT tous", CapacityCommand("open")),
        ("متاح الإيواء", CapacityCommand("open", "shelter")),
        ("LINK", CapacityCommand("link")),
        ("lien", CapacityCommand("link")),
        ("رابط", CapacityCommand("link")),
    ],
)
def test_examples(body: str, expected: CapacityCommand) -> None:
    assert parse_sms(body) == expected


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("FULL until Monday", "not_understood"),  # never read as FULL for ever
        ("FULL shelter tonight", "not_understood"),
        ("FULL 45d", "duration"),
        ("FULL shelter 0h", "duration"),
        ("OPEN 3d", "not_understood"),
        ("LINK shelter", "not_understood"),
        ("COMPLET " + "très " * 12, "not_understood"),
    ],
)
def test_what_is_not_understood_is_answered_with_the_commands(body: str, problem: str) -> None:
    result = parse_sms(body)
    assert isinstance(result, CapacityCommand) and result.problem == problem and result.duration is None


def test_the_referral_commands_are_unchanged() -> None:
    assert parse_sms("A 7K3Q9") == SmsCommand("accept", "7K3Q9")
    assert parse_sms("D 7K3Q9 full tonight") == SmsCommand("decline", "7K3Q9", "full tonight")
    assert parse_sms("merci, full") == SmsCommand("unknown")  # a keyword that is not first


# --- properties --------------------------------------------------------------------------------

SEPARATORS = st.sampled_from([" ", "  ", ", ", " - ", ": ", "\n", " \u200f"])


def cased(draw: st.DrawFn, word: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c.lower() for c in word)


@st.composite
def written_duration(draw: st.DrawFn) -> tuple[str, timedelta]:
    n = draw(st.integers(min_value=1, max_value=30))
    unit, delta = draw(st.sampled_from([
        ("d", timedelta(days=1)), ("j", timedelta(days=1)), (" days", timedelta(days=1)), (" jours", timedelta(days=1)),
        (" أيام", timedelta(days=1)), (" يوم", timedelta(days=1)), ("h", timedelta(hours=1)), (" heures", timedelta(hours=1)),
        (" hours", timedelta(hours=1)), (" ساعات", timedelta(hours=1)),
    ]))  # fmt: skip
    digits = str(n).translate(ARABIC_DIGITS) if draw(st.booleans()) else str(n)
    lead = draw(st.sampled_from(["", "for ", "pour ", "pendant ", "لمدة "]))
    return f"{lead}{digits}{unit}", n * delta


@settings(max_examples=500, deadline=None)
@given(
    data=st.data(),
    keyword=st.sampled_from(FULL_WORDS),
    service=st.sampled_from([None, *SERVICE_WORDS]),
    with_duration=st.booleans(),
)
def test_full_in_any_language_case_and_spacing(data: st.DataObject, keyword: str, service: str | None, with_duration: bool) -> None:
    body = cased(data.draw, keyword)
    if service is not None:
        body += data.draw(SEPARATORS) + cased(data.draw, data.draw(st.sampled_from(SERVICE_WORDS[service])))
    duration = None
    if with_duration:
        written, duration = data.draw(written_duration())
        body += data.draw(SEPARATORS) + written
    body += data.draw(st.sampled_from(["", "!", ".", " 👍"]))
    assert parse_sms(body) == CapacityCommand("full", service, duration), body


@settings(max_examples=300, deadline=None)
@given(data=st.data(), keyword=st.sampled_from(OPEN_WORDS), service=st.sampled_from([None, *SERVICE_WORDS]))
def test_open_in_any_language(data: st.DataObject, keyword: str, service: str | None) -> None:
    body = cased(data.draw, keyword)
    if service is not None:
        body += data.draw(SEPARATORS) + data.draw(st.sampled_from(SERVICE_WORDS[service]))
    assert parse_sms(body) == CapacityCommand("open", service), body


@settings(max_examples=100, deadline=None)
@given(data=st.data(), keyword=st.sampled_from(LINK_WORDS))
def test_link_in_any_language(data: st.DataObject, keyword: str) -> None:
    body = data.draw(st.sampled_from(["", " "])) + cased(data.draw, keyword) + data.draw(st.sampled_from(["", "!", " ?"]))
    assert parse_sms(body) == CapacityCommand("link"), body


@settings(max_examples=500, deadline=None)
@given(
    keyword=st.sampled_from(FULL_WORDS + OPEN_WORDS + LINK_WORDS),
    rest=st.text(st.characters(exclude_categories=()), max_size=200),
)
def test_anything_after_a_capacity_keyword_is_a_command_or_not_understood(keyword: str, rest: str) -> None:
    """Never a guess: either the words are all understood, or the answer is the list of commands."""
    result = parse_sms(keyword + " " + rest)
    assert isinstance(result, CapacityCommand)
    if result.problem is None:
        assert result.duration is None or (result.action == "full" and timedelta(hours=1) <= result.duration <= timedelta(days=30))
    else:
        assert result.duration is None
