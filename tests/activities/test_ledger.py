"""The `record_referral` activity (activities/ledger.py): writes the record the workflow sends
(its compact JSON), safe to repeat, never rolls a referral back, and names what retrying cannot
fix; on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.ledger import LedgerActivities
from tests.cases import adult_intake
from tests.conftest import LedgerDB
from tests.workflows.test_ledger_entry import at, medical_accepted, shelter_declined_then_assigned, status
from workflows.ledger_entry import ledger_record
from workflows.ledger_writes import NON_RETRYABLE, compact


def record(days: float, **status_fields):
    return ledger_record(adult_intake(), status([shelter_declined_then_assigned(), medical_accepted()], **status_fields), at(days=days))


def test_the_compact_json_gives_the_record_back_whole_and_smaller():
    whole = record(12, stage="closed", closed_at=at(days=12), closed_reason="closed")
    sent = compact(whole)
    assert type(whole).model_validate(sent) == whole
    assert len(str(sent)) < len(str(whole.model_dump(mode="json"))) * 0.8
    assert "erased" not in sent and "decline_code" in sent["services"][0]["offers"][0]


async def test_writes_safe_to_repeat_and_never_older_over_newer(ledger_db: LedgerDB):
    activities = LedgerActivities(ledger_db.settings())
    env = ActivityEnvironment()
    newer = record(12, stage="closed", closed_at=at(days=12), closed_reason="closed")
    assert await env.run(activities.record_referral, compact(newer)) is True
    assert await env.run(activities.record_referral, compact(newer)) is True  # again: the same row
    assert ledger_db.store().get(newer.code) == newer
    older = record(2)
    assert await env.run(activities.record_referral, compact(older)) is False
    assert ledger_db.store().get(newer.code) == newer and ledger_db.store().count() == 1


async def test_what_retrying_cannot_fix_is_named_and_not_retried(ledger_db: LedgerDB):
    activities = LedgerActivities(ledger_db.settings())
    env = ActivityEnvironment()
    bad = compact(record(1)) | {"region": "Amina K., +212650123456"}
    with pytest.raises(ApplicationError) as err:
        await env.run(activities.record_referral, bad)
    assert err.value.type == "InvalidLedgerRecord" and err.value.type in NON_RETRYABLE and err.value.non_retryable
    assert "region" in err.value.message and "Amina" not in err.value.message and "+212" not in err.value.message


async def test_a_ledger_without_tables_is_retried_with_what_to_do(make_settings, tmp_path):
    bare = make_settings().model_copy(update={"referral_data_dir": tmp_path / "bare"})  # no ledger file there yet
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(LedgerActivities(bare).record_referral, compact(record(1)))
    assert err.value.type == "LedgerNotReady" and not err.value.non_retryable
    assert "referral ledger upgrade" in err.value.message
