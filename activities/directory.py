"""The partner directory and escalation policies: files read by activities, never by workflows.

Reading them on each call means an operator's edit (a partner deactivated, a new phone number,
a shorter deadline) applies to the next offer of every open referral without breaking replay.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from activities.opening_hours import OpeningHours, parse_hours
from workflows.intake import REGIONS, SERVICES, normalise_phone
from workflows.models import MAX_EVENTS_PER_RUN, MIN_EVENTS_PER_RUN, Candidate, EscalationPolicy, MatchRequest

MessageLanguage = Literal["fr", "ar", "en"]


# A partner's or coordinator's id: also the pattern the API document declares for partner_id.
CONTACT_ID_PATTERN = r"^[a-z0-9][a-z0-9-]*$"


class ConfigError(Exception):
    """A config file is missing or wrong; the message names the file and the field."""


class Contact(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=CONTACT_ID_PATTERN)
    name: str
    sms: str | None = None
    email: str | None = None
    language: MessageLanguage = "fr"

    @field_validator("sms")
    @classmethod
    def _sms(cls, value: str | None) -> str | None:
        return None if value is None else normalise_phone(value)


class Partner(Contact):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    services: list[str]
    regions: list[str] = Field(default_factory=list, description="regions covered; empty when national")
    national: bool = False
    languages: list[str] = Field(default_factory=list, description="languages spoken with the people they serve")
    accepts_minors: bool = False
    accepts_adults: bool = True
    active: bool = True
    rank: int = 100
    # When offers can be answered (activities/opening_hours.py): `always` unless said otherwise.
    hours: Annotated[OpeningHours, BeforeValidator(parse_hours)] = OpeningHours()
    # A second number and address for when the focal point is away: offers and reminders go to
    # it too when the policy says so (offers_to_backup_sms) or when the main number is refused,
    # and its replies count as the partner's.
    backup_sms: str | None = None
    backup_email: str | None = None

    @field_validator("backup_sms")
    @classmethod
    def _backup_sms(cls, value: str | None) -> str | None:
        return None if value is None else normalise_phone(value)

    @model_validator(mode="after")
    def _known_values(self) -> Partner:
        for service in self.services:
            if service not in SERVICES:
                raise ValueError(f"services: unknown service {service!r}")
        for region in self.regions:
            if region not in REGIONS:
                raise ValueError(f"regions: unknown region {region!r}")
        if not self.national and not self.regions:
            raise ValueError("regions: a partner that is not national needs at least one region")
        if self.backup_sms is not None and self.backup_sms == self.sms:
            raise ValueError("backup_sms: the same number as sms")
        return self

    def numbers(self) -> list[str]:
        """The numbers whose SMS are this partner's: the main one, then the backup."""
        return [n for n in (self.sms, self.backup_sms) if n]


class Directory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    national_focal_point: Contact
    coordinators: dict[str, Contact]
    partners: list[Partner]

    @model_validator(mode="after")
    def _complete(self) -> Directory:
        missing = [r for r in REGIONS if r not in self.coordinators]
        if missing:
            raise ValueError(f"coordinators: no coordinator for {', '.join(missing)}")
        ids = [p.id for p in self.partners]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"partners: duplicate ids {', '.join(dupes)}")
        # A reply is told apart by its number: a backup number may be no other partner's.
        for p in self.partners:
            others = [o.id for o in self.partners if o.id != p.id and p.backup_sms in o.numbers()]
            if p.backup_sms and others:
                raise ValueError(f"partners: the backup_sms of {p.id} is also a number of {', '.join(others)}")
        return self

    def partner(self, partner_id: str) -> Partner | None:
        return next((p for p in self.partners if p.id == partner_id), None)

    def partner_by_sms(self, number: str) -> Partner | None:
        """The partner whose main or backup number this is."""
        return next((p for p in self.partners if p.sms == number), None) or next(
            (p for p in self.partners if p.backup_sms == number), None
        )

    def coordinator(self, region: str) -> Contact:
        return self.coordinators.get(region) or self.national_focal_point

    def match(self, request: MatchRequest) -> list[Candidate]:
        return [Candidate(partner_id=p.id, name=p.name) for p in self.ranked(request)]

    def ranked(self, request: MatchRequest) -> list[Partner]:
        """Active partners offering the service in the region (or nationally) to this age group, best first:
        regional before national, a shared language first, then the directory's rank."""
        eligible = [
            p
            for p in self.partners
            if p.active
            and request.service in p.services
            and (p.national or request.region in p.regions)
            and (p.accepts_minors if request.minor else p.accepts_adults)
        ]
        wanted = set(request.languages)

        def key(p: Partner) -> tuple:
            return (request.region not in p.regions, not wanted.intersection(p.languages), p.rank, p.id)

        return sorted(eligible, key=key)


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None


def _parse_yaml(text: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"not valid YAML ({err.__class__.__name__})") from None


def _read_yaml(path: Path) -> object:
    text = _read_text(path)
    try:
        return _parse_yaml(text)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _config_error(path: Path, err: ValidationError, prefix: tuple[str, ...] = ()) -> ConfigError:
    parts = []
    for e in err.errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in (*prefix, *e["loc"]))
        parts.append(f"{loc or '(top level)'}: {e['msg'].removeprefix('Value error, ')}")
    return ConfigError(f"{path}: " + "; ".join(parts))


# The last directory parsed from each path, with the text it was parsed from. Every call still
# reads the file, so an edit applies to the very next call; only an unchanged text skips the
# YAML parse and validation, which cost milliseconds of CPU per call on the worker's and the web
# app's event loop (every SMS, email and inbound SMS looks the directory up).
_directories: dict[Path, tuple[str, Directory]] = {}


def load_directory(path: Path) -> Directory:
    """The directory in `path` as it is now. The same object is returned while the file's text
    is unchanged: callers must not modify it."""
    text = _read_text(path)
    cached = _directories.get(Path(path))
    if cached is not None and cached[0] == text:
        return cached[1]
    try:
        directory = Directory.model_validate(_parse_yaml(text))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except ValidationError as err:
        raise _config_error(path, err) from None
    _directories[Path(path)] = (text, directory)
    return directory


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> timedelta:
    """`30s`, `30m`, `4h`, `7d`, or a number of seconds; always more than zero."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"not a duration: use a number with s, m, h or d, such as 4h (got {value!r})")
        seconds = float(match[1]) * _UNIT[match[2]]
    if seconds <= 0:
        raise ValueError(f"a duration must be more than zero (got {value!r})")
    return timedelta(seconds=seconds)


def _duration_at(path: Path, where: str, value: object) -> timedelta:
    """parse_duration, with an error that names the file and the field."""
    try:
        return parse_duration(value)
    except ValueError as err:
        raise ConfigError(f"{path}: {where}: {err}") from None


def _number_at(path: Path, where: str, value: object, *, minimum: float, whole: bool = False) -> float:
    """A number (a whole one if `whole`) of at least `minimum`, with an error that names the file
    and the field."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (not whole or float(value).is_integer())
    if not ok or value < minimum:  # type: ignore[operator]
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"{path}: {where}: {kind} of at least {minimum:g} expected (got {value!r})")
    number = float(value)  # type: ignore[arg-type]
    return int(number) if whole else number


# Settings of the whole policy (top level of the file), beside `urgencies` and `follow_ups`.
_POLICY_WIDE = ("follow_up_every", "reflection_period", "reflection_end_notice", "continue_as_new_after_events")
# Settings of an urgency's ladder that are numbers, or true/false, rather than durations.
_LADDER_NUMBERS = {"escalated_alert_backoff": 1.0, "focal_point_after_alerts": 1}
_LADDER_FLAGS = ("offers_to_backup_sms",)


def _flag_at(path: Path, where: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: {where}: true or false expected (got {value!r})")
    return value


class _PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    urgencies: dict[Literal["normal", "urgent", "emergency"], dict[str, object]]
    follow_ups: list[object]
    # Left out, each takes EscalationPolicy's default (config/policy.yaml states them all).
    follow_up_every: object = None
    reflection_period: dict[Literal["adults", "minors"], object] | None = None
    reflection_end_notice: object = None
    continue_as_new_after_events: object = None


def _policy_wide(path: Path, parsed: _PolicyFile) -> dict[str, object]:
    """The policy-wide settings the file states, parsed, by EscalationPolicy field name."""
    values: dict[str, object] = {}
    for key in ("follow_up_every", "reflection_end_notice"):
        if getattr(parsed, key) is not None:
            values[key] = _duration_at(path, key, getattr(parsed, key))
    for group, value in (parsed.reflection_period or {}).items():
        values[f"reflection_period_{group}"] = _duration_at(path, f"reflection_period.{group}", value)
    if parsed.continue_as_new_after_events is not None:
        events = _number_at(path, "continue_as_new_after_events", parsed.continue_as_new_after_events, minimum=MIN_EVENTS_PER_RUN, whole=True)
        if events > MAX_EVENTS_PER_RUN:
            raise ConfigError(f"{path}: continue_as_new_after_events: at most {MAX_EVENTS_PER_RUN}, to keep every run under 2,000 events (got {events:g})")
        values["continue_as_new_after_events"] = int(events)
    return values


def load_policy(path: Path, urgency: str) -> EscalationPolicy:
    data = _read_yaml(path)
    try:
        parsed = _PolicyFile.model_validate(data)
        ladder = parsed.urgencies.get(urgency)  # type: ignore[call-overload]
        if ladder is None:
            raise ConfigError(f"{path}: urgencies.{urgency}: missing")
        follow_ups = [_duration_at(path, f"follow_ups.{i}", v) for i, v in enumerate(parsed.follow_ups)]
        for key in ("urgency", "follow_ups", *_POLICY_WIDE):
            if key in ladder:
                raise ConfigError(f"{path}: urgencies.{urgency}.{key}: not a setting of an urgency's ladder")
        settings: dict[str, object] = {
            k: _number_at(path, f"urgencies.{urgency}.{k}", v, minimum=_LADDER_NUMBERS[k], whole=isinstance(_LADDER_NUMBERS[k], int))
            if k in _LADDER_NUMBERS
            else _flag_at(path, f"urgencies.{urgency}.{k}", v)
            if k in _LADDER_FLAGS
            else _duration_at(path, f"urgencies.{urgency}.{k}", v)
            for k, v in ladder.items()
        }
        wide = _policy_wide(path, parsed)
    except ValidationError as err:
        raise _config_error(path, err) from None
    try:
        policy = EscalationPolicy(urgency=urgency, follow_ups=follow_ups, **settings, **wide)
    except ValidationError as err:
        # A ladder key missing or unknown: name it where it sits in the file
        raise _config_error(path, err, prefix=("urgencies", urgency)) from None
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from None
    if policy.escalated_alert_max < policy.escalated_alert_every:
        raise ConfigError(f"{path}: urgencies.{urgency}.escalated_alert_max: shorter than escalated_alert_every")
    shortest = min(policy.reflection_period_adults, policy.reflection_period_minors)
    if policy.reflection_end_notice >= shortest:
        raise ConfigError(f"{path}: reflection_end_notice: not shorter than the reflection period")
    return policy
