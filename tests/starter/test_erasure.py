"""Erasure on request (starter/erasure.py, workflows/erasure.py): on the dev server, an open
referral is closed as a withdrawal of consent, its data key destroyed, its runs deleted, its
ledger row kept de-identified and marked erased, the erasure recorded; another referral goes on."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import select, update
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import GetWorkflowExecutionHistoryRequest

from infra.codec import PayloadDecryptionError
from infra.data_keys import ReferralDataErased, data_keys
from infra.database import engine_for
from infra.temporal import payload_codec
from ledger.erasures import ERASED
from starter import erasure, referrals
from tests.cases import PHONE, PSEUDONYM, adult_intake
from tests.conftest import running_worker, wait_for
from tests.starter.test_cli import cli, cli_env
from tests.workflows.test_ledger_lifecycle import offered, reply


async def history_payloads(client, code: str) -> list:
    """The inputs and results in the referral's current run, as Temporal stores them (encrypted)."""
    request = GetWorkflowExecutionHistoryRequest(
        namespace=client.namespace, execution=WorkflowExecution(workflow_id=referrals.workflow_id(code))
    )
    history = await client.workflow_service.get_workflow_execution_history(request)
    found = []
    for event in history.history.events:
        found += event.workflow_execution_started_event_attributes.input.payloads
        found += event.activity_task_scheduled_event_attributes.input.payloads
        found += event.activity_task_completed_event_attributes.result.payloads
    return found


async def test_erase_closes_destroys_deletes_and_keeps_the_ledger_row_erased(dev_env, make_settings, ledger_db, smtp):
    settings = ledger_db.settings()
    client = dev_env.client
    async with running_worker(client, settings) as tq:
        ref = f"ERASE-ME-{uuid.uuid4().hex[:8]}"  # one per run of the test (the key table is the session's)
        erased = await referrals.start_referral(client, adult_intake(external_ref=ref), tq)
        other = await referrals.start_referral(client, adult_intake(external_ref=f"KEEP-{ref}"), tq)
        partner = await offered(client, erased.code, "shelter")
        other_partner = await offered(client, other.code, "shelter")
        stored = await history_payloads(client, erased.code)
        codec = payload_codec(settings)
        assert codec is not None and codec.data_keys is not None
        decoded = await codec.decode(stored)
        assert any(PSEUDONYM.encode() in p.data for p in decoded)  # the intake, readable before
        smtp.messages.clear()
        backup = key_row(settings, erased.code)

        with pytest.raises(ValidationError, match="reason"):
            await erasure.erase(client, settings, erased.code, by="coord-1", reason="  ", task_queue=tq)
        outcome = await erasure.erase(client, settings, erased.code, by="coord-1", reason="the person asked (DPO ticket 12)", task_queue=tq)
        assert outcome.was_open and not outcome.already
        record = outcome.erasure
        assert (record.code, record.state, record.requested_by, record.ledger_marked) == (erased.code, ERASED, "coord-1", True)
        assert record.runs_deleted and record.runs_deleted >= 1

        # No process can decrypt what Temporal (or a copy of it) still holds of that referral.
        with pytest.raises(PayloadDecryptionError, match="destroyed"):
            await codec.decode(stored)
        # Gone from Temporal: no status, no run listed.
        with pytest.raises(referrals.ReferralNotFound):
            await referrals.get_status(client, erased.code)
        assert await referrals.list_referrals(client, f"WorkflowId = '{referrals.workflow_id(erased.code)}'") == []
        # The ledger keeps the de-identified row, marked erased.
        kept = await asyncio.to_thread(ledger_db.store().get, erased.code)
        assert kept is not None and kept.erased and kept.closure_reason == "consent_withdrawn"
        assert kept.age_group == "unknown" and kept.nationality is None
        # Nothing can be started again under the erased code.
        with pytest.raises(ReferralDataErased):
            await referrals.start_referral(client, adult_intake(external_ref=ref), tq)
        # The CLI's status says it was erased, when and by whom.
        env = cli_env(dev_env, settings, tq)
        env["LEDGER_DATABASE_URL"] = settings.ledger_url
        shown = await cli(env, "status", erased.code)
        assert shown.returncode == 2 and f"R-{erased.code} was erased on " in shown.stderr and "by coord-1" in shown.stderr
        # A partner's late reply is told the referral is closed.
        with pytest.raises(referrals.ReferralRejected) as late:
            await reply(client, erased.code, partner, "accept")
        assert late.value.kind == "referral_closed"
        # Asking again says it is done, and does nothing.
        again = await erasure.erase(client, settings, erased.code, by="coord-2", reason="again", task_queue=tq)
        assert again.already and again.erasure.requested_by == "coord-1"
        # A key-table backup from before the erasure, restored: asking again destroys it again.
        restore_key(settings, backup)
        assert not codec.data_keys.state(erased.code).destroyed
        redone = await erasure.erase(client, settings, erased.code, by="coord-2", reason="after a restore", task_queue=tq)
        assert not redone.already and codec.data_keys.state(erased.code).destroyed

        # The other referral still decodes and goes on.
        await reply(client, other.code, other_partner, "accept")
        status = await wait_for(lambda: _accepted(client, other.code), timeout=30)
        assert status
        assert partner  # the erased referral had been offered: its partner was told of the withdrawal
        told = [m for m in smtp.messages if erased.code in str(m["Subject"]) or erased.code in m.get_content()]
        assert told, "the partners and coordinator hear of the withdrawal"
        for message in told:
            assert PSEUDONYM not in message.as_string() and PHONE not in message.as_string()


def key_row(settings, code: str) -> dict:
    """The referral's row of the key table, as a backup of it would hold it."""
    with engine_for(settings.data_keys_url).connect() as conn:
        return dict(conn.execute(select(data_keys).where(data_keys.c.referral == code)).one()._mapping)


def restore_key(settings, row: dict) -> None:
    with engine_for(settings.data_keys_url).begin() as conn:
        conn.execute(update(data_keys).where(data_keys.c.referral == row["referral"]).values(**row))


async def _accepted(client, code: str) -> bool:
    status = await referrals.get_status(client, code)
    return any(s.stage == "follow_up" for s in status.services)


async def test_erasing_an_unknown_code_starts_nothing(dev_env, make_settings):
    settings = make_settings()
    with pytest.raises(referrals.ReferralNotFound):
        await erasure.erase(dev_env.client, settings, "ZZZZZ", by="coord-1", reason="typo", wait=timedelta(seconds=5))


async def test_a_running_referral_whose_key_is_already_destroyed_is_stopped_and_erased(dev_env, make_settings):
    """As after a Temporal backup restored past an erasure: the runs are back, the key is not."""
    settings = make_settings()
    client = dev_env.client
    async with running_worker(client, settings) as tq:
        started = await referrals.start_referral(client, adult_intake(external_ref=f"RESTORED-{uuid.uuid4().hex[:8]}"), tq)
        await offered(client, started.code, "shelter")
        codec = payload_codec(settings)
        assert codec is not None and codec.data_keys is not None
        codec.data_keys.destroy(started.code)
        outcome = await erasure.erase(client, settings, started.code, by="coord-1", reason="restore drill", task_queue=tq)
        assert outcome.erasure.state == ERASED and not outcome.was_open
        with pytest.raises(referrals.ReferralNotFound):
            await referrals.get_status(client, started.code)
