"""What crosses the workflow's boundary: its input, updates, query results and activity I/O.

None of the models below except `ReferralInput` and `PersonDetails` may carry personal data:
they are shown in status output, written in messages, or passed to activities that log.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from ledger.record import DeclineCode, ServiceOutcome
from workflows.intake import Assessment, Intake, Person, Service, Urgency

Stage = Literal[
    "identification", "notification", "awaiting_acceptance", "follow_up", "escalated", "closed"
]
STAGES: tuple[Stage, ...] = get_args(Stage)
# Least advanced first: a referral's stage is the least advanced of its services (unless one is
# escalated: workflows/projection.py).
STAGE_ORDER: tuple[Stage, ...] = tuple(s for s in STAGES if s != "escalated")

PartnerAction = Literal["accept", "decline", "ok", "done", "issue"]
PARTNER_ACTIONS: tuple[PartnerAction, ...] = get_args(PartnerAction)
COORDINATOR_ACTIONS = ("assign", "cancel", "close", "withdraw_consent")

# Bounds of the policy's `continue_as_new_after_events`. A run continues as new at its first safe
# point past the bound, a few events later: the upper bound keeps every run well under 2,000
# events; the lower one above what a new run writes by itself before its first safe point (so a
# referral cannot continue as new in a loop).
MIN_EVENTS_PER_RUN = 30
MAX_EVENTS_PER_RUN = 1500


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReferralInput(_Model):
    """The only model with personal data (in `intake.person` and `intake.notes`).

    `carried` is set when a referral continues as new: its whole state from the run before
    (workflows/continuation.py), which the new run resumes instead of starting over."""

    code: str
    intake: Intake
    # Computed once by the starter, so an edit of workflows/intake.py never changes a running
    # referral. None (referrals started before it was passed): the workflow applies `assess`.
    assessment: Assessment | None = None
    # The code generation that started the referral (workflows/generations.py): the changes it
    # runs from its start without asking workflow.patched. 0: started before generations.
    generation: int = Field(default=0, ge=0)
    carried: CarriedState | None = None  # set only by continue-as-new: the state the run before handed over


# --- configuration read by activities ------------------------------------------------------


class EscalationPolicy(_Model):
    """One urgency's ladder and the policy's referral-wide settings, as loaded when a referral
    starts (activities/directory.py) and kept for its whole life, across runs.

    The settings after `escalated_alert_every` came later: their defaults stand for a policy
    recorded by a referral started before them (and for a policy file that leaves them out);
    config/policy.yaml states them all."""

    urgency: Urgency
    reply_within: timedelta
    remind_after: timedelta
    follow_ups: list[timedelta]
    checkin_answer_within: timedelta
    escalated_alert_every: timedelta  # the first repeat of an escalated service's alert
    escalated_alert_backoff: float = Field(default=2.0, ge=1.0)  # each next repeat waits this many times longer
    escalated_alert_max: timedelta = timedelta(hours=24)  # ... but never longer than this
    focal_point_after_alerts: int = Field(default=3, ge=1)  # unanswered repeats before the focal point is alerted too
    follow_up_every: timedelta = timedelta(days=14)  # after the listed check-ins, until the reflection period ends
    reflection_period_adults: timedelta = timedelta(days=30)
    reflection_period_minors: timedelta = timedelta(days=30)
    reflection_end_notice: timedelta = timedelta(days=5)  # the coordinator is told this long before it ends
    continue_as_new_after_events: int = Field(default=500, ge=MIN_EVENTS_PER_RUN, le=MAX_EVENTS_PER_RUN)
    offers_to_backup_sms: bool = False  # offers and reminders go to a partner's backup number too


class MatchRequest(_Model):
    service: Service
    region: str
    languages: list[str] = Field(default_factory=list)
    minor: bool = False
    # Set by referrals matched with capacity and opening hours (capacity-2026-12): an emergency
    # goes first to partners open now.
    urgency: Urgency | None = None


class OpenWindow(_Model):
    """A time a partner is open, in UTC: its opening hours as the matching activity read them."""

    opens: datetime
    closes: datetime


class Candidate(_Model):
    partner_id: str
    name: str
    # When the partner is open, from the matching's time for a few days (activities/matching.py);
    # None: always (or matched before opening hours were known). An urgent or normal offer made
    # while it is closed counts its reply period from the next opening.
    open_windows: list[OpenWindow] | None = None


SkipReason = Literal["full", "closed"]


class SkippedPartner(_Model):
    """A partner the matching passed over: full for the service (it said FULL), or closed when an
    emergency was matched (offered after the partners open then)."""

    partner_id: str
    reason: SkipReason
    until: datetime | None = Field(default=None, description="full: until then (none: until it says OPEN); closed: when it opens")
    offered_instead: str | None = Field(default=None, description="the candidate offered in its place; none: no candidate after it")


class MatchResult(_Model):
    """The matching activity's answer (capacity-2026-12): the ladder, and who was skipped."""

    candidates: list[Candidate]
    skipped: list[SkippedPartner] = Field(default_factory=list)


# Activities the workflows call by name: their code reads the project's database, which workflow
# code never imports (activities/availability.py).
MATCH_AVAILABLE_PARTNERS = "match_available_partners"
TELL_CAPACITY_CHANGE = "tell_coordinators_of_capacity"
RECORD_CAPACITY_LAPSE = "record_capacity_lapse"


# --- messages ------------------------------------------------------------------------------

NoticeTemplate = Literal[
    # to partners
    "offer", "reminder", "offer_withdrawn", "assigned", "checkin", "referral_closed",
    # to coordinators
    "escalation", "ladder_exhausted", "escalated_alert", "escalation_to_focal_point", "checkin_silence",
    "issue_reported", "channel_problem", "reflection_ending", "summary",
]


class NoticeContext(_Model):
    """Everything a template may say. Nothing here identifies the person."""

    code: str
    urgency: Urgency
    region: str
    service: str | None = None
    services: list[str] = Field(default_factory=list)
    deadline: datetime | None = None
    partner_id: str | None = None
    escalation_level: int = 0
    age_group: str | None = None
    languages: list[str] = Field(default_factory=list)
    interpreter_needed: bool = False
    checkin_number: int | None = None
    alert_count: int | None = None
    closed_reason: str | None = None
    channel: str | None = None
    problem: str | None = None
    summary_lines: list[str] = Field(default_factory=list)


class Notice(_Model):
    """One message to one recipient, resolved and rendered by the activity at send time."""

    recipient: Literal["partner", "coordinator"]
    # A partner id, or a region whose coordinator is meant
    recipient_id: str
    template: NoticeTemplate
    context: NoticeContext
    # The referral's n-th notice, counted across its runs (None: sent before notices were counted)
    number: int | None = None
    backup_sms: bool = False  # also to the partner's backup number (an offer or reminder, when the policy says so)

    def send_key(self, workflow_id: str, channel: str) -> str | None:
        """What the outbox, Twilio and SMTP dedupe this notice's sends on: the same for every
        retry and whatever run of the referral sends it. None for a notice without a number."""
        return None if self.number is None else f"{workflow_id}/notice-{self.number}/{channel}"


class Delivery(_Model):
    channel: Literal["sms", "email"]
    status: Literal["sent", "skipped"]
    detail: str | None = None


# --- updates -------------------------------------------------------------------------------


class PartnerReply(_Model):
    partner_id: str
    # accept | decline | ok | done | issue; checked by the validator, so an unknown action is
    # rejected with a reason rather than failing to decode
    action: str
    reason: str | None = Field(default=None, max_length=1600)
    # A decline's reason code (ledger.record.DECLINE_CODES): `D CODE 1` ... `D CODE 9`
    decline_code: DeclineCode | None = None
    service: str | None = None
    channel: Literal["sms", "cli", "web", "api"] = "cli"


class ReplyOutcome(_Model):
    code: str
    outcome: Literal["accepted", "declined", "noted", "completed", "issue_reported"]
    services: list[str]


class CoordinatorAction(_Model):
    action: str
    service: str | None = None
    partner_id: str | None = None
    reason: str | None = Field(default=None, max_length=1600)
    by: str | None = Field(default=None, max_length=64)
    # How the service (or every open service) ended, when a coordinator closes it (ledger.record.SERVICE_OUTCOMES)
    outcome: ServiceOutcome | None = None


class ActionOutcome(_Model):
    code: str
    action: str
    stage: Stage


# Reasons an update is rejected; the SMS webhook maps each to a reply in the partner's language.
RejectionKind = Literal[
    "unknown_action",  # not a command we know
    "not_offered",  # this partner was never offered this referral
    "reassigned",  # offered once, but passed over since
    "already_applied",  # the same reply again
    "not_applicable",  # e.g. DONE before accepting
    "referral_closed",
    "invalid",  # a required field is missing or wrong
]
REJECTION_TYPES: tuple[RejectionKind, ...] = get_args(RejectionKind)


# --- status --------------------------------------------------------------------------------


class Attempt(_Model):
    partner_id: str
    offered_at: datetime
    remind_at: datetime
    deadline: datetime
    reminded: bool = False
    outcome: Literal["accepted", "declined", "timed_out", "withdrawn", "reassigned"] | None = None
    replied_at: datetime | None = None
    reason: str | None = None
    decline_code: DeclineCode | None = None  # ledger.record.DECLINE_CODES; only on a decline
    # The partner was closed when offered: the reminder and deadline count from this opening.
    opens_at: datetime | None = None


class FollowUp(_Model):
    number: int
    partner_id: str
    due_at: datetime
    sent_at: datetime | None = None
    answer_by: datetime | None = None
    answer: Literal["ok", "done", "issue", "silence"] | None = None
    answered_at: datetime | None = None


AlertedRole = Literal["coordinator", "national_focal_point"]


class ChannelProblem(_Model):
    at: datetime
    partner_id: str
    channel: Literal["sms", "email"]
    problem: str
    message_sid: str | None = None


class ServiceStatus(_Model):
    service: Service
    stage: Stage = "identification"
    candidates: list[str] = Field(default_factory=list)
    partner_id: str | None = Field(default=None, description="partner offered now, or the one who accepted")
    accepted_at: datetime | None = None
    assigned_by_coordinator: bool = False
    attempts: list[Attempt] = Field(default_factory=list)
    escalation_level: int = 0
    escalated_alerts: int = Field(default=0, description="repeats of the alert while escalated")
    last_alert_at: datetime | None = Field(default=None, description="escalated: when the last alert went")
    last_alerted: list[AlertedRole] = Field(default_factory=list, description="escalated: who the last alert reached")
    next_alert_at: datetime | None = Field(default=None, description="escalated: when the next alert goes")
    follow_ups: list[FollowUp] = Field(default_factory=list)
    issues_reported: int = 0
    completed_at: datetime | None = None
    # For the ledger (workflows/ledger_entry.py): when the coordinator was first and last told of
    # an escalation (any rise of escalation_level), and when a coordinator first acted after it
    # (assigned a partner, closed the service or the referral).
    first_escalated_at: datetime | None = None
    last_escalated_at: datetime | None = None
    coordinator_acted_at: datetime | None = None
    outcome: ServiceOutcome | None = Field(default=None, description="how the service ended (ledger.record.SERVICE_OUTCOMES); None while open")
    skipped: list[SkippedPartner] = Field(default_factory=list, description="partners the matching passed over: full, or closed for an emergency")


class ChannelReport(_Model):
    """From the SMS webhook: a message undelivered or failed, or the partner opted out (STOP)."""

    partner_id: str
    channel: Literal["sms", "email"] = "sms"
    problem: str = Field(max_length=64)
    message_sid: str | None = Field(default=None, max_length=64)


class ReferralStatus(_Model):
    code: str
    workflow_id: str
    external_ref: str
    stage: Stage
    urgency: Urgency
    region: str
    started_at: datetime
    assessment: Assessment
    # Not identifying (the offer email carries them too); shown on the partner page's offer
    age_group: str | None = None
    languages: list[str] = Field(default_factory=list, description="the person's languages, ISO 639-1")
    services: list[ServiceStatus]
    escalation_level: int
    awaiting_partners: list[str]
    reply_due_by: datetime | None
    channel_problems: list[ChannelProblem] = Field(default_factory=list)
    reflection_ends_at: datetime | None = Field(
        default=None, description="end of the reflection period, through which follow-up runs (unset for referrals started before it was kept)"
    )
    closed_at: datetime | None = None
    closed_reason: Literal["completed", "closed", "cancelled", "consent_withdrawn"] | None = None


class PersonDetails(_Model):
    """PERSONAL DATA: the intake's person and notes, for the partner that holds a service.

    Returned only by the workflow's `person_details` query, only to the partner details page
    (web/routes/partner_page.py), and only while that partner has accepted or been assigned a
    service of the referral. Never log it, put it in a message, a status or a search attribute.
    """

    person: Person
    notes: str | None = None


class ReferralSummary(_Model):
    """The workflow's result."""

    code: str
    closed_reason: str
    services: list[ServiceStatus]


# --- what a referral carries into its next run ----------------------------------------------


class CarriedService(_Model):
    """One service's state at a safe point: its status and ladder, nothing waiting half done."""

    status: ServiceStatus
    ladder: list[Candidate]
    next_index: int
    checkins_from: int = 0  # where the current partner's check-ins start in status.follow_ups


class CarriedState(_Model):
    """Everything a referral knows, handed to its next run when it continues as new
    (workflows/continuation.py). Nothing here identifies the person (the intake travels beside
    it, in ReferralInput); the policy is the one loaded at the referral's start, never re-read."""

    run: int = Field(ge=2, description="the number of the run it starts, 2 for the first continuation")
    started_at: datetime  # the referral's start, in its first run
    assessment: Assessment
    policy: EscalationPolicy
    services: list[CarriedService]
    channel_problems: list[ChannelProblem] = Field(default_factory=list)
    notices_sent: int = 0
    reflection_ends_at: datetime | None = None
    reflection_notice_done: bool = False


# --- partners' capacity ---------------------------------------------------------------------


class CapacityNotice(_Model):
    """One change of a partner's capacity (FULL / OPEN by SMS or on its page), as the
    coordinators' notice workflow takes it (workflows/capacity_notice.py). Codes and times only."""

    change_id: int
    partner_id: str
    state: Literal["full", "open"]
    scope: Service | None = Field(default=None, description="the service the change named; none: all the partner's services")
    flipped: list[Service] = Field(default_factory=list, description="services that went full, or reopened, with this change")
    at: datetime
    until: datetime | None = None
    channel: str


ReferralInput.model_rebuild()
