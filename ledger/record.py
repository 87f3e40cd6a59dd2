"""The ledger's record of one referral: de-identified, pure (no I/O), safe to log.

The code lists a referral's outcome is told in are defined here, once: the workflow, the SMS
grammar, the API, the forms and the reports import them.

What a record never holds, on purpose: the person's pseudonym, phone number or notes, any free
text (a decline's or a closure's reason), officer ids, consent recorders, the external_ref. Every
text field is a code matched by a pattern with no room for a sentence, so personal data cannot
slip in by mistake. Times are aware datetimes, kept in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

# --- the code lists ------------------------------------------------------------------------

# A partner's decline: `D CODE 1` ... `D CODE 9` (the text after the number stays in the
# encrypted history only).
DeclineCode = Literal[1, 2, 3, 4, 9]
DECLINE_CODES: dict[int, str] = {
    1: "no_capacity",  # no place or no staff now
    2: "service_not_offered",  # not a service we offer
    3: "outside_area",  # outside our area
    4: "cannot_take_person",  # cannot take this person (age, sex, language)
    9: "other",
}

# How a service ended: `DONE CODE` from the partner is `delivered`; a coordinator closing a
# service or the referral gives one of these.
ServiceOutcome = Literal["delivered", "person_declined", "lost_contact", "transferred", "not_needed", "other"]
SERVICE_OUTCOMES: tuple[ServiceOutcome, ...] = get_args(ServiceOutcome)

# Why a referral closed (workflows.models.ReferralStatus.closed_reason).
ClosureReason = Literal["completed", "closed", "cancelled", "consent_withdrawn"]
CLOSURE_REASONS: tuple[ClosureReason, ...] = get_args(ClosureReason)

# What became of one offer to one partner (workflows.models.Attempt.outcome); None while open.
OfferOutcome = Literal["accepted", "declined", "timed_out", "withdrawn", "reassigned"]
OFFER_OUTCOMES: tuple[OfferOutcome, ...] = get_args(OfferOutcome)

Urgency = Literal["normal", "urgent", "emergency"]
URGENCIES: tuple[Urgency, ...] = get_args(Urgency)
AgeGroup = Literal["adult", "minor", "unknown"]
AGE_GROUPS: tuple[AgeGroup, ...] = get_args(AgeGroup)
Sex = Literal["female", "male", "other", "unknown"]

# A code (region, sector, indicator, service, stage, partner id): lower-case letters, digits,
# `_` and `-`, never a space, so never a sentence.
CODE_TEXT = r"^[a-z0-9][a-z0-9_-]{0,63}$"
Code = Annotated[str, Field(pattern=CODE_TEXT)]
# The referral code, without its `R-` (starter.sms_commands.CODE_ALPHABET, five characters).
REFERRAL_CODE = r"^[0-9A-Z]{5}$"


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must include a time zone")
    return value.astimezone(UTC)


When = Annotated[datetime, AfterValidator(_utc)]
MaybeWhen = Annotated[datetime | None, AfterValidator(_utc)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OfferRecord(_Record):
    """One offer of one service to one partner."""

    partner_id: Code
    offered_at: When
    deadline: When
    replied_at: MaybeWhen = None
    outcome: OfferOutcome | None = None
    decline_code: DeclineCode | None = Field(default=None, description="DECLINE_CODES; only on a declined offer")

    @model_validator(mode="after")
    def _code_only_on_decline(self) -> OfferRecord:
        if self.decline_code is not None and self.outcome != "declined":
            raise ValueError("decline_code: only a declined offer has one")
        return self


class ServiceRecord(_Record):
    """One service of a referral: its offers, who took it, follow-up and how it ended."""

    service: Code
    stage: Code = Field(description="the service's stage (workflows.models.STAGES)")
    accepted_at: MaybeWhen = None
    accepted_by: Code | None = Field(default=None, description="the partner id that accepted or was assigned")
    assigned_by_coordinator: bool = False
    escalations: int = Field(
        default=0,
        ge=0,
        description=(
            "times the service escalated: an offer timed out, no candidate left, a check-in unanswered"
            " (the coordinator told each time), unanswered alerts sent on to the national focal point"
        ),
    )
    first_escalated_at: MaybeWhen = None
    last_escalated_at: MaybeWhen = None
    alerts: int = Field(default=0, ge=0, description="repeated alerts while escalated")
    coordinator_acted_at: MaybeWhen = Field(default=None, description="when a coordinator acted on the escalation (assign or close)")
    checkins_sent: int = Field(default=0, ge=0)
    checkins_answered: int = Field(default=0, ge=0)
    outcome: ServiceOutcome | None = Field(default=None, description="SERVICE_OUTCOMES; None while the service is open")
    completed_at: MaybeWhen = None
    offers: list[OfferRecord] = Field(default_factory=list)


class LedgerRecord(_Record):
    """One referral, de-identified. `updated_at` orders writes: an older record never replaces a newer one."""

    code: Annotated[str, Field(pattern=REFERRAL_CODE)]
    started_at: When
    closed_at: MaybeWhen = None
    closure_reason: ClosureReason | None = None
    region: Code
    urgency: Urgency
    sector: Code
    indicators: list[Code] = Field(default_factory=list)
    age_group: AgeGroup
    sex: Sex = "unknown"
    nationality: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = Field(default=None, description="ISO 3166-1 alpha-2")
    languages_count: int = Field(default=0, ge=0, le=200)
    interpreter_needed: bool = False
    minor: bool = False
    erased: bool = Field(default=False, description="the person's attributes were erased on request (ledger.store.mark_erased)")
    erased_at: MaybeWhen = None
    updated_at: When
    services: list[ServiceRecord] = Field(default_factory=list)

    @field_validator("indicators")
    @classmethod
    def _indicator_set(cls, value: list[str]) -> list[str]:
        return sorted(set(value))  # a set: stored and read back in this order

    @model_validator(mode="after")
    def _consistent(self) -> LedgerRecord:
        if (self.closed_at is None) != (self.closure_reason is None):
            raise ValueError("closure_reason: given with closed_at, and only then")
        if len({s.service for s in self.services}) != len(self.services):
            raise ValueError("services: each service once")
        if self.erased and self.erased_at is None:
            raise ValueError("erased_at: required when erased")
        return self

    def without_person(self, at: datetime) -> LedgerRecord:
        """The record once the person's attributes are erased: what described the person goes
        (age group, sex, nationality, languages, interpreter); the referral's course stays (dates,
        region, urgency, sector, indicators, services, offers, and `minor`, which decided the
        services and the urgency)."""
        return self.model_copy(
            update={
                "age_group": "unknown",
                "sex": "unknown",
                "nationality": None,
                "languages_count": 0,
                "interpreter_needed": False,
                "erased": True,
                "erased_at": self.erased_at or _utc(at),
            }
        )
