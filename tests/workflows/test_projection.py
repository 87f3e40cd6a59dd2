"""workflows/projection.py: the rules both the workflow and the web pages read a referral by.

Pure function tests: no Temporal, no network.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest

from workflows import projection as pj
from workflows.models import STAGE_ORDER, STAGES, Attempt, FollowUp, ServiceStatus, SkippedPartner

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def attempt(partner: str, start: int = 0, **fields: Any) -> Attempt:
    return Attempt(partner_id=partner, offered_at=T0 + start * HOUR, remind_at=T0 + (start + 1) * HOUR, deadline=T0 + (start + 2) * HOUR, **fields)


def service(**fields: Any) -> ServiceStatus:
    return ServiceStatus(**{"service": "shelter", **fields})


def offered(partner: str = "p1") -> ServiceStatus:
    return service(stage="awaiting_acceptance", partner_id=partner, attempts=[attempt(partner)])


def accepted(partner: str = "p1", **fields: Any) -> ServiceStatus:
    done = attempt(partner, outcome="accepted", replied_at=T0 + HOUR)
    return service(**{"stage": "follow_up", "partner_id": partner, "accepted_at": T0 + HOUR, "attempts": [done], **fields})


# --- stages ------------------------------------------------------------------------------------


def test_stages_are_defined_once_with_escalated_outside_the_order() -> None:
    assert set(STAGES) == set(STAGE_ORDER) | {"escalated"}
    assert "escalated" not in STAGE_ORDER and STAGE_ORDER[0] == "identification" and STAGE_ORDER[-1] == "closed"


def test_referral_stage_is_the_least_advanced_service_unless_one_is_escalated() -> None:
    a, b = service(stage="follow_up"), service(service="medical", stage="awaiting_acceptance")
    assert pj.referral_stage([a, b], closed=False) == "awaiting_acceptance"
    assert pj.referral_stage([a, service(service="medical", stage="closed")], closed=False) == "follow_up"
    assert pj.referral_stage([a, service(service="medical", stage="escalated")], closed=False) == "escalated"
    assert pj.referral_stage([service(stage="escalated")], closed=True) == "closed"
    assert pj.referral_stage([], closed=False) == "identification"


def test_escalation_level_awaited_and_engaged() -> None:
    waiting = offered("p1")
    waiting.escalation_level = 2
    checkin = FollowUp(number=1, partner_id="p2", due_at=T0, sent_at=T0, answer_by=T0 + 3 * HOUR)
    serving = accepted("p2", service="medical", follow_ups=[checkin])
    completed = accepted("p3", service="legal", completed_at=T0 + 5 * HOUR)
    services = [waiting, serving, completed]
    assert pj.escalation_level(services) == 2 and pj.escalation_level([]) == 0
    # Awaited: the offer's partner and the check-in's, by the earliest deadline.
    assert pj.awaited(services) == (["p1", "p2"], T0 + 2 * HOUR)
    assert pj.awaited([completed]) == ([], None)
    # Engaged: offered now or serving; not once completed or closed.
    assert pj.engaged_partners(services) == ["p1", "p2"]
    assert pj.engaged_partners([accepted("p4", stage="closed")]) == []


# --- who may see the person's details -----------------------------------------------------------


@pytest.mark.parametrize(
    ("services", "closed", "standing"),
    [
        pytest.param([offered("p1")], False, "offered", id="pending offer"),
        pytest.param([accepted("p1")], False, "held", id="accepted holder"),
        pytest.param(
            [service(stage="awaiting_acceptance", attempts=[attempt("p1", outcome="accepted", replied_at=T0)])],
            False, "held", id="accepted, not yet taken up by the service loop",
        ),
        pytest.param(
            [service(stage="follow_up", partner_id="p1", accepted_at=T0, assigned_by_coordinator=True)],
            False, "held", id="manual assignee",
        ),
        pytest.param(
            [service(stage="awaiting_acceptance", partner_id="p2", attempts=[attempt("p1", outcome="timed_out"), attempt("p2", 2)])],
            False, "passed", id="passed over",
        ),
        pytest.param(
            [service(stage="follow_up", partner_id="p2", accepted_at=T0, assigned_by_coordinator=True, attempts=[attempt("p1", outcome="reassigned")])],
            False, "passed", id="reassigned by the coordinator",
        ),
        pytest.param([accepted("p1", completed_at=T0 + 9 * HOUR)], False, "completed", id="completed"),
        pytest.param([accepted("p1", stage="closed")], False, "passed", id="service closed"),
        pytest.param([accepted("p1")], True, "closed", id="referral closed"),
        pytest.param([offered("p2")], False, "not_offered", id="stranger"),
    ],
)
def test_partner_standing_and_the_person_details_rule(services: list[ServiceStatus], closed: bool, standing: str) -> None:
    assert pj.partner_standing(services, "p1", closed=closed) == standing
    assert pj.may_see_person_details(services, "p1", closed=closed) is (standing == "held")


def test_holding_one_service_is_enough_and_another_partner_sees_nothing() -> None:
    services = [accepted("p1"), offered("p2")]
    assert pj.may_see_person_details(services, "p1", closed=False)
    assert not pj.may_see_person_details(services, "p2", closed=False)
    assert pj.partner_standing(services, "p2", closed=False) == "offered"


# --- the timeline ----------------------------------------------------------------------------------


def test_service_timeline_orders_and_highlights() -> None:
    s = ServiceStatus(
        service="shelter",
        stage="follow_up",
        partner_id="p2",
        accepted_at=T0 + 3 * HOUR,
        escalation_level=1,
        attempts=[
            Attempt(partner_id="p1", offered_at=T0, remind_at=T0 + HOUR, deadline=T0 + 2 * HOUR, reminded=True, outcome="timed_out"),
            Attempt(partner_id="p2", offered_at=T0 + 2 * HOUR, remind_at=T0 + 3 * HOUR, deadline=T0 + 4 * HOUR, outcome="accepted", replied_at=T0 + 3 * HOUR),
        ],
        follow_ups=[
            FollowUp(
                number=1, partner_id="p2", due_at=T0 + 27 * HOUR, sent_at=T0 + 27 * HOUR,
                answer_by=T0 + 51 * HOUR, answer="silence", answered_at=T0 + 51 * HOUR,
            ),
            FollowUp(number=2, partner_id="p2", due_at=T0 + 200 * HOUR),
        ],
    )
    events = pj.service_timeline(s)
    assert [e.kind for e in events] == [
        "offer", "reminder", "timed_out", "offer", "accepted", "checkin_sent", "checkin_silence", "checkin_due",
    ]
    assert [e.kind for e in events if e.highlight] == ["timed_out", "checkin_silence"]
    assert events[-1].future and not any(e.future for e in events[:-1])
    assert events[0].partner_id == "p1" and events[0].deadline == T0 + 2 * HOUR
    assert events[-1].checkin == 2 and events[-2].checkin == 1 and events[-2].deadline == T0 + 51 * HOUR
    assert [e.at for e in events[:3]] == [T0, T0 + HOUR, T0 + 2 * HOUR]
    # The details table's "last event": the latest that has happened, never the awaited one.
    last = pj.latest_event(s)
    assert last is not None and last.kind == "checkin_silence"
    assert pj.describe(last) == "check-in 1: silence"


def test_offers_ended_without_a_time_of_their_own_stay_in_order() -> None:
    # Unreachable: given up right after the offer, before the next partner's offer.
    unreachable = service(
        stage="awaiting_acceptance",
        partner_id="p2",
        attempts=[attempt("p1", outcome="timed_out", reason="unreachable"), attempt("p2", 0)],
    )
    kinds = [(e.kind, e.partner_id) for e in pj.service_timeline(unreachable)]
    assert kinds == [("offer", "p1"), ("timed_out", "p1"), ("offer", "p2"), ("awaiting", "p2")]
    assert pj.service_timeline(unreachable)[1].reason == "unreachable"
    # Reassigned after a reminder: after the reminder, before the coordinator's assignment.
    reassigned = service(
        stage="follow_up",
        partner_id="p2",
        accepted_at=T0 + 90 * timedelta(minutes=1),
        assigned_by_coordinator=True,
        attempts=[attempt("p1", reminded=True, outcome="reassigned")],
    )
    events = pj.service_timeline(reassigned)
    assert [e.kind for e in events] == ["offer", "reminder", "reassigned", "assigned"]
    assert pj.describe(events[-1]) == "assigned to p2"


def test_escalated_service_shows_the_exhausted_ladder_and_the_completed_one_its_end() -> None:
    escalated = service(stage="escalated", escalation_level=2, attempts=[attempt("p1", outcome="declined", replied_at=T0 + HOUR, reason="full")])
    events = pj.service_timeline(escalated)
    assert [e.kind for e in events] == ["offer", "declined", "ladder_exhausted"]
    assert events[1].reason == "full" and events[1].highlight
    assert events[2].at == T0 + HOUR and events[2].highlight
    assert pj.describe(events[2]) == "no candidate left"
    done = accepted("p1", stage="closed", completed_at=T0 + 50 * HOUR, follow_ups=[FollowUp(number=1, partner_id="p1", due_at=T0 + 99 * HOUR)])
    events = pj.service_timeline(done)
    assert events[-1].kind == "completed"  # a closed service awaits nothing
    assert not any(e.future for e in events)


def test_every_timeline_kind_can_be_described() -> None:
    for kind in get_args(pj.TimelineKind):
        text = pj.describe(pj.TimelineEvent(T0, kind, "p1", checkin=1))
        assert text and "_" not in text, kind


def test_details_markdown_has_a_row_per_service_and_nothing_personal() -> None:
    text = pj.details_markdown("12345", "awaiting_acceptance", "high", [offered("p1"), accepted("p2", service="medical")], None)
    assert text.splitlines()[0] == "**R-12345** · stage `awaiting_acceptance` · urgency `high`"
    assert "| shelter | awaiting_acceptance | p1 | 2026-11-28 11:00 UTC | 0 | offered to p1 (09:00 UTC) |" in text
    assert "| medical | follow_up | p2 | - | 0 | p2 accepted (10:00 UTC) |" in text
    assert pj.details_markdown("12345", "closed", "high", [], "completed").endswith("Closed: completed")
    assert pj.summary_line(accepted("p2")) == "shelter: follow_up, p2, 1 offer(s), escalation level 0"
    assert pj.summary_line(offered("p1")) == "shelter: awaiting_acceptance, no partner, 1 offer(s), escalation level 0"


# --- partners skipped by the matching (capacity-2026-12) ---------------------------------------


def skipped_service() -> ServiceStatus:
    skipped = [
        SkippedPartner(partner_id="full-1", reason="full", offered_instead="p1"),
        SkippedPartner(partner_id="closed-1", reason="closed", until=T0 + 8 * HOUR, offered_instead="p1"),
        SkippedPartner(partner_id="full-2", reason="full", until=T0 + 72 * HOUR),
    ]
    timed_out = attempt("p1", outcome="timed_out")
    return service(stage="escalated", attempts=[timed_out], skipped=skipped, escalation_level=2)


def test_the_timeline_shows_who_was_skipped_before_each_offer() -> None:
    events = pj.service_timeline(skipped_service())
    kinds = [(e.kind, e.partner_id) for e in events]
    assert kinds[:3] == [("skipped_full", "full-1"), ("skipped_closed", "closed-1"), ("offer", "p1")]
    # No one after it: shown where the ladder ran out.
    assert kinds[-2:] == [("skipped_full", "full-2"), ("ladder_exhausted", None)]
    assert pj.describe(events[0]) == "full-1 skipped (full)"


def test_the_ui_details_show_who_was_skipped_and_for_whom() -> None:
    text = pj.details_markdown("12345", "escalated", "urgent", [skipped_service()], None)
    assert (
        "- `shelter` skipped: full-1 full, offered to p1 instead; closed-1 closed (opens 2026-11-28 17:00 UTC), offered to p1 instead; "
        "full-2 full until 2026-12-01 09:00 UTC, no one after it"
    ) in text
