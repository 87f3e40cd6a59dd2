"""A referral's ledger record (ledger.record.LedgerRecord) from what the workflow knows: its
intake and its status. Pure and deterministic: the workflow builds the record it writes with it,
and `referral ledger rebuild` (starter/ledger_rebuild.py) the very same record from the status in
the workflow's memo and the intake in the run's input.

What goes in is chosen field by field, never copied whole: from the intake only codes and counts
(region, sector, indicators, age group, sex, nationality, how many languages); from the status
the assessment, the services, their offers, escalations, alerts, check-ins and outcomes. Never
the pseudonym, phone, notes, a decline's or a closure's free-text reason, an officer or a
coordinator id, nor the external_ref.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from datetime import datetime

from ledger.record import LedgerRecord, OfferRecord, ServiceRecord
from workflows.intake import Intake
from workflows.models import Attempt, ReferralStatus, ServiceStatus, Stage

# A check-in the partner answered (not one gone unanswered: "silence").
ANSWERS = ("ok", "done", "issue")


def ledger_record(intake: Intake, status: ReferralStatus, updated_at: datetime) -> LedgerRecord:
    """The referral's record as of `updated_at` (the workflow's now, or `as_of(status)`).
    Raises pydantic's ValidationError if a value is not a code the ledger keeps."""
    person = intake.person
    return LedgerRecord(
        code=status.code,
        started_at=status.started_at,
        closed_at=status.closed_at,
        closure_reason=status.closed_reason,
        region=intake.region,
        urgency=status.assessment.urgency,
        sector=intake.sector,
        indicators=list(intake.indicators),
        age_group=person.age_group,
        sex=person.sex,
        nationality=person.nationality,
        languages_count=len(person.languages),
        interpreter_needed=status.assessment.interpreter_needed,
        minor=status.assessment.minor,
        updated_at=updated_at,
        services=[service_record(s) for s in status.services],
    )


def service_record(s: ServiceStatus) -> ServiceRecord:
    return ServiceRecord(
        service=s.service,
        stage=s.stage,
        accepted_at=s.accepted_at,
        accepted_by=s.partner_id if s.accepted_at is not None else None,
        assigned_by_coordinator=s.assigned_by_coordinator,
        escalations=s.escalation_level,
        first_escalated_at=s.first_escalated_at,
        last_escalated_at=s.last_escalated_at,
        alerts=s.escalated_alerts,
        coordinator_acted_at=s.coordinator_acted_at,
        checkins_sent=sum(1 for f in s.follow_ups if f.sent_at is not None),
        checkins_answered=sum(1 for f in s.follow_ups if f.answer in ANSWERS),
        outcome=s.outcome,
        completed_at=s.completed_at,
        offers=[offer_record(a) for a in s.attempts],
    )


def offer_record(a: Attempt) -> OfferRecord:
    return OfferRecord(
        partner_id=a.partner_id,
        offered_at=a.offered_at,
        deadline=a.deadline,
        replied_at=a.replied_at,
        outcome=a.outcome,
        decline_code=a.decline_code if a.outcome == "declined" else None,
    )


# --- when to write, and as of when ------------------------------------------------------------

_MILESTONE: dict[Stage, str] = {
    "identification": "open",
    "notification": "open",
    "awaiting_acceptance": "open",
    "follow_up": "accepted",
    "escalated": "escalated",
    "closed": "closed",
}


def milestones(status: ReferralStatus) -> Hashable:
    """What the ledger must follow of an open referral: each service open, accepted (by whom),
    escalated or closed (and how), and whether the referral closed. The workflow writes its record
    again when this changed (not at every offer, reminder or check-in: those reach the ledger
    with the next milestone)."""
    return milestones_of(status.services, status.closed_reason)


def milestones_of(services: Iterable[ServiceStatus], closed_reason: str | None) -> Hashable:
    """`milestones` from the services' statuses and the closure alone: the workflow asks it at
    every pass of its event loop, where building the whole status would cost a model each time."""
    return tuple((s.service, _MILESTONE[s.stage], s.partner_id if s.accepted_at is not None else None, s.outcome) for s in services), closed_reason


def as_of(status: ReferralStatus) -> datetime:
    """The latest moment the status records of what the record holds: what a record rebuilt from
    it is dated. A rebuild then never replaces what the workflow wrote later (dated its now, at or
    after every one of these), gives the same record twice, and a closed referral's record is
    dated its closure, as the workflow's last write is."""
    times = [status.started_at, status.closed_at]
    for s in status.services:
        times += [s.accepted_at, s.completed_at, s.first_escalated_at, s.last_escalated_at, s.coordinator_acted_at, s.last_alert_at]
        for a in s.attempts:
            times += [a.offered_at, a.replied_at]
            if a.reminded:
                times.append(a.remind_at)
            if a.outcome == "timed_out" and a.reason != "unreachable":
                times.append(a.deadline)
        for f in s.follow_ups:
            times += [f.sent_at, f.answered_at]
            if f.answer == "silence":
                times.append(f.answer_by)
    return max(t for t in times if t is not None)
