"""Referrals left running for months, on the time-skipping server with the production ladder (the
tests' copy, tests/fixtures/policy.yaml): an emergency left escalated for 90 days, then assigned;
a normal referral followed through its whole reflection period; one followed through a longer
period while continuing as new often. Every run stays under 2,000 events, every alert goes at
its backed-off time and once, the workflow id never changes.

Casablanca-Settat, adult: the shelter ladder is cas-assoc, nat-shelter-amane, nat-shelter-amal.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from pathlib import Path

import yaml
from temporalio.service import RPCError

from activities.directory import load_directory, load_policy
from activities.sms import read_outbox
from starter import referrals
from tests.cases import adult_intake
from tests.conftest import running_worker, wait_for
from tests.fixtures import PARTNERS_FILE, POLICY_FILE
from tests.histories import all_scheduled_sends, referral_runs
from tests.workflows.test_lifecycle_timers import assert_no_personal_data
from workflows import schedules
from workflows.models import CoordinatorAction, PartnerReply
from workflows.referral import ReferralWorkflow

DIRECTORY = load_directory(PARTNERS_FILE)
COORDINATOR = DIRECTORY.coordinator("casablanca-settat")
NATIONAL = DIRECTORY.national_focal_point
MAX_EVENTS = 2000


async def status_of(env, code: str):
    """The status as the memo holds it once the workflow task in flight is done. On the
    time-skipping server a timer that fired during `env.sleep` may still be in its workflow task
    when the sleep returns; the `status` query waits for that task, so the memo read after it is
    current (a describe alone would read the memo of the task before). The query is asked again
    if it was lost: the time-skipping server can drop a query that reached a run just as it
    continued as new ("query deadline exceeded")."""
    handle = env.client.get_workflow_handle(referrals.workflow_id(code))
    for attempt in range(3):
        try:
            queried = await handle.query(ReferralWorkflow.status)
            status = await referrals.get_status(env.client, code)
        except RPCError:
            if attempt == 2:
                raise
            continue
        assert status == queried, "the memo's status is the query's"
        return status
    raise AssertionError("unreachable")


def sms_bodies(settings, number: str | None, code: str) -> list[str]:
    return [m["body"] for m in read_outbox(settings.outbox_dir) if m["to"] == number and code in m["body"]]


async def runs_of(env, code: str):
    runs = await referral_runs(env.client, referrals.workflow_id(code))
    sizes = [len(r.events) for r in runs]
    print(f"R-{code}: {len(runs)} run(s), events per run {sizes}")
    assert max(sizes) <= MAX_EVENTS, sizes
    assert len({r.run_id for r in runs}) == len(runs)
    assert {r.workflow_id for r in runs} == {referrals.workflow_id(code)}
    return runs


async def skip(env, duration: timedelta, step: timedelta = timedelta(days=2)) -> None:
    """Skip time a step at a time: one long sleep outlasts the test server's RPC timeout."""
    while duration > timedelta(0):
        await env.sleep(min(step, duration))
        duration -= step


async def answer_checkins(env, code: str, partner: str, until_number: int) -> None:
    """Answer OK to each check-in as it comes, up to `until_number`. Time is skipped before each
    status read: a query sent right after an update can reach a run as it continues as new, and
    the time-skipping server then loses it (and holds its clock)."""
    number = 1
    while number <= until_number:
        await env.sleep(timedelta(hours=12))
        checkins = (await status_of(env, code)).services[0].follow_ups
        if len(checkins) >= number and checkins[number - 1].sent_at is not None:
            await referrals.partner_reply(env.client, code, PartnerReply(partner_id=partner, action="ok"))
            number += 1


async def test_an_emergency_left_escalated_for_90_days_then_assigned(time_env, make_settings, smtp):
    settings = make_settings()
    policy = load_policy(POLICY_FILE, "emergency")
    async with running_worker(time_env.client, settings) as tq:
        started = await referrals.start_referral(time_env.client, adult_intake(needs=["shelter"], immediate_danger=True), tq)
        code = started.code
        await time_env.sleep(timedelta(hours=3, minutes=5))  # three partners, one hour each
        status = await status_of(time_env, code)
        assert status.urgency == "emergency" and status.stage == "escalated"
        assert status.reflection_ends_at == status.started_at + timedelta(days=30)

        await skip(time_env, timedelta(days=90))
        status = await status_of(time_env, code)
        shelter = status.services[0]
        assert status.stage == "escalated"
        # Three missed deadlines, the empty ladder, and the climb to the national focal point.
        assert shelter.escalation_level == 5
        assert shelter.last_alerted == ["coordinator", "national_focal_point"]
        assert abs(shelter.next_alert_at - (shelter.last_alert_at + policy.escalated_alert_max)) < timedelta(seconds=5)

        sends = await all_scheduled_sends(time_env.client, referrals.workflow_id(code))
        [exhausted] = [s.at for s in sends if s.notice.template == "ladder_exhausted" and s.channel == "sms"]
        alerts = [s for s in sends if s.notice.template in ("escalated_alert", "escalation_to_focal_point") and s.channel == "sms"]
        expected = schedules.alert_times(policy, exhausted, exhausted + timedelta(days=90))
        assert [s.notice.context.alert_count for s in alerts] == list(range(1, len(expected) + 1)), "each alert once, in order"
        for send, at in zip(alerts, expected, strict=True):
            assert abs((send.at - at).total_seconds()) < 5, (send.notice.context.alert_count, send.at, at)
        assert [s.notice.context.alert_count for s in alerts if s.notice.template == "escalation_to_focal_point"] == [3]
        assert len(alerts) == shelter.escalated_alerts == 94
        # Every notice once, numbered without a gap across the runs.
        numbers = [s.notice.number for s in sends if s.channel == "email"]
        assert numbers == sorted(set(numbers)) and numbers[0] == 1
        await wait_for(lambda: len(sms_bodies(settings, COORDINATOR.sms, code)) >= 3 + 1 + 94)
        to_focal_point = sms_bodies(settings, NATIONAL.sms, code)
        assert len([b for b in to_focal_point if "POINT FOCAL NATIONAL" in b]) == 1
        assert len(to_focal_point) >= 94  # an emergency's alerts all reach it
        reflection = [m for m in smtp.to(COORDINATOR.email) if code in m["Subject"] and "réflexion" in m["Subject"]]
        assert len(reflection) == 1
        runs = await runs_of(time_env, code)
        assert len(runs) >= 3
        first_run_start = runs[0].events[0].event_time.ToDatetime(tzinfo=UTC)
        assert abs(status.started_at - first_run_start) < timedelta(seconds=1)  # the referral's start, not the run's
        print(f"alerts: {len(alerts)}, to the focal point by SMS: {len(to_focal_point)}")

        # Day 90: the coordinator assigns a partner; check-ins follow; DONE closes the referral.
        outcome = await referrals.coordinator_action(
            time_env.client, code, CoordinatorAction(action="assign", service="shelter", partner_id="nat-shelter-amal", by="coord-cas")
        )
        assert outcome.stage == "follow_up"
        await answer_checkins(time_env, code, "nat-shelter-amal", 3)
        status = await status_of(time_env, code)
        assigned_at = status.services[0].accepted_at
        # The reflection period ended long ago: the policy's three check-ins after acceptance.
        assert [f.due_at - assigned_at for f in status.services[0].follow_ups] == policy.follow_ups
        assert all(f.answer == "ok" for f in status.services[0].follow_ups)
        await referrals.partner_reply(time_env.client, code, PartnerReply(partner_id="nat-shelter-amal", action="done"))
        handle = time_env.client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code))
        summary = await handle.result()
        assert summary.closed_reason == "completed"
        assert (await status_of(time_env, code)).workflow_id == referrals.workflow_id(code)
        await runs_of(time_env, code)
        assert_no_personal_data(settings, smtp)


async def test_a_normal_referral_is_followed_through_its_reflection_period(time_env, make_settings, smtp):
    settings = make_settings()
    policy = load_policy(POLICY_FILE, "normal")
    async with running_worker(time_env.client, settings) as tq:
        started = await referrals.start_referral(time_env.client, adult_intake(needs=["medical"]), tq)
        code = started.code
        partner = await wait_for(lambda: _offered(time_env, code))
        await referrals.partner_reply(time_env.client, code, PartnerReply(partner_id=partner, action="accept"))
        await answer_checkins(time_env, code, partner, 3)
        status = await status_of(time_env, code)
        ends = status.reflection_ends_at
        assert ends == status.started_at + timedelta(days=30)
        medical = status.services[0]
        assert [f.due_at for f in medical.follow_ups] == schedules.checkin_plan(policy, medical.accepted_at, ends)
        assert medical.follow_ups[-1].due_at >= ends - timedelta(hours=1)  # the last check-in ends the period
        reflection = [m for m in smtp.to(COORDINATOR.email) if code in m["Subject"] and "réflexion" in m["Subject"]]
        assert len(reflection) == 1
        await referrals.partner_reply(time_env.client, code, PartnerReply(partner_id=partner, action="done"))
        summary = await time_env.client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code)).result()
        assert summary.closed_reason == "completed"
        sends = await all_scheduled_sends(time_env.client, referrals.workflow_id(code))
        [notice] = [s for s in sends if s.notice.template == "reflection_ending"]
        assert abs((notice.at - (ends - policy.reflection_end_notice)).total_seconds()) < 5
        await runs_of(time_env, code)


async def _offered(env, code):
    status = await status_of(env, code)
    attempts = status.services[0].attempts
    return attempts[0].partner_id if attempts and status.stage == "awaiting_acceptance" else None


def longer_policy(tmp_path: Path) -> Path:
    """The production ladder with a 90-day reflection period for adults and a run continued as
    new past 60 events."""
    data = yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8"))
    data["reflection_period"]["adults"] = "90d"
    data["continue_as_new_after_events"] = 60
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


async def test_a_longer_reflection_period_brings_periodic_checkins_across_runs(time_env, make_settings, smtp, tmp_path):
    path = longer_policy(tmp_path)
    settings = make_settings(referral_policy_file=path)
    policy = load_policy(path, "normal")
    async with running_worker(time_env.client, settings) as tq:
        started = await referrals.start_referral(time_env.client, adult_intake(needs=["legal"]), tq)
        code = started.code
        partner = await wait_for(lambda: _offered(time_env, code))
        await time_env.sleep(timedelta(hours=13))  # reminded first
        await referrals.partner_reply(time_env.client, code, PartnerReply(partner_id=partner, action="accept"))
        status = await status_of(time_env, code)
        legal = status.services[0]
        plan = schedules.checkin_plan(policy, legal.accepted_at, status.reflection_ends_at)
        # 24 h, 7 d, 30 d, then every 14 days and the period's end (90 days after the start).
        assert len(plan) == 8 and plan[-1] == status.reflection_ends_at
        await answer_checkins(time_env, code, partner, len(plan))
        status = await status_of(time_env, code)
        assert [f.due_at for f in status.services[0].follow_ups] == plan
        assert [f.answer for f in status.services[0].follow_ups] == ["ok"] * len(plan)
        # Nothing was sent twice across the runs: one offer, one reminder, one of each check-in.
        sends = await all_scheduled_sends(time_env.client, referrals.workflow_id(code))
        sms = [(s.notice.template, s.notice.context.checkin_number) for s in sends if s.channel == "sms"]
        assert len(sms) == len(set(sms)), sms
        assert sms.count(("reminder", None)) == 1
        assert len(sms_bodies(settings, DIRECTORY.partner(partner).sms, code)) == len(sms_to(sms, partner_templates=True))
        runs = await runs_of(time_env, code)
        assert len(runs) >= 3
        await referrals.partner_reply(time_env.client, code, PartnerReply(partner_id=partner, action="done"))
        summary = await time_env.client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code)).result()
        assert summary.closed_reason == "completed"


def sms_to(sms: list[tuple[str, int | None]], *, partner_templates: bool) -> list[tuple[str, int | None]]:
    partner = {"offer", "reminder", "checkin", "offer_withdrawn", "assigned", "referral_closed"}
    return [s for s in sms if (s[0] in partner) == partner_templates]
