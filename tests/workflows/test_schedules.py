"""workflows/schedules.py: when an escalated service's alerts go and when they climb, when a
service's check-ins fall through the reflection period. Pure functions, no server."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from activities.directory import load_policy
from tests.fixtures import POLICY_FILE
from workflows import projection, schedules
from workflows.models import EscalationPolicy

H = timedelta(hours=1)
D = timedelta(days=1)
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def policy(**changes: object) -> EscalationPolicy:
    return load_policy(POLICY_FILE, "emergency").model_copy(update=changes)


def test_alerts_back_off_from_the_first_interval_to_the_cap():
    p = policy()  # 30 min, twice as long each time, at most 24 h
    assert [schedules.alert_delay(p, n) for n in range(9)] == [
        H / 2, H, 2 * H, 4 * H, 8 * H, 16 * H, 24 * H, 24 * H, 24 * H,
    ]  # fmt: skip


def test_the_production_ladder_of_each_urgency_backs_off_to_a_day():
    for urgency in ("emergency", "urgent", "normal"):
        p = load_policy(POLICY_FILE, urgency)
        assert schedules.alert_delay(p, 0) == p.escalated_alert_every
        assert schedules.alert_delay(p, 50) == p.escalated_alert_max == 24 * H


def test_alerts_without_backoff_repeat_at_the_same_interval():
    p = policy(escalated_alert_backoff=1.0)
    assert {schedules.alert_delay(p, n) for n in range(100)} == {H / 2}


def test_years_of_alerts_stay_at_the_cap():
    assert schedules.alert_delay(policy(), 5000) == 24 * H


def test_alert_times_over_90_days():
    times = schedules.alert_times(policy(), T0, T0 + 90 * D)
    # 30 min, then 1 h, 2 h, 4 h, 8 h, 16 h later (31.5 h in all), then once a day.
    assert times[:6] == [T0 + d for d in (0.5 * H, 1.5 * H, 3.5 * H, 7.5 * H, 15.5 * H, 31.5 * H)]
    assert all(b - a == 24 * H for a, b in itertools.pairwise(times[5:]))
    assert len(times) == 6 + 88 == 94
    assert times[-1] <= T0 + 90 * D < times[-1] + 24 * H


def test_the_alert_after_the_unanswered_ones_climbs_once():
    p = policy(focal_point_after_alerts=3)
    assert [n for n in range(1, 50) if schedules.alert_climbs(p, n)] == [4]


def test_who_an_alert_reaches():
    # A normal referral's first alerts reach the coordinator only; the climb reaches the focal point.
    assert projection.alerted("escalated_alert", "normal", 1) == ["coordinator"]
    assert projection.alerted("ladder_exhausted", "normal", 1) == ["coordinator", "national_focal_point"]
    assert projection.alerted("escalation_to_focal_point", "normal", 2) == ["coordinator", "national_focal_point"]
    # From level 2 on, and for every emergency, each alert does too.
    assert projection.alerted("escalated_alert", "normal", 2) == ["coordinator", "national_focal_point"]
    assert projection.alerted("escalated_alert", "emergency", 1) == ["coordinator", "national_focal_point"]


# --- follow-up through the reflection period ---------------------------------------------------


def test_reflection_period_by_age_group():
    p = policy(reflection_period_adults=30 * D, reflection_period_minors=90 * D)
    assert schedules.reflection_ends(p, T0, minor=False) == T0 + 30 * D
    assert schedules.reflection_ends(p, T0, minor=True) == T0 + 90 * D


def test_a_30_day_period_keeps_the_three_checkins():
    """Accepted two hours after the start: 24 h, 7 d and 30 d after acceptance, the last already
    past the period's end; nothing added."""
    p = policy()
    accepted = T0 + 2 * H
    ends = schedules.reflection_ends(p, T0, minor=False)
    assert schedules.checkin_plan(p, accepted, ends) == [accepted + D, accepted + 7 * D, accepted + 30 * D]


def test_a_longer_period_adds_periodic_checkins_and_one_at_its_end():
    p = policy(follow_up_every=14 * D)
    accepted = T0 + 2 * H
    ends = T0 + 90 * D
    plan = schedules.checkin_plan(p, accepted, ends)
    listed = [accepted + D, accepted + 7 * D, accepted + 30 * D]
    periodic = [accepted + 30 * D + k * 14 * D for k in (1, 2, 3, 4)]
    assert plan == [*listed, *periodic, ends]
    assert plan == sorted(plan) and all(t <= ends for t in plan[3:])


def test_checkins_after_a_late_acceptance_are_the_listed_ones():
    """Assigned on day 90 of a 30-day period: the policy's check-ins still follow."""
    p = policy()
    accepted = T0 + 90 * D
    assert schedules.checkin_plan(p, accepted, T0 + 30 * D) == [accepted + o for o in p.follow_ups]


def test_without_a_reflection_period_only_the_listed_checkins():
    p = policy()
    assert schedules.checkin_plan(p, T0, None) == [T0 + o for o in p.follow_ups]


@pytest.mark.parametrize("every", [D, 7 * D, 14 * D])
def test_periodic_checkins_never_pass_the_end(every: timedelta):
    p = policy(follow_ups=[D], follow_up_every=every)
    ends = T0 + 60 * D
    plan = schedules.checkin_plan(p, T0, ends)
    assert plan[-1] == ends and len(plan) == len(set(plan))
    assert all(b - a <= every for a, b in itertools.pairwise(plan))


def test_the_coordinator_is_told_before_the_end():
    p = policy(reflection_end_notice=5 * D)
    assert schedules.reflection_notice_at(p, T0 + 30 * D) == T0 + 25 * D
