"""The ledger's record from a referral's intake and status (workflows/ledger_entry.py), over
hand-made statuses: what goes in, what never does, when the workflow writes it again, and the
date a rebuilt record carries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from tests.cases import NOTES, PHONE, PSEUDONYM, adult_intake
from workflows import ledger_entry
from workflows.intake import Assessment, assess
from workflows.models import Attempt, FollowUp, ReferralStatus, ServiceStatus

T0 = datetime(2026, 11, 28, 8, 40, tzinfo=UTC)
REASON = "no beds tonight for Amina K., call +212650123456"


def at(**delta: float) -> datetime:
    return T0 + timedelta(**delta)


def status(services: list[ServiceStatus], assessment: Assessment | None = None, **extra: object) -> ReferralStatus:
    intake = adult_intake()
    values: dict = dict(
        code="7K3Q9", workflow_id="referral-7K3Q9", external_ref=intake.external_ref, stage="follow_up", urgency="normal",
        region=intake.region, started_at=T0, assessment=assessment or assess(intake), age_group="adult",
        languages=["fr"], services=services, escalation_level=0, awaiting_partners=[], reply_due_by=None,
    )  # fmt: skip
    values.update(extra)
    return ReferralStatus(**values)


def shelter_declined_then_assigned() -> ServiceStatus:
    """Declined (code 1, with a reason naming the person), timed out, ladder exhausted, two alerts,
    assigned by the coordinator, one check-in answered and one gone silent, then closed by hand."""
    declined = Attempt(
        partner_id="cas-assoc", offered_at=at(), remind_at=at(hours=12), deadline=at(hours=24),
        outcome="declined", replied_at=at(hours=2), reason=REASON, decline_code=1,
    )  # fmt: skip
    timed_out = Attempt(
        partner_id="nat-shelter-amane", offered_at=at(hours=2), remind_at=at(hours=14), deadline=at(hours=26),
        reminded=True, outcome="timed_out",
    )  # fmt: skip
    return ServiceStatus(
        service="shelter", stage="closed", candidates=["cas-assoc", "nat-shelter-amane"], partner_id="nat-shelter-amal",
        accepted_at=at(hours=40), assigned_by_coordinator=True, attempts=[declined, timed_out], escalation_level=3,
        escalated_alerts=2, last_alert_at=at(hours=34), last_alerted=["coordinator"],
        follow_ups=[
            FollowUp(number=1, partner_id="nat-shelter-amal", due_at=at(hours=64), sent_at=at(hours=64), answer_by=at(hours=88),
                     answer="ok", answered_at=at(hours=70)),
            FollowUp(number=2, partner_id="nat-shelter-amal", due_at=at(days=9), sent_at=at(days=9), answer_by=at(days=10),
                     answer="silence"),
            FollowUp(number=3, partner_id="nat-shelter-amal", due_at=at(days=32)),
        ],
        issues_reported=1, completed_at=at(days=12), first_escalated_at=at(hours=26), last_escalated_at=at(days=10),
        coordinator_acted_at=at(hours=40), outcome="transferred",
    )  # fmt: skip


def medical_accepted() -> ServiceStatus:
    offer = Attempt(partner_id="cas-clinic", offered_at=at(), remind_at=at(hours=12), deadline=at(hours=24), outcome="accepted", replied_at=at(hours=1))
    return ServiceStatus(service="medical", stage="follow_up", candidates=["cas-clinic"], partner_id="cas-clinic", accepted_at=at(hours=1), attempts=[offer])


def test_the_record_takes_the_intakes_codes_and_the_courses_facts():
    intake = adult_intake(indicators=["debt_bondage", "deception", "debt_bondage"])
    s = status([shelter_declined_then_assigned(), medical_accepted()], assessment=assess(intake))
    record = ledger_entry.ledger_record(intake, s, at(days=12))

    assert (record.code, record.started_at, record.updated_at) == ("7K3Q9", T0, at(days=12))
    assert (record.region, record.sector, record.urgency) == ("casablanca-settat", "agriculture", "normal")
    assert record.indicators == ["debt_bondage", "deception"]
    assert (record.age_group, record.sex, record.nationality, record.languages_count) == ("adult", "female", "CI", 1)
    assert (record.interpreter_needed, record.minor) == (False, False)
    assert record.closed_at is None and record.closure_reason is None
    assert [x.service for x in record.services] == ["shelter", "medical"]

    shelter, medical = record.services
    assert (shelter.stage, shelter.accepted_at, shelter.accepted_by, shelter.assigned_by_coordinator) == ("closed", at(hours=40), "nat-shelter-amal", True)
    assert (shelter.escalations, shelter.alerts) == (3, 2)
    assert (shelter.first_escalated_at, shelter.last_escalated_at, shelter.coordinator_acted_at) == (at(hours=26), at(days=10), at(hours=40))
    assert (shelter.checkins_sent, shelter.checkins_answered) == (2, 1)  # the silence is sent, not answered; the third not sent
    assert (shelter.outcome, shelter.completed_at) == ("transferred", at(days=12))
    declined, timed_out = shelter.offers
    assert (declined.partner_id, declined.outcome, declined.decline_code, declined.replied_at) == ("cas-assoc", "declined", 1, at(hours=2))
    assert (declined.offered_at, declined.deadline) == (T0, at(hours=24))
    assert (timed_out.outcome, timed_out.decline_code, timed_out.replied_at) == ("timed_out", None, None)

    assert (medical.stage, medical.accepted_by, medical.assigned_by_coordinator, medical.outcome) == ("follow_up", "cas-clinic", False, None)
    assert medical.offers[0].outcome == "accepted" and medical.escalations == 0 and medical.coordinator_acted_at is None


def test_a_closed_referral_carries_its_closure():
    s = status([shelter_declined_then_assigned()], stage="closed", closed_at=at(days=12), closed_reason="closed")
    record = ledger_entry.ledger_record(adult_intake(), s, at(days=12))
    assert (record.closed_at, record.closure_reason) == (at(days=12), "closed")


def test_a_minor_needing_an_interpreter():
    intake = adult_intake(person={"age_group": "minor", "languages": ["wo", "en"], "sex": "male", "nationality": "sn"}, consent={"given": False})
    record = ledger_entry.ledger_record(intake, status([ServiceStatus(service="child_protection")], assessment=assess(intake)), T0)
    assert (record.age_group, record.minor, record.interpreter_needed, record.urgency) == ("minor", True, True, "urgent")
    assert (record.sex, record.nationality, record.languages_count) == ("male", "SN", 2)
    assert record.services[0].stage == "identification" and record.services[0].offers == []


def test_nothing_that_identifies_the_person_goes_in():
    intake = adult_intake()
    s = status([shelter_declined_then_assigned(), medical_accepted()], stage="closed", closed_at=at(days=12), closed_reason="consent_withdrawn")
    text = ledger_entry.ledger_record(intake, s, at(days=12)).model_dump_json()
    identifying = [
        PSEUDONYM, PHONE, PHONE[4:], NOTES, NOTES[:20], REASON, "Amina",
        intake.external_ref, intake.identified_by.officer_id, str(intake.consent.recorded_by), "referral-7K3Q9",
    ]  # fmt: skip
    assert [x for x in identifying if x in text] == []


def test_a_value_the_ledger_does_not_keep_is_refused_by_name():
    bad = medical_accepted().model_copy(update={"partner_id": "Not A Code"})
    with pytest.raises(ValidationError) as err:
        ledger_entry.ledger_record(adult_intake(), status([bad]), T0)
    assert "accepted_by" in str(err.value)


# --- when the workflow writes it again --------------------------------------------------------


def test_milestones_follow_acceptance_escalation_and_closure_not_every_step():
    offered = ServiceStatus(
        service="medical",
        stage="awaiting_acceptance",
        partner_id="cas-clinic",
        attempts=[medical_accepted().attempts[0].model_copy(update={"outcome": None, "replied_at": None})],
    )
    base = ledger_entry.milestones(status([offered]))

    # An offer reminded, declined and the next one made, a check-in sent: the same milestones.
    reminded = offered.model_copy(update={"attempts": [offered.attempts[0].model_copy(update={"reminded": True})], "stage": "notification"})
    assert ledger_entry.milestones(status([reminded])) == base
    accepted = medical_accepted()
    checkin = accepted.model_copy(update={"follow_ups": [FollowUp(number=1, partner_id="cas-clinic", due_at=at(days=1), sent_at=at(days=1))]})
    assert ledger_entry.milestones(status([checkin])) == ledger_entry.milestones(status([accepted]))

    seen = {base}
    for changed in (
        [accepted],
        [accepted.model_copy(update={"partner_id": "cas-assoc", "assigned_by_coordinator": True})],  # another partner
        [offered.model_copy(update={"stage": "escalated"})],
        [accepted.model_copy(update={"stage": "closed", "outcome": "delivered"})],
        [accepted.model_copy(update={"stage": "closed"})],
    ):
        key = ledger_entry.milestones(status(changed))
        assert key not in seen
        seen.add(key)
    closed = status([accepted.model_copy(update={"stage": "closed"})], stage="closed", closed_at=at(days=2), closed_reason="cancelled")
    assert ledger_entry.milestones(closed) not in seen


# --- the date of a rebuilt record ---------------------------------------------------------------


def test_as_of_is_the_latest_moment_the_status_records():
    assert ledger_entry.as_of(status([ServiceStatus(service="medical")])) == T0
    # An offer awaiting its answer: its deadline is to come, not a moment recorded.
    pending = Attempt(partner_id="cas-clinic", offered_at=at(hours=1), remind_at=at(hours=13), deadline=at(hours=25))
    assert ledger_entry.as_of(status([ServiceStatus(service="medical", stage="awaiting_acceptance", attempts=[pending])])) == at(hours=1)
    # ... once reminded, the reminder; once timed out, the deadline.
    reminded = pending.model_copy(update={"reminded": True})
    assert ledger_entry.as_of(status([ServiceStatus(service="medical", attempts=[reminded])])) == at(hours=13)
    timed_out = reminded.model_copy(update={"outcome": "timed_out"})
    assert ledger_entry.as_of(status([ServiceStatus(service="medical", attempts=[timed_out])])) == at(hours=25)
    # An unreachable partner's offer ends when it is found so, not at its deadline.
    unreachable = pending.model_copy(update={"outcome": "timed_out", "reason": "unreachable"})
    assert ledger_entry.as_of(status([ServiceStatus(service="medical", attempts=[unreachable])])) == at(hours=1)
    # A check-in gone silent: its answer-by time.
    assert ledger_entry.as_of(status([shelter_declined_then_assigned()])) == at(days=12)
    silent = shelter_declined_then_assigned().model_copy(update={"completed_at": None, "stage": "follow_up"})
    assert ledger_entry.as_of(status([silent])) == at(days=10)


def test_a_closed_referral_is_as_of_its_closure():
    s = status([medical_accepted().model_copy(update={"stage": "closed"})], stage="closed", closed_at=at(days=3), closed_reason="closed")
    assert ledger_entry.as_of(s) == at(days=3)
