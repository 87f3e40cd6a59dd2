"""The intake form: `GET /referrals/new`, and `POST` to start the referral.

Every field of the intake model, choices for the allowed values, consent recorded explicitly,
errors beside their fields. The same implementation as the CLI and the API starts the referral
(starter.referrals). No value typed in the form is ever logged.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from temporalio.service import RPCError

from config.settings import Settings
from starter import referrals
from web.deps import client_of, settings_of
from web.i18n import Words, language_of
from web.rendering import render, slug
from web.routes.auth import signed_in_form
from web.security import SecureRoute, Session, authenticated_session, to_login
from workflows.intake import INDICATORS, REGIONS, SERVICES, Intake, field_errors

log = structlog.get_logger(__name__)

AGENCIES: tuple[str, ...] = Intake.model_fields["identified_by"].annotation.model_fields["agency"].annotation.__args__  # type: ignore[union-attr]
SECTORS: tuple[str, ...] = Intake.model_fields["sector"].annotation.__args__  # type: ignore[union-attr]
AGE_GROUPS = ("adult", "minor", "unknown")
SEXES = ("female", "male", "other", "unknown")
URGENCIES = ("normal", "urgent", "emergency")

router = APIRouter(route_class=SecureRoute, include_in_schema=False)

# --- the intake form -----------------------------------------------------------------------

# Form field names are the intake's own locations, so pydantic's errors land beside them.
TEXT_FIELDS = (
    "external_ref",
    "identified_by.agency",
    "identified_by.officer_id",
    "identified_by.region",
    "identified_at",
    "timezone",
    "sector",
    "person.pseudonym",
    "person.age_group",
    "person.sex",
    "person.nationality",
    "person.languages",
    "person.contact_phone",
    "consent.given",
    "consent.recorded_by",
    "consent.recorded_at",
    "urgency",
    "notes",
)
LIST_FIELDS = ("indicators", "needs")
FORM_FIELDS = (*TEXT_FIELDS, *LIST_FIELDS, "immediate_danger")
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")
_LOCAL_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?$")
_LIMITS = {
    "external_ref": 100, "identified_by.officer_id": 64, "person.pseudonym": 80, "person.nationality": 2,
    "person.languages": 200, "person.contact_phone": 32, "consent.recorded_by": 64, "notes": 4000,
}


def _offset(value: str) -> str | None:
    """`+01:00`, `+0100` or `-03:30` -> `+01:00`; None when not an offset."""
    match = _OFFSET.match(value.strip())
    if not match or int(match[2]) > 14 or int(match[3]) > 59:
        return None
    return f"{match[1]}{match[2]}:{match[3]}"


def _default_values(settings: Settings) -> dict[str, Any]:
    now = datetime.now(ZoneInfo(settings.referral_timezone)).replace(second=0, microsecond=0)
    offset = now.strftime("%z")
    return {
        "identified_at": now.strftime("%Y-%m-%dT%H:%M"),
        "consent.recorded_at": now.strftime("%Y-%m-%dT%H:%M"),
        "timezone": f"{offset[:3]}:{offset[3:]}",
        "person.sex": "unknown",
        "indicators": [],
        "needs": [],
    }


def read_intake_form(form: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[str]]]:
    """The typed values (to show again), the intake data for the model, and the form's own errors
    (message keys) for what the model cannot see: the time zone offset."""
    values: dict[str, Any] = {}
    for name in TEXT_FIELDS:
        raw = form.get(name)
        values[name] = raw.strip() if isinstance(raw, str) else ""
    for name in LIST_FIELDS:
        values[name] = [v for v in form.getlist(name) if isinstance(v, str)]
    values["immediate_danger"] = form.get("immediate_danger") in ("on", "yes", "true", "1")

    own: dict[str, list[str]] = {}
    offset = _offset(values["timezone"])
    if offset is None:
        own["timezone"] = ["err_timezone"]
        offset = "+00:00"  # so the other fields are still checked

    def when(name: str) -> str | None:
        value = values[name]
        if not value:
            return None
        if not _LOCAL_DATETIME.match(value):
            return value  # the model names it invalid
        return f"{value}:00{offset}" if value.count(":") == 1 else f"{value}{offset}"

    def optional(name: str) -> str | None:
        return values[name] or None

    def text(name: str) -> str | None:
        # a required text: absent stays absent, so the model says "required"
        return values[name] or None

    data: dict[str, Any] = {
        "external_ref": text("external_ref"),
        "identified_by": {
            "agency": text("identified_by.agency"),
            "officer_id": text("identified_by.officer_id"),
            "region": text("identified_by.region"),
        },
        "identified_at": when("identified_at"),
        "sector": text("sector"),
        "indicators": values["indicators"],
        "immediate_danger": values["immediate_danger"],
        "person": {
            "pseudonym": text("person.pseudonym"),
            "age_group": text("person.age_group"),
            "sex": values["person.sex"] or "unknown",
            "nationality": optional("person.nationality"),
            "languages": [c for c in re.split(r"[\s,;]+", values["person.languages"]) if c],
            "contact_phone": optional("person.contact_phone"),
        },
        "needs": values["needs"],
        "consent": {
            "given": {"yes": True, "no": False}.get(values["consent.given"]),
            "recorded_by": optional("consent.recorded_by"),
            "recorded_at": when("consent.recorded_at"),
        },
        "urgency": optional("urgency"),
        "notes": optional("notes"),
    }
    # Drop what was left empty, so the model reports a missing field as missing.
    data = _drop_none(data)
    return values, data, own


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def _error_key(field: str, item: dict[str, Any], message: str) -> tuple[str, str, dict[str, Any]]:
    """(form field, message key, values) for one pydantic error."""
    kind = item.get("type", "")
    ctx = item.get("ctx") or {}
    if field == "consent" and "recorded_by" in message:
        return "consent.recorded_by", "err_consent_record", {}
    if field == "consent":
        return "consent.given", "err_consent_required", {}
    if field == "needs" and kind in ("value_error", "too_short"):
        return "needs", "err_needs", {}
    if field == "consent.given":
        return field, "err_consent_choice", {}
    if kind == "missing" or kind == "string_too_short":
        return field, "err_required", {}
    if kind in ("literal_error", "enum"):
        return field, "err_choice", {}
    if kind == "string_too_long":
        return field, "err_too_long", {"max": ctx.get("max_length", "")}
    if kind == "string_pattern_mismatch":
        return field, "err_ref_pattern" if field == "external_ref" else "err_officer_pattern", {}
    if field in ("identified_at", "consent.recorded_at"):
        return field, "err_datetime", {}
    if field == "person.contact_phone":
        return field, "err_phone", {}
    if field == "person.nationality":
        return field, "err_country", {}
    if field == "person.languages":
        return field, "err_language", {}
    return field, "err_invalid", {}


def _form_field(location: str) -> str:
    """A pydantic location (`indicators.2`, `person.languages.0`) -> the form field showing it."""
    parts = location.split(".")
    while parts:
        name = ".".join(parts)
        if name in FORM_FIELDS or name == "consent":
            return name
        parts.pop()
    return "(intake)"


def intake_errors(error: ValidationError, words: Words) -> dict[str, list[str]]:
    """field_errors, mapped onto the form's fields and written in the page's language."""
    out: dict[str, list[str]] = {}
    items = error.errors(include_input=False, include_url=False)
    for item, fe in zip(items, field_errors(error), strict=True):  # one entry per error, in order
        field, key, values = _error_key(_form_field(fe["field"]), dict(item), fe["message"])
        message = words.t(key, **values)
        if message not in out.setdefault(field, []):
            out[field].append(message)
    return out


# The label of each field, for the error summary's links.
FIELD_LABELS = {
    "external_ref": "external_ref",
    "identified_by.agency": "agency",
    "identified_by.officer_id": "officer_id",
    "identified_by.region": "region",
    "identified_at": "identified_at",
    "timezone": "timezone",
    "sector": "sector",
    "indicators": "indicators",
    "person.pseudonym": "pseudonym",
    "person.age_group": "age_group",
    "person.sex": "sex",
    "person.nationality": "nationality",
    "person.languages": "languages",
    "person.contact_phone": "contact_phone",
    "needs": "needs",
    "consent.given": "consent_given",
    "consent.recorded_by": "recorded_by",
    "consent.recorded_at": "recorded_at",
    "urgency": "urgency",
    "notes": "notes",
}


def _rule_errors(values: dict[str, Any], words: Words) -> dict[str, list[str]]:
    """The Intake model's rules (consent required, at least one need) applied to the answers
    they depend on, with valid stand-ins for every other field: no copy of the rules here."""
    given = {"yes": True, "no": False}.get(values["consent.given"])
    if given is None or values["person.age_group"] not in AGE_GROUPS:
        return {}

    def probe(consent: bool) -> dict[str, list[str]]:
        try:
            Intake.model_validate(_probe(values, consent))
        except ValidationError as err:
            return {k: v for k, v in intake_errors(err, words).items() if k in ("needs", "consent.given")}
        return {}

    found = probe(given)
    if "consent.given" in found:
        # The consent rule speaks first; would the intake have its needs once consent is given?
        found.update({k: v for k, v in probe(True).items() if k == "needs"})
    return found


def _probe(values: dict[str, Any], given: bool) -> dict[str, Any]:
    return {
        "external_ref": "probe",
        "identified_by": {"agency": "other", "officer_id": "probe", "region": REGIONS[0]},
        "identified_at": "2000-01-01T00:00:00+00:00",
        "sector": "other",
        "immediate_danger": values["immediate_danger"],
        "person": {"pseudonym": "probe", "age_group": values["person.age_group"]},
        "needs": [n for n in values["needs"] if n in SERVICES],
        "consent": {"given": given, "recorded_by": "probe", "recorded_at": "2000-01-01T00:00:00+00:00"},
    }


def _intake_context(request: Request, session: Session, values: dict[str, Any], errors: dict[str, list[str]], **extra: Any) -> dict[str, Any]:
    def described(name: str, hint: Any) -> str:
        ids = ([f"h-{slug(name)}"] if hint else []) + ([f"e-{slug(name)}"] if errors.get(name) else [])
        return " ".join(ids)

    return dict(
        session=session,
        csrf=session.csrf,
        values=values,
        errors=errors,
        described=described,
        field_labels=FIELD_LABELS,
        agencies=AGENCIES,
        regions=REGIONS,
        sectors=SECTORS,
        indicators=INDICATORS,
        services=SERVICES,
        age_groups=AGE_GROUPS,
        sexes=SEXES,
        urgencies=URGENCIES,
        limits=_LIMITS,
        **extra,
    )


@router.get("/referrals/new")
async def intake_form(request: Request) -> Response:
    session = authenticated_session(request)
    if session is None:
        return to_login(request)
    values = _default_values(settings_of(request))
    return render(request, "intake.html", **_intake_context(request, session, values, {}))


@router.post("/referrals/new")
async def intake_submit(request: Request) -> Response:
    checked = await signed_in_form(request, "intake")
    if isinstance(checked, Response):
        return checked
    session, form = checked
    settings = settings_of(request)
    words = Words(language_of(request), settings)
    values, data, own = read_intake_form(form)
    errors: dict[str, list[str]] = {k: [words.t(m) for m in v] for k, v in own.items()}
    intake: Intake | None = None
    try:
        intake = Intake.model_validate_json(json.dumps(data))
    except ValidationError as err:
        found = intake_errors(err, words)
        if "needs" not in found:
            # The intake's own rules (consent, needs) only run once every field is valid:
            # ask them now, so the coordinator sees every error in one go.
            found.update(_rule_errors(values, words))
        for field, messages in found.items():
            errors.setdefault(field, []).extend(m for m in messages if m not in errors.get(field, []))
    if errors or intake is None:
        order = {name: i for i, name in enumerate(FIELD_LABELS)}
        errors = dict(sorted(errors.items(), key=lambda item: order.get(item[0], len(order))))
        # Field names only: the values may be personal data.
        log.info("web_intake_invalid", fields=sorted(errors))
        return render(request, "intake.html", 422, **_intake_context(request, session, values, errors))
    try:
        started = await referrals.start_referral(client_of(request), intake, settings.referral_task_queue)
    except (RPCError, RuntimeError) as err:
        log.error("web_intake_start_failed", error=type(err).__name__)
        return render(request, "intake.html", 503, **_intake_context(request, session, values, {"(intake)": [words.t("unavailable")]}))
    log.info("web_referral_started", code=started.code, created=started.created, login=session.login)
    flag = "created" if started.created else "existing"
    return RedirectResponse(f"/referrals/{started.code}?{flag}=1", status_code=303)

