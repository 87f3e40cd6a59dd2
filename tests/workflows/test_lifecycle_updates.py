"""Partner replies and coordinator actions (Temporal updates) on the dev server."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType

from activities.directory import load_directory
from activities.sms import read_outbox
from starter import referrals
from tests.cases import NOTES, PHONE, PSEUDONYM, adult_intake, uniform_policy
from tests.conftest import running_worker, wait_for
from tests.fixtures import PARTNERS_FILE
from workflows.models import CoordinatorAction, PartnerReply
from workflows.referral import ReferralWorkflow

DIRECTORY = load_directory(PARTNERS_FILE)
COORDINATOR = DIRECTORY.coordinator("casablanca-settat")

FAST_POLICY = uniform_policy("2s", "1s", "30s", "2s", "1h")


def sms_bodies(settings, partner_id: str) -> list[str]:
    number = DIRECTORY.partner(partner_id).sms
    return [m["body"] for m in read_outbox(settings.outbox_dir) if m["to"] == number]


async def offered(client, code: str, service: str = "shelter") -> str:
    async def current():
        status = await referrals.get_status(client, code)
        svc = next(s for s in status.services if s.service == service)
        return svc.partner_id if svc.stage == "awaiting_acceptance" else None

    return await wait_for(current)


async def update_events(client, code: str) -> list[int]:
    history = await client.get_workflow_handle(referrals.workflow_id(code)).fetch_history()
    wanted = {
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_REJECTED,
    }
    return [e.event_type for e in history.events if e.event_type in wanted]


async def close(client, code: str) -> None:
    await referrals.coordinator_action(client, code, CoordinatorAction(action="cancel"))
    await client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code)).result()


async def test_accept_moves_the_service_to_follow_up_and_is_visible(dev_env, make_settings):
    client = dev_env.client
    settings = make_settings()
    async with running_worker(client, settings) as tq:
        started = await referrals.start_referral(client, adult_intake(needs=["shelter"]), tq)
        partner = await offered(client, started.code)
        outcome = await referrals.partner_reply(client, started.code, PartnerReply(partner_id=partner, action="accept"))
        assert outcome.outcome == "accepted" and outcome.services == ["shelter"]
        status = await referrals.get_status(client, started.code)
        assert status.stage == "follow_up"
        assert status.services[0].accepted_at is not None
        assert status.awaiting_partners == []

        rows = await wait_for(lambda: _listed(client, started.code, "follow_up"))
        assert rows[0].urgency == "normal" and rows[0].region == "casablanca-settat"
        await close(client, started.code)


async def _listed(client, code: str, stage: str):
    rows = await referrals.list_referrals(client, referrals.list_query(stage=stage))
    return [r for r in rows if r.code == code]


async def test_decline_offers_the_next_partner_at_once(dev_env, make_settings):
    client = dev_env.client
    settings = make_settings()
    async with running_worker(client, settings) as tq:
        started = await referrals.start_referral(client, adult_intake(needs=["shelter"]), tq)
        first = await offered(client, started.code)
        await referrals.partner_reply(client, started.code, PartnerReply(partner_id=first, action="decline", reason="no beds"))
        second = await wait_for(lambda: _second_offer(client, started.code))
        assert second != first
        status = await referrals.get_status(client, started.code)
        attempts = status.services[0].attempts
        assert attempts[0].outcome == "declined" and attempts[0].reason == "no beds"
        assert status.escalation_level == 0  # a decline is not an escalation
        await wait_for(lambda: sms_bodies(settings, second))
        await close(client, started.code)


async def _second_offer(client, code):
    status = await referrals.get_status(client, code)
    attempts = status.services[0].attempts
    return attempts[1].partner_id if len(attempts) > 1 else None


async def test_late_reply_and_stranger_are_rejected_without_trace(dev_env, make_settings):
    client = dev_env.client
    settings = make_settings()
    async with running_worker(client, settings) as tq:
        started = await referrals.start_referral(client, adult_intake(needs=["shelter"]), tq)
        first = await offered(client, started.code)
        await referrals.partner_reply(client, started.code, PartnerReply(partner_id=first, action="decline"))
        await wait_for(lambda: _second_offer(client, started.code))
        before = await update_events(client, started.code)

        with pytest.raises(referrals.ReferralRejected) as late:
            await referrals.partner_reply(client, started.code, PartnerReply(partner_id=first, action="accept"))
        assert late.value.kind == "reassigned"
        assert f"R-{started.code} was reassigned" in str(late.value)

        with pytest.raises(referrals.ReferralRejected) as stranger:
            await referrals.partner_reply(client, started.code, PartnerReply(partner_id="sou-assoc", action="accept"))
        assert stranger.value.kind == "not_offered"

        with pytest.raises(referrals.ReferralRejected) as unknown:
            await referrals.partner_reply(client, started.code, PartnerReply(partner_id=first, action="maybe"))
        assert unknown.value.kind == "unknown_action"

        with pytest.raises(referrals.ReferralRejected) as early:
            second = await _second_offer(client, started.code)
            await referrals.partner_reply(client, started.code, PartnerReply(partner_id=second, action="done"))
        assert early.value.kind == "not_applicable"

        assert await update_events(client, started.code) == before
        await close(client, started.code)


async def test_duplicate_reply_is_idempotent(dev_env, make_settings):
    client = dev_env.client
    settings = make_settings()
    async with running_worker(client, settings) as tq:
        started = await referrals.start_referral(client, adult_intake(needs=["shelter"]), tq)
        partner = await offered(client, started.code)
        reply = PartnerReply(partner_id=partner, action="accept", channel="sms")
        first = await referrals.partner_reply(client, started.code, reply, update_id="sms-SM0001")
        # The same SMS delivered again: same update id, same answer, applied once.
        again = await referrals.partner_reply(client, started.code, reply, update_id="sms-SM0001")
        assert again == first
        # The same reply sent again as a new SMS: refused as already applied, no change.
        with pytest.raises(referrals.ReferralRejected) as dup:
            await referrals.partner_reply(client, started.code, reply, update_id="sms-SM0002")
        assert dup.value.kind == "already_applied"
        status = await referrals.get_status(client, started.code)
        assert [a.outcome for a in status.services[0].attempts] == ["accepted"]
        assert len(await update_events(client, started.code)) == 1
        await close(client, started.code)


async def test_withdraw_consent_stops_everything_and_tells_the_partners(dev_env, make_settings, smtp):
    client = dev_env.client
    settings = make_settings()
    async with running_worker(client, settings) as tq:
        started = await referrals.start_referral(client, adult_intake(needs=["shelter", "medical"]), tq)
        shelter = await offered(client, started.code, "shelter")
        medical = await offered(client, started.code, "medical")
        await referrals.partner_reply(client, started.code, PartnerReply(partner_id=medical, action="accept"))

        outcome = await referrals.coordinator_action(
            client, started.code, CoordinatorAction(action="withdraw_consent", by="coord-cas")
        )
        assert outcome.stage == "closed"
        summary = await client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(started.code)).result()
        assert summary.closed_reason == "consent_withdrawn"
        status = await referrals.get_status(client, started.code)
        assert status.closed_reason == "consent_withdrawn"
        assert status.services[0].attempts[-1].outcome == "withdrawn"
        # Both the partner offered and the partner serving are told, by SMS.
        for partner in (shelter, medical):
            assert any(f"R-{started.code}" in b for b in sms_bodies(settings, partner)[1:])
        assert any(f"R-{started.code}" in m["Subject"] for m in smtp.to(COORDINATOR.email))
        everything = [m["body"] for m in read_outbox(settings.outbox_dir)] + [m.as_string() for m in smtp.messages]
        for text in everything:
            assert PSEUDONYM not in text and PHONE not in text and NOTES[:20] not in text

        with pytest.raises(referrals.ReferralRejected) as after:
            await referrals.partner_reply(client, started.code, PartnerReply(partner_id=shelter, action="accept"))
        assert after.value.kind == "referral_closed"


async def test_manual_assign_after_the_ladder_is_exhausted(dev_env, make_settings, tmp_path: Path):
    client = dev_env.client
    policy = tmp_path / "policy.fast.yaml"
    policy.write_text(FAST_POLICY)
    settings = make_settings(referral_policy_file=policy)
    async with running_worker(client, settings) as tq:
        started = await referrals.start_referral(client, adult_intake(needs=["legal"]), tq)
        code = started.code

        async def escalated_with_alerts():
            status = await referrals.get_status(client, code)
            return status if status.stage == "escalated" and status.services[0].escalated_alerts >= 1 else None

        status = await wait_for(escalated_with_alerts, timeout=40)
        assert all(a.outcome == "timed_out" for a in status.services[0].attempts)
        rows = await wait_for(lambda: _listed(client, code, "escalated"))
        assert rows[0].escalation_level >= 1

        with pytest.raises(referrals.ReferralRejected) as bad:
            await referrals.coordinator_action(client, code, CoordinatorAction(action="assign", service="shelter", partner_id="cas-assoc"))
        assert bad.value.kind == "invalid"
        with pytest.raises(referrals.ReferralRejected) as unknown:
            await referrals.coordinator_action(client, code, CoordinatorAction(action="escalate-harder"))
        assert unknown.value.kind == "unknown_action"

        outcome = await referrals.coordinator_action(
            client, code, CoordinatorAction(action="assign", service="legal", partner_id="nat-legal-barreau", by="coord-cas")
        )
        assert outcome.stage == "follow_up"
        status = await referrals.get_status(client, code)
        assert status.services[0].partner_id == "nat-legal-barreau"
        assert status.services[0].assigned_by_coordinator
        await wait_for(lambda: any(f"R-{code}" in b for b in sms_bodies(settings, "nat-legal-barreau")[-1:]))
        # The assigned partner can now answer check-ins; nobody else can.
        with pytest.raises(referrals.ReferralRejected):
            await referrals.partner_reply(client, code, PartnerReply(partner_id="nat-legal-adala", action="done"))
        await referrals.partner_reply(client, code, PartnerReply(partner_id="nat-legal-barreau", action="done"))
        summary = await client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code)).result()
        assert summary.closed_reason == "completed"


async def test_same_external_ref_gives_one_referral_and_ids_hold_no_personal_data(dev_env, make_settings):
    client = dev_env.client
    settings = make_settings()
    async with running_worker(client, settings) as tq:
        intake = adult_intake(needs=["medical"])
        first = await referrals.start_referral(client, intake, tq)
        second = await referrals.start_referral(client, intake, tq)
        assert first.created and not second.created
        assert (first.code, first.workflow_id) == (second.code, second.workflow_id)
        assert len(first.code) == 5 and all(c in referrals.CODE_ALPHABET for c in first.code)

        described = await client.get_workflow_handle(first.workflow_id).describe()
        visible = repr(described.typed_search_attributes) + repr(await described.memo()) + first.workflow_id
        for secret in (PSEUDONYM, PHONE, PHONE[4:], NOTES[:20], intake.external_ref):
            assert secret not in visible
        await close(client, first.code)


async def test_decline_codes_and_outcomes_end_up_in_the_status(dev_env, make_settings):
    """A decline with its reason code, a service delivered (DONE), one closed by the coordinator
    with an outcome, and the update rules refusing a misplaced code: all in `get_status`."""
    client = dev_env.client
    settings = make_settings()
    async with running_worker(client, settings) as tq:
        started = await referrals.start_referral(client, adult_intake(needs=["shelter", "medical", "legal"]), tq)
        code = started.code
        first = await offered(client, code, "shelter")
        before = await update_events(client, code)
        with pytest.raises(referrals.ReferralRejected) as misplaced:
            await referrals.partner_reply(client, code, PartnerReply(partner_id=first, action="accept", decline_code=1))
        assert misplaced.value.kind == "invalid" and "decline_code" in str(misplaced.value)
        with pytest.raises(referrals.ReferralRejected) as assign_outcome:
            await referrals.coordinator_action(
                client, code, CoordinatorAction(action="assign", service="legal", partner_id="nat-legal-barreau", outcome="delivered")
            )
        assert assign_outcome.value.kind == "invalid" and "outcome" in str(assign_outcome.value)
        assert await update_events(client, code) == before  # refused by the validator: no trace

        await referrals.partner_reply(client, code, PartnerReply(partner_id=first, action="decline", decline_code=1, reason="no beds"))
        second = await wait_for(lambda: _second_offer(client, code))
        await referrals.partner_reply(client, code, PartnerReply(partner_id=second, action="accept"))
        await referrals.partner_reply(client, code, PartnerReply(partner_id=second, action="done"))
        await referrals.coordinator_action(client, code, CoordinatorAction(action="close", service="medical", outcome="lost_contact"))
        await referrals.coordinator_action(client, code, CoordinatorAction(action="close", outcome="transferred", by="coord-cas"))
        await client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code)).result()

        status = await referrals.get_status(client, code)
        by_service = {s.service: s for s in status.services}
        declined = by_service["shelter"].attempts[0]
        assert (declined.partner_id, declined.outcome, declined.decline_code, declined.reason) == (first, "declined", 1, "no beds")
        assert by_service["shelter"].attempts[1].decline_code is None  # accepted: no code
        assert {name: s.outcome for name, s in by_service.items()} == {
            "shelter": "delivered",  # DONE
            "medical": "lost_contact",  # closed by hand, first
            "legal": "transferred",  # still open when the whole referral closed
        }
        assert status.closed_reason == "closed"
