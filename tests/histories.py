"""A referral's runs as Temporal recorded them: every run of a workflow id (a referral continues as
new when its history grows long), and the notices each run scheduled. For tests that count
events per run, alerts at their times, or messages sent once across runs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory

from workflows.models import Notice

SEND_ACTIVITIES = ("send_sms", "send_email")


async def referral_runs(client: Client, workflow_id: str) -> list[WorkflowHistory]:
    """Every run of the workflow, oldest first: from the current run back through each run's
    `continued_execution_run_id`."""
    runs: list[WorkflowHistory] = []
    run_id: str | None = None
    while True:
        history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        runs.append(history)
        run_id = history.events[0].workflow_execution_started_event_attributes.continued_execution_run_id or None
        if run_id is None:
            return runs[::-1]


@dataclass(frozen=True)
class ScheduledSend:
    run_id: str
    at: datetime  # when the run scheduled it (the server's clock, skipped time included)
    event_id: int
    activity_id: str
    channel: str  # sms | email
    notice: Notice


async def scheduled_sends(client: Client, history: WorkflowHistory) -> list[ScheduledSend]:
    """Every SMS and email send one run scheduled, in order."""
    run_id = history.run_id
    sends = []
    for event in history.events:
        if event.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            continue
        attrs = event.activity_task_scheduled_event_attributes
        if attrs.activity_type.name not in SEND_ACTIVITIES:
            continue
        [notice] = await client.data_converter.decode(list(attrs.input.payloads), [Notice])
        channel = "sms" if attrs.activity_type.name == "send_sms" else "email"
        sends.append(ScheduledSend(run_id, event.event_time.ToDatetime(tzinfo=UTC), event.event_id, attrs.activity_id, channel, notice))
    return sends


async def all_scheduled_sends(client: Client, workflow_id: str) -> list[ScheduledSend]:
    sends = []
    for history in await referral_runs(client, workflow_id):
        sends += await scheduled_sends(client, history)
    return sends
