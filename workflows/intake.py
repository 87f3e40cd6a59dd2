"""The intake model of a referral and the rules applied at identification.

One model serves the CLI, the JSON API and the web form. Validation names the field and never
echoes the value: the value may be personal data (a phone number, a name).
Everything here is pure and deterministic, so the workflow can apply the same rules.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import phonenumbers
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator, model_validator

Indicator = Literal[
    "abuse_of_vulnerability",
    "deception",
    "restriction_of_movement",
    "isolation",
    "physical_and_sexual_violence",
    "intimidation_and_threats",
    "retention_of_identity_documents",
    "withholding_of_wages",
    "debt_bondage",
    "abusive_working_and_living_conditions",
    "excessive_overtime",
]
INDICATORS: tuple[str, ...] = Indicator.__args__  # type: ignore[attr-defined]

Service = Literal[
    "shelter",
    "medical",
    "psychosocial",
    "legal",
    "child_protection",
    "interpretation",
    "return_and_reintegration",
]
SERVICES: tuple[str, ...] = Service.__args__  # type: ignore[attr-defined]

Region = Literal[
    "tanger-tetouan-al-hoceima",
    "oriental",
    "fes-meknes",
    "rabat-sale-kenitra",
    "beni-mellal-khenifra",
    "casablanca-settat",
    "marrakech-safi",
    "draa-tafilalet",
    "souss-massa",
    "guelmim-oued-noun",
    "laayoune-sakia-el-hamra",
    "dakhla-oued-ed-dahab",
]
REGIONS: tuple[str, ...] = Region.__args__  # type: ignore[attr-defined]

Urgency = Literal["normal", "urgent", "emergency"]
URGENCY_ORDER: tuple[str, ...] = ("normal", "urgent", "emergency")

Agency = Literal[
    "labour_inspectorate",
    "police",
    "gendarmerie",
    "ngo",
    "health",
    "social_services",
    "judiciary",
    "consulate",
    "other",
]
Sector = Literal[
    "agriculture",
    "domestic_work",
    "construction",
    "fishing",
    "manufacturing",
    "textile",
    "hospitality",
    "sex_industry",
    "begging",
    "street_vending",
    "mining",
    "other",
]

# ISO 3166-1 alpha-2
COUNTRIES = frozenset(
    [
        "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ", "BA", "BB",
        "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS", "BT", "BV", "BW", "BY",
        "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN", "CO", "CR", "CU", "CV", "CW", "CX",
        "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE", "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK",
        "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF", "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS",
        "GT", "GU", "GW", "GY", "HK", "HM", "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR",
        "IS", "IT", "JE", "JM", "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA",
        "LB", "LC", "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
        "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA", "NC", "NE",
        "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG", "PH", "PK", "PL", "PM",
        "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW", "SA", "SB", "SC", "SD", "SE", "SG",
        "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS", "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF",
        "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO", "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY",
        "UZ", "VA", "VC", "VE", "VG", "VI", "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
    ]
)  # fmt: skip

# ISO 639-1
LANGUAGES = frozenset(
    [
        "aa", "ab", "ae", "af", "ak", "am", "an", "ar", "as", "av", "ay", "az", "ba", "be", "bg", "bi", "bm", "bn",
        "bo", "br", "bs", "ca", "ce", "ch", "co", "cr", "cs", "cu", "cv", "cy", "da", "de", "dv", "dz", "ee", "el",
        "en", "eo", "es", "et", "eu", "fa", "ff", "fi", "fj", "fo", "fr", "fy", "ga", "gd", "gl", "gn", "gu", "gv",
        "ha", "he", "hi", "ho", "hr", "ht", "hu", "hy", "hz", "ia", "id", "ie", "ig", "ii", "ik", "io", "is", "it",
        "iu", "ja", "jv", "ka", "kg", "ki", "kj", "kk", "kl", "km", "kn", "ko", "kr", "ks", "ku", "kv", "kw", "ky",
        "la", "lb", "lg", "li", "ln", "lo", "lt", "lu", "lv", "mg", "mh", "mi", "mk", "ml", "mn", "mr", "ms", "mt",
        "my", "na", "nb", "nd", "ne", "ng", "nl", "nn", "no", "nr", "nv", "ny", "oc", "oj", "om", "or", "os", "pa",
        "pi", "pl", "ps", "pt", "qu", "rm", "rn", "ro", "ru", "rw", "sa", "sc", "sd", "se", "sg", "si", "sk", "sl",
        "sm", "sn", "so", "sq", "sr", "ss", "st", "su", "sv", "sw", "ta", "te", "tg", "th", "ti", "tk", "tl", "tn",
        "to", "tr", "ts", "tt", "tw", "ty", "ug", "uk", "ur", "uz", "ve", "vi", "vo", "wa", "wo", "xh", "yi", "yo",
        "za", "zh", "zu",
    ]
)  # fmt: skip

# Languages a Moroccan partner is assumed to work in; anyone else needs an interpreter.
LOCAL_LANGUAGES = frozenset({"ar", "fr"})


# --- the JSON Schema of the rules below, for /openapi.json ---------------------------------
# The validators stay the one definition of each rule; these schemas declare them (exactly, or
# a stricter subset where JSON Schema cannot say it all) so that a client built from the API
# document only sends what is accepted. tests/web/test_openapi.py holds the two together.


def _moroccan_e164() -> str:
    """Moroccan numbers in E.164, from libphonenumber's own metadata: each of them is valid."""
    metadata = phonenumbers.PhoneMetadata.metadata_for_region("MA")
    assert metadata is not None
    kinds = ("fixed_line", "mobile", "toll_free", "premium_rate", "shared_cost", "personal_number", "voip", "uan")
    patterns = [desc.national_number_pattern for desc in (getattr(metadata, k) for k in kinds) if desc and desc.national_number_pattern]
    # \d means any Unicode digit to Python's re: [0-9], as every regex engine reads it.
    return rf"^\+{metadata.country_code}(?:{'|'.join(patterns)})$".replace(r"\d", "[0-9]")


# RFC 3339 (`format: date-time`) spelled out, so that a client that skips formats still sends only
# dates that exist, and less what Python's datetime refuses: year 0000 and second 60.
_YEAR = r"(?:[0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})"
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
# A day that exists, YYYY-MM-DD (also the pattern of the reports API's date filters).
CALENDAR_DATE = (
    rf"(?:{_YEAR}-(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
    rf"|{_LEAP_YEAR}-02-29)"
)
_RFC3339 = rf"^{CALENDAR_DATE}[Tt](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
# After the surrounding spaces are stripped, something must remain.
NOT_BLANK = r"\S"

CountryCode = Annotated[str, WithJsonSchema(
    {"type": "string", "enum": sorted(COUNTRIES), "description": "ISO 3166-1 alpha-2 (lower case is accepted too)"}
)]
LanguageCode = Annotated[str, WithJsonSchema({"type": "string", "enum": sorted(LANGUAGES)})]
PhoneNumber = Annotated[str, WithJsonSchema({
    "type": "string",
    "pattern": _moroccan_e164(),
    "description": (
        "Any number libphonenumber finds valid is accepted (national Moroccan format such as "
        "0650123456, or + and the country code) and stored in E.164; the pattern declares the "
        "Moroccan numbers in E.164, such as +212650123456"
    ),
})]
Timestamp = Annotated[datetime, WithJsonSchema(
    {"type": "string", "format": "date-time", "pattern": _RFC3339, "description": "with its time zone offset, e.g. 2026-01-05T09:30:00+01:00"}
)]
_DISTINCT: dict[str, Any] = {"uniqueItems": True}  # a repeated value counts once; so the list is short


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must include a time zone offset, for example +01:00")
    return value


class IdentifiedBy(_Strict):
    agency: Agency
    officer_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._/-]+$")
    region: Region


class Person(_Strict):
    pseudonym: str = Field(min_length=1, max_length=80, json_schema_extra={"pattern": NOT_BLANK})
    age_group: Literal["adult", "minor", "unknown"]
    sex: Literal["female", "male", "other", "unknown"] = "unknown"
    nationality: CountryCode | None = Field(default=None, description="ISO 3166-1 alpha-2")
    languages: list[LanguageCode] = Field(default_factory=list, description="ISO 639-1", json_schema_extra=_DISTINCT)
    contact_phone: PhoneNumber | None = Field(default=None, description="E.164 after parsing")

    @field_validator("nationality")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.upper() not in COUNTRIES:
            raise ValueError("must be an ISO 3166-1 alpha-2 country code, such as CI or MA")
        return value.upper()

    @field_validator("languages")
    @classmethod
    def _languages(cls, value: list[str]) -> list[str]:
        out: list[str] = []
        for code in value:
            code = code.strip().lower()
            if code not in LANGUAGES:
                raise ValueError("each language must be an ISO 639-1 code, such as fr or ar")
            if code not in out:
                out.append(code)
        return out

    @field_validator("contact_phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        return normalise_phone(value)

    @property
    def is_minor(self) -> bool:
        # Unknown age is treated as a minor: the safer assumption for the person.
        return self.age_group != "adult"


class Consent(_Strict):
    model_config = ConfigDict(json_schema_extra={
        "description": "consent given needs recorded_by and recorded_at",
        "if": {"properties": {"given": {"const": True}}},
        "then": {
            "required": ["recorded_by", "recorded_at"],
            "properties": {"recorded_by": {"type": "string", "pattern": NOT_BLANK}, "recorded_at": {"type": "string"}},
        },
    })

    given: bool
    recorded_by: str | None = Field(default=None, max_length=64)
    recorded_at: Timestamp | None = None

    @field_validator("recorded_at")
    @classmethod
    def _tz(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _aware(value)

    @model_validator(mode="after")
    def _who_and_when(self) -> Consent:
        if self.given and (not self.recorded_by or self.recorded_at is None):
            raise ValueError("consent given needs recorded_by and recorded_at")
        return self


class Intake(_Strict):
    model_config = ConfigDict(json_schema_extra={
        "description": (
            "The person's consent is required for an adult who is not in immediate danger; "
            "an adult who consented needs at least one service."
        ),
        "allOf": [
            {"anyOf": [  # consent: given, or a minor (unknown age counts as minor), or immediate danger
                {"properties": {"consent": {"properties": {"given": {"const": True}}}}},
                {"properties": {"person": {"properties": {"age_group": {"enum": ["minor", "unknown"]}}}}},
                {"required": ["immediate_danger"], "properties": {"immediate_danger": {"const": True}}},
            ]},
            {"anyOf": [  # needs: one asked for, or one the rules add (child protection; medical and shelter)
                {"required": ["needs"], "properties": {"needs": {"minItems": 1}}},
                {"properties": {"person": {"properties": {"age_group": {"enum": ["minor", "unknown"]}}}}},
                {"properties": {"consent": {"properties": {"given": {"const": False}}}}},
            ]},
        ],
    })

    external_ref: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    identified_by: IdentifiedBy
    identified_at: Timestamp
    sector: Sector
    indicators: list[Indicator] = Field(default_factory=list, json_schema_extra=_DISTINCT)
    immediate_danger: bool = False
    person: Person
    needs: list[Service] = Field(default_factory=list, json_schema_extra=_DISTINCT)
    consent: Consent
    urgency: Urgency | None = None
    notes: str | None = Field(default=None, max_length=4000)

    @field_validator("identified_at")
    @classmethod
    def _tz(cls, value: datetime) -> datetime:
        return _aware(value)

    @field_validator("indicators", "needs")
    @classmethod
    def _dedupe(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _rules(self) -> Intake:
        # Consent is refused here, before anything starts, unless an exception applies.
        if not self.consent.given and not (self.person.is_minor or self.immediate_danger):
            raise ValueError(
                "consent: the person's consent is required for an adult who is not in immediate danger"
            )
        if not assess(self).needs:
            raise ValueError("needs: at least one service is required")
        return self

    @property
    def region(self) -> str:
        return self.identified_by.region


class Assessment(_Strict):
    """What identification decides: urgency and the services to find partners for."""

    urgency: Urgency
    needs: list[Service]
    withheld_needs: list[Service] = Field(
        default_factory=list, description="asked for, but not referred without the person's consent"
    )
    minor: bool
    interpreter_needed: bool


def assess(intake: Intake) -> Assessment:
    """Apply domain.md's rules at identification. Pure: the workflow calls it too."""
    person = intake.person
    needs: list[str] = list(intake.needs)

    if intake.immediate_danger:
        urgency = "emergency"
    else:
        urgency = intake.urgency or "normal"
        if person.is_minor and URGENCY_ORDER.index(urgency) < URGENCY_ORDER.index("urgent"):
            urgency = "urgent"

    if person.is_minor and "child_protection" not in needs:
        needs.insert(0, "child_protection")

    withheld: list[str] = []
    if not intake.consent.given:
        allowed: list[str] = []
        if person.is_minor:
            allowed.append("child_protection")  # best interests of the child
        if intake.immediate_danger:
            allowed += ["medical", "shelter"]  # protection from immediate harm
        withheld = [n for n in needs if n not in allowed]
        needs = [n for n in needs if n in allowed]
        if intake.immediate_danger:
            for n in ("medical", "shelter"):
                if n not in needs:
                    needs.append(n)

    interpreter = "interpretation" in needs or (
        bool(person.languages) and not LOCAL_LANGUAGES.intersection(person.languages)
    )
    return Assessment(
        urgency=urgency,
        needs=needs,
        withheld_needs=withheld,
        minor=person.is_minor,
        interpreter_needed=interpreter,
    )


def normalise_phone(value: str, default_region: str = "MA") -> str:
    """E.164, accepting Moroccan national numbers such as 0650123456."""
    try:
        number = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException:
        raise ValueError("not a valid phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def field_errors(error: ValidationError) -> list[dict[str, str]]:
    """Errors as {field, message}, without the submitted values (they may be personal data)."""
    out = []
    for item in error.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in item["loc"])
        msg = item["msg"].removeprefix("Value error, ")
        if not loc and ": " in msg:
            # Model-level rules name their own field: "consent: ..."
            loc, msg = msg.split(": ", 1)
        out.append({"field": loc or "(intake)", "message": msg})
    return out


def describe_errors(error: ValidationError) -> str:
    return "; ".join(f"{e['field']}: {e['message']}" for e in field_errors(error))
