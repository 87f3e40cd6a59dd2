"""Histories that do NOT replay today, kept so the day they do is noticed.

`known_issues/update-in-timer-task.json` was written by a worker with Temporal's sticky cache on
(temporalio 1.35.0, CLI 1.9.1 / server 1.32.0), in a fault run. How (seen in the SDK core's
debug log of a later run that wrote the same shape): a worker died while check-in 1's timer
had fired; a fresh worker got a legacy query for the referral, replayed its history and, to
answer, also ran the fired timer (sends and an upsert, held, not yet recorded) and kept the
referral cached; the partner's `ok` update then came in the next workflow task, and that task
recorded the timer's commands (upsert 40, sends 41-42) before the update's acceptance (43,
acceptedRequestSequencingEventId=37). Replaying gives the update and the timer in one
activation, update first, and fails: "Update machine does not handle this event:
HistoryEvent(id: 40, UpsertWorkflowSearchAttributes)". Such a referral can no longer be queried
or continued by any worker. Workers therefore run with the cache off
(WORKER_MAX_CACHED_REFERRALS=0): a query on a cold worker is then answered and forgotten, and
every task is built from the recorded history alone. Encrypted with the tests' key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from tests.conftest import encrypted_converter
from worker import workflow_runner
from workflows.referral import ReferralWorkflow

KNOWN = Path(__file__).parent / "known_issues"


@pytest.mark.xfail(strict=True, raises=NondeterminismError, reason="update accepted in the same task as a fired timer replays out of order (see module doc)")
async def test_update_accepted_in_a_timer_task_replays():
    history = WorkflowHistory.from_json("referral-U9PJ6", (KNOWN / "update-in-timer-task.json").read_text())
    replayer = Replayer(workflows=[ReferralWorkflow], data_converter=encrypted_converter(), workflow_runner=workflow_runner())
    await replayer.replay_workflow(history)
