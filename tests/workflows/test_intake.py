"""The intake model and the rules at identification (domain.md: "Intake", "Rules at identification").

Pure model tests: no Temporal, no network.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from tests.cases import NOTES, PHONE, PSEUDONYM, adult_case
from workflows.intake import (
    INDICATORS,
    LANGUAGES,
    REGIONS,
    SERVICES,
    Intake,
    assess,
    describe_errors,
    field_errors,
    normalise_phone,
)

NO_CONSENT = {"given": False, "recorded_by": None, "recorded_at": None}


def intake(**overrides: Any) -> Intake:
    return Intake.model_validate(adult_case(**overrides))


def rejected(**overrides: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        Intake.model_validate(adult_case(**overrides))
    return info.value


def fields(err: ValidationError) -> list[str]:
    return [e["field"] for e in field_errors(err)]


# --- the committed example and the vocabularies -------------------------------------------


def test_example_is_valid_and_assessed_as_normal_adult() -> None:
    a = assess(intake())
    assert a.urgency == "normal"
    assert a.needs == ["shelter", "medical", "legal"]
    assert a.withheld_needs == []
    assert a.minor is False
    assert a.interpreter_needed is False


def test_vocabularies_match_domain() -> None:
    assert len(INDICATORS) == 11
    assert set(SERVICES) == {
        "shelter", "medical", "psychosocial", "legal", "child_protection", "interpretation",
        "return_and_reintegration",
    }
    assert len(REGIONS) == 12
    assert "casablanca-settat" in REGIONS and "dakhla-oued-ed-dahab" in REGIONS


# --- urgency ------------------------------------------------------------------------------


@pytest.mark.parametrize("given", [None, "normal", "urgent", "emergency"])
@pytest.mark.parametrize("age_group", ["adult", "minor", "unknown"])
def test_immediate_danger_is_emergency_whatever_the_given_urgency(given: str | None, age_group: str) -> None:
    a = assess(intake(immediate_danger=True, urgency=given, person={"age_group": age_group}))
    assert a.urgency == "emergency"


@pytest.mark.parametrize("age_group", ["minor", "unknown"])
@pytest.mark.parametrize(
    ("given", "expected"),
    [(None, "urgent"), ("normal", "urgent"), ("urgent", "urgent"), ("emergency", "emergency")],
)
def test_minor_or_unknown_age_is_at_least_urgent(age_group: str, given: str | None, expected: str) -> None:
    a = assess(intake(urgency=given, person={"age_group": age_group}))
    assert a.urgency == expected
    assert a.minor is True


@pytest.mark.parametrize("age_group", ["minor", "unknown"])
def test_minor_or_unknown_age_gets_child_protection_first(age_group: str) -> None:
    a = assess(intake(person={"age_group": age_group}))
    assert a.needs == ["child_protection", "shelter", "medical", "legal"]


def test_child_protection_already_requested_is_not_duplicated() -> None:
    a = assess(intake(person={"age_group": "minor"}, needs=["legal", "child_protection"]))
    assert a.needs == ["legal", "child_protection"]


def test_minor_with_no_needs_is_accepted_with_child_protection() -> None:
    a = assess(intake(person={"age_group": "minor"}, needs=[]))
    assert a.needs == ["child_protection"]


@pytest.mark.parametrize("given", ["normal", "urgent", "emergency"])
def test_adult_keeps_the_given_urgency(given: str) -> None:
    assert assess(intake(urgency=given)).urgency == given


@pytest.mark.parametrize(
    "indicators",
    [[], ["deception"], ["deception", "isolation"], list(INDICATORS)],
    ids=["0", "1", "2", "11"],
)
def test_adult_without_urgency_is_normal_whatever_the_indicators(indicators: list[str]) -> None:
    a = assess(intake(urgency=None, indicators=indicators))
    assert a.urgency == "normal"
    assert "child_protection" not in a.needs


# --- consent ------------------------------------------------------------------------------


def test_no_consent_for_an_adult_not_in_danger_is_refused_naming_consent() -> None:
    err = rejected(consent=NO_CONSENT)
    assert fields(err) == ["consent"]
    assert "consent" in describe_errors(err)


@pytest.mark.parametrize("age_group", ["minor", "unknown"])
def test_no_consent_minor_gets_child_protection_only(age_group: str) -> None:
    a = assess(intake(consent=NO_CONSENT, person={"age_group": age_group}))
    assert a.needs == ["child_protection"]
    assert a.withheld_needs == ["shelter", "medical", "legal"]
    assert a.urgency == "urgent"


def test_no_consent_immediate_danger_gets_medical_and_shelter_only() -> None:
    a = assess(intake(consent=NO_CONSENT, immediate_danger=True, needs=["shelter", "legal", "psychosocial"]))
    assert sorted(a.needs) == ["medical", "shelter"]
    assert a.withheld_needs == ["legal", "psychosocial"]
    assert a.urgency == "emergency"


def test_no_consent_immediate_danger_adds_medical_and_shelter_even_if_not_requested() -> None:
    a = assess(intake(consent=NO_CONSENT, immediate_danger=True, needs=["legal"]))
    assert sorted(a.needs) == ["medical", "shelter"]
    assert a.withheld_needs == ["legal"]


def test_no_consent_immediate_danger_with_no_needs_is_accepted() -> None:
    a = assess(intake(consent=NO_CONSENT, immediate_danger=True, needs=[]))
    assert sorted(a.needs) == ["medical", "shelter"]
    assert a.withheld_needs == []


def test_no_consent_minor_in_danger_gets_child_protection_medical_shelter() -> None:
    a = assess(
        intake(consent=NO_CONSENT, immediate_danger=True, person={"age_group": "minor"},
               needs=["legal", "interpretation"])
    )
    assert a.needs[0] == "child_protection"
    assert sorted(a.needs) == ["child_protection", "medical", "shelter"]
    assert a.withheld_needs == ["legal", "interpretation"]
    assert a.urgency == "emergency"


@pytest.mark.parametrize(
    "consent",
    [
        {"given": True, "recorded_by": None},
        {"given": True, "recorded_at": None},
        {"given": True, "recorded_by": "", "recorded_at": None},
    ],
    ids=["no-recorded_by", "no-recorded_at", "neither"],
)
def test_consent_given_needs_who_and_when(consent: dict[str, Any]) -> None:
    assert fields(rejected(consent=consent)) == ["consent"]


def test_consent_recorded_at_must_be_aware() -> None:
    assert fields(rejected(consent={"recorded_at": "2026-11-28T09:40:00"})) == ["consent.recorded_at"]


# --- unknown and malformed fields --------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"person": {"foo": 1}}, "person.foo"),
        ({"identified_by": {"badge": "x"}}, "identified_by.badge"),
        ({"consent": {"witness": "x"}}, "consent.witness"),
        ({"indicators": ["deception", "forced_marriage"]}, "indicators.1"),
        ({"indicators": ["slavery"]}, "indicators.0"),
        ({"needs": ["shelter", "housing"]}, "needs.1"),
        ({"identified_by": {"region": "tangier"}}, "identified_by.region"),
        ({"identified_by": {"agency": "army"}}, "identified_by.agency"),
        ({"sector": "banking"}, "sector"),
        ({"urgency": "critical"}, "urgency"),
        ({"person": {"age_group": "teen"}}, "person.age_group"),
        ({"identified_at": "2026-11-28T09:30:00"}, "identified_at"),
        ({"identified_at": "yesterday"}, "identified_at"),
        ({"external_ref": "has spaces"}, "external_ref"),
    ],
)
def test_errors_name_the_field(overrides: dict[str, Any], field: str) -> None:
    err = rejected(**overrides)
    assert fields(err) == [field]
    assert describe_errors(err).startswith(f"{field}: ")


@pytest.mark.parametrize("missing", ["external_ref", "identified_by", "identified_at", "sector", "person", "consent"])
def test_missing_required_field_is_named(missing: str) -> None:
    data = adult_case()
    del data[missing]
    with pytest.raises(ValidationError) as info:
        Intake.model_validate(data)
    assert fields(info.value) == [missing]


def test_several_errors_are_all_reported() -> None:
    err = rejected(indicators=["slavery"], needs=["housing"], identified_by={"region": "paris"})
    assert set(fields(err)) == {"indicators.0", "needs.0", "identified_by.region"}


def test_empty_needs_for_an_adult_is_an_error_naming_needs() -> None:
    assert fields(rejected(needs=[])) == ["needs"]


def test_duplicates_in_needs_and_indicators_are_removed_in_order() -> None:
    i = intake(
        needs=["legal", "shelter", "legal", "shelter"],
        indicators=["isolation", "deception", "isolation"],
    )
    assert i.needs == ["legal", "shelter"]
    assert i.indicators == ["isolation", "deception"]
    assert assess(i).needs == ["legal", "shelter"]


# --- person -------------------------------------------------------------------------------


def test_nationality_is_upper_cased() -> None:
    assert intake(person={"nationality": "ci"}).person.nationality == "CI"


@pytest.mark.parametrize("bad", ["XX", "CIV", "Ivory Coast", "1"])
def test_invalid_nationality_is_rejected(bad: str) -> None:
    assert fields(rejected(person={"nationality": bad})) == ["person.nationality"]


def test_nationality_may_be_omitted() -> None:
    assert intake(person={"nationality": None}).person.nationality is None


def test_languages_are_validated_lower_cased_and_deduplicated() -> None:
    p = intake(person={"languages": ["FR", "wo", "fr", " wo ", "ar"]}).person
    assert p.languages == ["fr", "wo", "ar"]
    assert all(code in LANGUAGES for code in p.languages)


@pytest.mark.parametrize("bad", ["french", "fra", "xx", ""])
def test_invalid_language_is_rejected(bad: str) -> None:
    err = rejected(person={"languages": ["fr", bad]})
    assert fields(err) == ["person.languages"]


def test_moroccan_national_phone_is_normalised() -> None:
    assert normalise_phone("0650123456") == "+212650123456"
    assert intake(person={"contact_phone": "0650123456"}).person.contact_phone == "+212650123456"
    assert intake(person={"contact_phone": "06 50 12 34 56"}).person.contact_phone == "+212650123456"


def test_international_phone_is_accepted() -> None:
    assert intake(person={"contact_phone": "+33 6 12 34 56 78"}).person.contact_phone == "+33612345678"


@pytest.mark.parametrize("value", [None, ""])
def test_phone_may_be_omitted(value: str | None) -> None:
    assert intake(person={"contact_phone": value}).person.contact_phone is None


@pytest.mark.parametrize("bad", ["call me", "12", "+2126501234567890", "065012"])
def test_garbage_phone_is_rejected(bad: str) -> None:
    assert fields(rejected(person={"contact_phone": bad})) == ["person.contact_phone"]
    with pytest.raises(ValueError):
        normalise_phone(bad)


# --- interpreter --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("languages", "needs", "expected"),
    [
        (["fr"], ["shelter"], False),
        (["ar"], ["shelter"], False),
        (["wo", "fr"], ["shelter"], False),
        (["wo"], ["shelter"], True),
        (["en", "es"], ["shelter"], True),
        (["fr"], ["shelter", "interpretation"], True),
        ([], ["shelter"], False),
    ],
)
def test_interpreter_needed(languages: list[str], needs: list[str], expected: bool) -> None:
    assert assess(intake(person={"languages": languages}, needs=needs)).interpreter_needed is expected


# --- personal data never appears in errors ------------------------------------------------

BAD_PHONE = "+2126501234567890"
LONG_PSEUDONYM = PSEUDONYM * 11  # 88 characters, over the limit of 80


def _personal(**person: Any) -> dict[str, Any]:
    return {"pseudonym": PSEUDONYM, "contact_phone": BAD_PHONE, **person}


PII_FAILURES = {
    "bad-phone": {"person": _personal()},
    "bad-phone-and-no-consent": {"person": _personal(), "consent": NO_CONSENT},
    "long-pseudonym": {"person": {"pseudonym": LONG_PSEUDONYM}},
    "long-pseudonym-and-bad-phone": {"person": _personal(pseudonym=LONG_PSEUDONYM)},
    "no-consent": {"person": {"pseudonym": PSEUDONYM}, "consent": NO_CONSENT},
    "unknown-region": {"person": _personal(contact_phone=PHONE), "identified_by": {"region": "nowhere"}},
    "empty-needs": {"person": {"pseudonym": PSEUDONYM}, "needs": []},
    "pseudonym-wrong-type": {"person": {"pseudonym": [PSEUDONYM]}},
    "phone-wrong-type": {"person": {"contact_phone": 2126501234567890}},
    "notes-too-long": {"notes": NOTES * 100},
    "notes-wrong-type": {"notes": {"text": NOTES}},
    "unknown-person-field": {"person": {"alias": PSEUDONYM}},
    "bad-dates": {"identified_at": "2026-11-28T09:30:00", "consent": {"recorded_at": NOTES}},
}


@pytest.mark.parametrize("overrides", PII_FAILURES.values(), ids=PII_FAILURES.keys())
def test_errors_never_contain_personal_data(overrides: dict[str, Any]) -> None:
    data = adult_case(**overrides)
    data.setdefault("notes", NOTES)
    assert len(LONG_PSEUDONYM) > 80
    with pytest.raises(ValidationError) as info:
        Intake.model_validate(data)
    err = info.value
    texts = [describe_errors(err), str(field_errors(err))]
    for text in texts:
        assert text
        assert PSEUDONYM not in text
        assert "Amina" not in text
        assert "6501234567890" not in text
        assert "650123456" not in text
        assert "Berrechid" not in text
        assert NOTES not in text
