"""Every timer path of the referral lifecycle, on the time-skipping server with the production
ladder (the tests' copy, tests/fixtures/policy.yaml; the partners of tests/fixtures/partners.yaml).

Casablanca-Settat, adult, French speaker: the shelter ladder is cas-assoc, nat-shelter-amane,
nat-shelter-amal; medical starts with cas-clinic. Normal urgency: reminder at 12 h, deadline
24 h, check-ins at 24 h, 7 d, 30 d, each answerable within 24 h, alerts 4 h after the ladder is
exhausted, then twice as long each time (up to 24 h).
"""

from __future__ import annotations

from datetime import timedelta

from activities.directory import load_directory
from activities.sms import read_outbox
from starter import referrals
from tests.cases import NOTES, PHONE, PSEUDONYM, adult_intake
from tests.conftest import running_worker, wait_for
from tests.fixtures import PARTNERS_FILE
from workflows.models import CoordinatorAction, PartnerReply
from workflows.referral import ReferralWorkflow

DIRECTORY = load_directory(PARTNERS_FILE)
COORDINATOR = DIRECTORY.coordinator("casablanca-settat")
NATIONAL = DIRECTORY.national_focal_point


def sms_to(settings, partner_id: str) -> list[str]:
    contact = DIRECTORY.partner(partner_id) or (COORDINATOR if partner_id == COORDINATOR.id else NATIONAL)
    return [m["body"] for m in read_outbox(settings.outbox_dir) if m["to"] == contact.sms]


def assert_no_personal_data(settings, smtp) -> None:
    texts = [m["body"] for m in read_outbox(settings.outbox_dir)]
    texts += [m.as_string() for m in smtp.messages]
    assert texts, "nothing was sent at all"
    for text in texts:
        for secret in (PSEUDONYM, PHONE, PHONE[4:], NOTES[:20]):
            assert secret not in text


async def status_of(env, code):
    return await referrals.get_status(env.client, code)


async def _first_candidate(env, code: str) -> str | None:
    candidates = (await status_of(env, code)).services[0].candidates
    return candidates[0] if candidates else None


async def finish(env, code: str, action: str = "cancel") -> None:
    """Close the referral and wait for its last messages, so no work outlives the test's worker."""
    await referrals.coordinator_action(env.client, code, CoordinatorAction(action=action))
    await env.client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code)).result()


async def test_reminder_then_escalation_to_next_partner(time_env, make_settings, smtp):
    settings = make_settings()
    async with running_worker(time_env.client, settings) as tq:
        started = await referrals.start_referral(time_env.client, adult_intake(needs=["shelter"]), tq)
        code = started.code
        await wait_for(lambda: sms_to(settings, "cas-assoc"))
        offer = sms_to(settings, "cas-assoc")[0]
        assert f"R-{code}" in offer and f"A {code}" in offer

        await time_env.sleep(timedelta(hours=12, minutes=5))
        status = await status_of(time_env, code)
        assert status.services[0].attempts[0].reminded
        assert status.stage == "awaiting_acceptance"
        await wait_for(lambda: len(sms_to(settings, "cas-assoc")) == 2)

        await time_env.sleep(timedelta(hours=12))
        status = await status_of(time_env, code)
        shelter = status.services[0]
        assert [a.partner_id for a in shelter.attempts] == ["cas-assoc", "nat-shelter-amane"]
        assert shelter.attempts[0].outcome == "timed_out"
        assert shelter.escalation_level == 1 and status.escalation_level == 1
        assert status.awaiting_partners == ["nat-shelter-amane"]
        assert status.reply_due_by == shelter.attempts[1].deadline
        await wait_for(lambda: smtp.to(COORDINATOR.email))
        assert f"R-{code}" in smtp.to(COORDINATOR.email)[0]["Subject"]
        await wait_for(lambda: sms_to(settings, "nat-shelter-amane"))
        assert_no_personal_data(settings, smtp)
        await finish(time_env, code, "cancel")


async def test_exhausted_ladder_escalates_and_alerts_repeat_until_assigned(time_env, make_settings, smtp):
    settings = make_settings()
    async with running_worker(time_env.client, settings) as tq:
        started = await referrals.start_referral(time_env.client, adult_intake(needs=["shelter"]), tq)
        code = started.code
        await time_env.sleep(timedelta(hours=72, minutes=5))
        status = await status_of(time_env, code)
        assert status.stage == "escalated"
        shelter = status.services[0]
        assert [a.outcome for a in shelter.attempts] == ["timed_out"] * 3
        assert shelter.escalation_level == 4  # three missed deadlines, then the empty ladder
        assert status.awaiting_partners == []
        # The coordinator and the national focal point hear of it.
        await wait_for(lambda: any("R-" + code in m["Subject"] for m in smtp.to(NATIONAL.email)))

        # Repeats back off: 4 h after the empty ladder, then 8 h after that.
        await time_env.sleep(timedelta(hours=12, minutes=10))
        status = await status_of(time_env, code)
        assert status.services[0].escalated_alerts == 2
        await wait_for(lambda: len([b for b in sms_to(settings, COORDINATOR.id) if code in b]) >= 3 + 1 + 2)

        outcome = await referrals.coordinator_action(
            time_env.client, code, CoordinatorAction(action="assign", service="shelter", partner_id="nat-shelter-amal", by="coord-cas")
        )
        assert outcome.stage == "follow_up"
        status = await status_of(time_env, code)
        assert status.services[0].assigned_by_coordinator and status.services[0].partner_id == "nat-shelter-amal"
        alerts = status.services[0].escalated_alerts
        await time_env.sleep(timedelta(hours=12))
        assert (await status_of(time_env, code)).services[0].escalated_alerts == alerts
        assert_no_personal_data(settings, smtp)
        await finish(time_env, code, "close")


async def test_follow_up_silence_escalates_to_the_coordinator(time_env, make_settings, smtp):
    settings = make_settings()
    async with running_worker(time_env.client, settings) as tq:
        started = await referrals.start_referral(time_env.client, adult_intake(needs=["shelter"]), tq)
        code = started.code
        await wait_for(lambda: sms_to(settings, "cas-assoc"))
        await referrals.partner_reply(time_env.client, code, PartnerReply(partner_id="cas-assoc", action="accept"))
        await time_env.sleep(timedelta(hours=48, minutes=5))
        status = await status_of(time_env, code)
        shelter = status.services[0]
        assert shelter.stage == "follow_up"
        assert shelter.follow_ups[0].answer == "silence"
        assert shelter.escalation_level == 1
        await wait_for(lambda: any("1" in m["Subject"] and code in m["Subject"] for m in smtp.to(COORDINATOR.email)))

        # The next check-in still goes out at day 7, and is answered.
        await time_env.sleep(timedelta(days=5, hours=1))
        status = await status_of(time_env, code)
        assert status.services[0].follow_ups[1].sent_at is not None
        await referrals.partner_reply(time_env.client, code, PartnerReply(partner_id="cas-assoc", action="ok"))
        status = await status_of(time_env, code)
        assert status.services[0].follow_ups[1].answer == "ok"
        assert status.escalation_level == 1
        await finish(time_env, code, "close")


async def test_two_services_one_escalates_while_the_other_is_accepted(time_env, make_settings, smtp):
    settings = make_settings()
    async with running_worker(time_env.client, settings) as tq:
        started = await referrals.start_referral(time_env.client, adult_intake(needs=["shelter", "medical"]), tq)
        code = started.code
        await wait_for(lambda: sms_to(settings, "cas-clinic"))
        await referrals.partner_reply(time_env.client, code, PartnerReply(partner_id="cas-clinic", action="accept"))
        await time_env.sleep(timedelta(hours=24, minutes=5))
        status = await status_of(time_env, code)
        shelter, medical = status.services
        assert medical.stage == "follow_up" and medical.escalation_level == 0
        assert shelter.stage == "awaiting_acceptance" and shelter.escalation_level == 1
        assert shelter.attempts[-1].partner_id == "nat-shelter-amane"
        # The referral is as far as its least advanced service, and awaits both partners.
        assert status.stage == "awaiting_acceptance"
        assert status.awaiting_partners == sorted(["nat-shelter-amane", "cas-clinic"])
        assert status.escalation_level == 1
        await finish(time_env, code, "cancel")


async def test_full_lifecycle_closes_with_a_summary(time_env, make_settings, smtp):
    settings = make_settings()
    async with running_worker(time_env.client, settings) as tq:
        started = await referrals.start_referral(time_env.client, adult_intake(needs=["legal"]), tq)
        code = started.code
        handle = time_env.client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code))
        partner = (await wait_for(lambda: _first_candidate(time_env, code)))
        await wait_for(lambda: sms_to(settings, partner))
        await referrals.partner_reply(time_env.client, code, PartnerReply(partner_id=partner, action="accept"))
        await time_env.sleep(timedelta(hours=24, minutes=1))
        await referrals.partner_reply(time_env.client, code, PartnerReply(partner_id=partner, action="ok"))
        await referrals.partner_reply(time_env.client, code, PartnerReply(partner_id=partner, action="done"))
        summary = await handle.result()
        assert summary.closed_reason == "completed"
        assert summary.services[0].completed_at is not None
        status = await status_of(time_env, code)
        assert status.stage == "closed" and status.closed_reason == "completed"
        await wait_for(lambda: any("R-" + code in m["Subject"] for m in smtp.to(COORDINATOR.email)))
        assert_no_personal_data(settings, smtp)


async def test_partner_messages_go_in_the_partners_language(time_env, make_settings, smtp):
    """The Oriental region's association reads its messages in Arabic."""
    settings = make_settings()
    async with running_worker(time_env.client, settings) as tq:
        intake = adult_intake(needs=["shelter"], identified_by={"region": "oriental"})
        started = await referrals.start_referral(time_env.client, intake, tq)
        await wait_for(lambda: sms_to(settings, "ori-assoc"))
        body = sms_to(settings, "ori-assoc")[0]
        assert any("\u0600" <= ch <= "\u06ff" for ch in body), body
        await wait_for(lambda: smtp.to(DIRECTORY.partner("ori-assoc").email))
        assert smtp.to(DIRECTORY.partner("ori-assoc").email)[0]["Content-Language"] == "ar"
        await finish(time_env, started.code, "cancel")
