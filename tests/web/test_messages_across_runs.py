"""Partners' SMS replies and coordinators' actions that reach a referral while it continues as new
are applied once, on the Temporal dev server with a real worker and the real SMS webhook.

A policy forces frequent continue-as-new: a run continues past 30 events, and an adult's
child-protection service (no candidate for adults) stays escalated with an alert every second,
so the referral writes a new run every few seconds for as long as the test lasts. Meanwhile the
shelter partner declines and the next one accepts by SMS, and the coordinator reassigns the
legal service back and forth. Every reply and action must be applied exactly once, whatever run
it lands in, and the runs keep the workflow id, search attributes and UI summary.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from temporalio.api.enums.v1 import EventType, WorkflowTaskFailedCause

from starter import referrals
from tests.conftest import wait_for
from tests.fixtures import POLICY_FILE
from tests.histories import all_scheduled_sends, referral_runs
from tests.web.test_sms_webhook import PUBLIC, TOKEN, TWILIO_NUMBER, harness
from workflows import search_attributes as sa
from workflows.models import CoordinatorAction

ASSIGNS = 8
MAX_ASSIGNS = 60
RUNS_DURING = 7
LEGAL_PARTNERS = ("nat-legal-adala", "nat-legal-barreau")


@pytest.fixture
def settings(make_settings, tmp_path: Path):
    data = yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8"))
    for ladder in data["urgencies"].values():
        ladder.update(reply_within="6h", remind_after="3h", checkin_answer_within="6h")
        ladder.update(escalated_alert_every="1s", escalated_alert_backoff=1, escalated_alert_max="1s", focal_point_after_alerts=100000)
    data["continue_as_new_after_events"] = 30
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(data), encoding="utf-8")
    return make_settings(twilio_auth_token=TOKEN, public_base_url=PUBLIC, twilio_from_number=TWILIO_NUMBER, referral_policy_file=policy)


async def run_count(client, code: str) -> int:
    return len(await referral_runs(client, referrals.workflow_id(code)))


async def test_replies_and_actions_during_continue_as_new_are_applied_once(dev_env, settings):
    async with harness(dev_env, settings) as h:
        code = await h.start(needs=("shelter", "legal", "child_protection"))
        await h.offered(code, "cas-assoc")
        await wait_for(lambda: _at_least_runs(h.client, code, 3), timeout=60)
        handle = h.client.get_workflow_handle(referrals.workflow_id(code))

        # The shelter partner declines by SMS, the next one accepts; the coordinator reassigns legal.
        async def partners() -> None:
            assert "refus enregistré" in await h.reply("cas-assoc", f"D {code} 1")
            second = await wait_for(lambda: _offered_again(h, code))
            text = await h.reply(second, f"A {code}")
            assert "acceptation enregistrée" in text or "accepted" in text.lower(), text

        # At least ASSIGNS actions, and on until the referral has continued RUNS_DURING more
        # times while they came in: a loaded machine writes runs more slowly (MAX_ASSIGNS bounds it).
        assigns = 0
        runs_before = await run_count(h.client, code)

        async def coordinator() -> None:
            nonlocal assigns
            while assigns < ASSIGNS or (assigns < MAX_ASSIGNS and await run_count(h.client, code) < runs_before + RUNS_DURING):
                action = CoordinatorAction(action="assign", service="legal", partner_id=LEGAL_PARTNERS[assigns % 2], by="coord-cas")
                outcome = await referrals.coordinator_action(h.client, code, action)
                assert outcome.code == code
                assigns += 1
                await asyncio.sleep(0.7)

        await asyncio.gather(partners(), coordinator())

        status = await h.status(code)
        shelter, legal, child = (next(s for s in status.services if s.service == name) for name in ("shelter", "legal", "child_protection"))
        assert [a.outcome for a in shelter.attempts] == ["declined", "accepted"]
        assert legal.partner_id == LEGAL_PARTNERS[(assigns - 1) % 2] and legal.assigned_by_coordinator
        assert child.stage == "escalated"

        sends = await all_scheduled_sends(h.client, referrals.workflow_id(code))
        emails = [s.notice for s in sends if s.channel == "email"]
        assigned = [n.recipient_id for n in emails if n.template == "assigned" and n.context.service == "legal"]
        assert assigned == [LEGAL_PARTNERS[i % 2] for i in range(assigns)], "each assignment applied once"
        offers = [n.recipient_id for n in emails if n.template == "offer" and n.context.service == "shelter"]
        assert offers == [p.partner_id for p in shelter.attempts], "one offer per partner, none again"
        numbers = [n.number for n in emails]
        assert len(numbers) == len(set(numbers))

        # Where the replies and actions landed: in the first task of a new run, or refused as
        # the run tried to continue (the server refuses a continue-as-new while an update waits).
        runs = await referral_runs(h.client, referrals.workflow_id(code))
        boundary = 0
        for run in runs:
            for event in run.events:
                failed = event.workflow_task_failed_event_attributes
                unhandled = failed.cause == WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_UNHANDLED_COMMAND
                if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED and unhandled:
                    boundary += 1
            first_task = [e for e in run.events[:12] if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED]
            boundary += bool(first_task) and run is not runs[0]
        sizes = [len(r.events) for r in runs]
        print(f"R-{code}: {len(runs)} runs, events per run max {max(sizes)}, updates at a run boundary {boundary}")
        assert len(runs) >= runs_before + RUNS_DURING and max(sizes) < 2000
        assert boundary >= 1, "no reply or action reached a run as it continued: the test proved nothing"

        # The latest run shows the same search attributes as the first, and its own current
        # details. (Temporal does not carry the static summary over: it stays on the first run.)
        described = await handle.describe()
        attributes = described.typed_search_attributes
        assert attributes.get(sa.REFERRAL_URGENCY) == status.urgency and attributes.get(sa.REFERRAL_STAGE) == "escalated"
        assert attributes.get(sa.REFERRAL_SERVICES) == ["shelter", "legal", "child_protection"]
        assert attributes.get(sa.REFERRAL_REGION) == "casablanca-settat"
        metadata = await handle.query("__temporal_workflow_metadata")
        details = metadata.current_details
        assert details.startswith(f"**R-{code}**") and "| child_protection | escalated |" in details, details


async def _at_least_runs(client, code: str, n: int) -> bool:
    return await run_count(client, code) >= n


async def _offered_again(h, code: str) -> str | None:
    shelter = next(s for s in (await h.status(code)).services if s.service == "shelter")
    if len(shelter.attempts) == 2 and shelter.stage == "awaiting_acceptance":
        return shelter.attempts[1].partner_id
    return None
