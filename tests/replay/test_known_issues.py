"""Histories that do NOT replay today, kept so the day they do is noticed.

`known_issues/update-in-timer-task.json` comes from the fault suite (dev server SIGKILLed and
restarted, temporalio 1.35.0, CLI 1.9.1 / server 1.32.0). Check-in 1's timer fired in workflow
task 37; while the worker was handling it, the partner's `ok` update arrived and was accepted in
that same task, after the task's commands (upsert 40, sends 41-42, accepted 43 with
acceptedRequestSequencingEventId=37). Replaying delivers the update at the start of task 37, before
the timer's commands, and fails: "Update machine does not handle this event: HistoryEvent(id: 40,
UpsertWorkflowSearchAttributes)". The live referral completed; one in this state that lost its
worker's cache would be stuck (queries and new tasks fail). Encrypted with the tests' key.
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
