"""`referral export-person CODE`: what the system holds about one person, as JSON, for the data
protection officer to hand over (Law 09-08, right of access).

What is exported (format `referral-orchestrator/person-export/v1`):
- `intake`: the intake as submitted (the first run's input: the person's pseudonym, phone and
  notes included: it is the person's own data), and the `assessment` applied to it;
- `status`: the referral's status now, when it still exists in Temporal;
- `messages`: every SMS and email the referral scheduled (in every run, as it continued as new):
  when, channel, recipient kind and id, template, whether it went out, and its text rendered in
  the recipient's language from today's message catalogue;
- `updates`: the partners' replies and the coordinators' actions the referral accepted, with
  their words (reason), channel, who and when;
- `ledger`: the de-identified row of the statistics ledger, and `erasure`: the record of an
  erasure, when the person's data was erased (the rest is then gone, and said to be).

Left out on purpose (`left_out` in the output says so too): partners' secrets and contact
details: the signed, expiring partner links (texts are rendered without a link), partners' and
coordinators' phone numbers and email addresses (a recipient is its kind and id only), API
tokens and keys. Nothing here is logged: the result holds PERSONAL DATA and goes only to the caller.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from temporalio.api.common.v1 import Payloads
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from activities.directory import ConfigError, Directory, load_directory
from activities.messages import render
from config.settings import Settings
from infra.codec import ErasedPayloadError
from infra.database import engine_for
from infra.translations import DEFAULT_LANGUAGE, CatalogueError
from ledger.erasures import ERASED, ErasureLog
from ledger.migrate import check_ready
from ledger.store import LedgerStore
from starter.referrals import ReferralNotFound, _read, get_status, workflow_id
from workflows.models import CoordinatorAction, Delivery, Notice, PartnerReply, ReferralInput

FORMAT = "referral-orchestrator/person-export/v1"
LEFT_OUT = [
    "signed partner links (the messages' texts are rendered without them)",
    "partners' and coordinators' phone numbers and email addresses (recipients by kind and id only)",
    "API tokens, partner link secrets and encryption keys",
]
SEND_ACTIVITIES = {"send_sms": "sms", "send_email": "email"}
UPDATES: dict[str, type[PartnerReply] | type[CoordinatorAction]] = {"partner_reply": PartnerReply, "coordinator_action": CoordinatorAction}

Json = dict[str, Any]


def _at(event: HistoryEvent) -> str:
    return event.event_time.ToDatetime(UTC).isoformat()


async def _runs(client: Client, wid: str) -> list[tuple[str, list[HistoryEvent]]]:
    """Every run of the referral still in Temporal, the first first, with its events: the
    current run, then each run it continued from (its start event names the run before)."""
    runs: list[tuple[str, list[HistoryEvent]]] = []
    run_id: str | None = None
    while True:
        handle = client.get_workflow_handle(wid, run_id=run_id)
        try:
            history = await _read(handle.fetch_history)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                break  # never started, erased, or the runs before this one are past retention
            raise
        runs.append((history.run_id, list(history.events)))
        before = history.events[0].workflow_execution_started_event_attributes.continued_execution_run_id
        if not before or any(r == before for r, _ in runs):
            break
        run_id = before
    return runs[::-1]


async def _one(client: Client, payloads: Payloads, kind: type | None = None) -> Any:
    if not payloads.payloads:
        return None
    decoded = await client.data_converter.decode(payloads.payloads[:1], [kind] if kind else None)
    return decoded[0]


def _language(directory: Directory | None, notice: Notice) -> str:
    """The language the activity renders this notice in (ReferralActivities._recipients): the
    partner's, or the region's coordinator's."""
    if directory is None:
        return DEFAULT_LANGUAGE
    if notice.recipient == "partner":
        partner = directory.partner(notice.recipient_id)
        return partner.language if partner is not None else DEFAULT_LANGUAGE
    return directory.coordinator(notice.recipient_id).language


def _text(settings: Settings, directory: Directory | None, notice: Notice, channel: str) -> Json:
    language = _language(directory, notice)
    try:
        # link=None: never a signed partner link (a partner's secret) in the export.
        message = render(notice, language, settings.referral_messages_dir, settings.referral_timezone, link=None)
    except CatalogueError:
        return {"language": language, "text": None, "note": "the template is no longer in the message catalogue"}
    if channel == "sms":
        return {"language": message.language, "text": message.sms}
    return {"language": message.language, "subject": message.subject, "text": message.body}


async def _read_run(client: Client, settings: Settings, directory: Directory | None, run_id: str, events: list[HistoryEvent]) -> tuple[list[Json], list[Json]]:
    """The messages scheduled and the updates accepted in one run, in history order."""
    messages: dict[int, Json] = {}
    updates: dict[str, Json] = {}
    for event in events:
        kind = event.WhichOneof("attributes")
        if kind == "activity_task_scheduled_event_attributes":
            scheduled = event.activity_task_scheduled_event_attributes
            channel = SEND_ACTIVITIES.get(scheduled.activity_type.name)
            if channel is None:
                continue
            notice: Notice = await _one(client, scheduled.input, Notice)
            messages[event.event_id] = {
                "scheduled_at": _at(event),
                "run_id": run_id,
                "channel": channel,
                "recipient": {"kind": notice.recipient, "id": notice.recipient_id},
                "template": notice.template,
                "service": notice.context.service or None,
                "number": notice.number,
                "delivery": "pending",  # still being sent or retried
                "problem": None,
                "finished_at": None,
                **_text(settings, directory, notice, channel),
            }
        elif kind == "activity_task_completed_event_attributes":
            done = event.activity_task_completed_event_attributes
            if done.scheduled_event_id in messages:
                delivery: Delivery = await _one(client, done.result, Delivery)
                messages[done.scheduled_event_id].update(delivery=delivery.status if delivery else "sent", finished_at=_at(event))
        elif kind == "activity_task_failed_event_attributes":
            failed = event.activity_task_failed_event_attributes
            if failed.scheduled_event_id in messages:
                # The failure's type (OptedOut, NoSmsNumber, ...) is plain; its message is encrypted and not needed.
                problem = failed.failure.application_failure_info.type or None
                messages[failed.scheduled_event_id].update(delivery="failed", problem=problem, finished_at=_at(event))
        elif kind in ("activity_task_timed_out_event_attributes", "activity_task_canceled_event_attributes"):
            ended = getattr(event, kind)
            if ended.scheduled_event_id in messages:
                ending = "gave_up" if kind.startswith("activity_task_timed_out") else "cancelled"
                messages[ended.scheduled_event_id].update(delivery=ending, finished_at=_at(event))
        elif kind == "workflow_execution_update_accepted_event_attributes":
            request = event.workflow_execution_update_accepted_event_attributes.accepted_request
            model = UPDATES.get(request.input.name)
            if model is None:
                continue
            args = await _one(client, request.input.args, model)
            updates[request.meta.update_id] = {
                "received_at": _at(event),
                "run_id": run_id,
                "update": request.input.name,
                **(args.model_dump(mode="json", exclude_none=True) if args is not None else {}),
                "result": None,
            }
        elif kind == "workflow_execution_update_completed_event_attributes":
            completed = event.workflow_execution_update_completed_event_attributes
            entry = updates.get(completed.meta.update_id)
            if entry is not None:
                result = completed.outcome
                entry["result"] = await _one(client, result.success) if result.HasField("success") else "failed"
    return list(messages.values()), list(updates.values())


async def _temporal(client: Client, settings: Settings, code: str) -> Json | None:
    """What Temporal holds: None when it holds no run of the referral."""
    runs = await _runs(client, workflow_id(code))
    if not runs:
        return None
    try:
        directory: Directory | None = await asyncio.to_thread(load_directory, settings.referral_partners_file)
    except ConfigError:
        directory = None  # rendered in the default language rather than no export at all
    started = runs[0][1][0].workflow_execution_started_event_attributes
    first: ReferralInput = await _one(client, started.input, ReferralInput)
    try:
        status = (await get_status(client, code)).model_dump(mode="json")
    except ReferralNotFound:
        status = None
    # The assessment the starter passed in; a referral started before it was passed: its status's.
    assessment = first.assessment.model_dump(mode="json") if first.assessment else (status or {}).get("assessment")
    messages: list[Json] = []
    updates: list[Json] = []
    for run_id, events in runs:
        sent, received = await _read_run(client, settings, directory, run_id, events)
        messages += sent
        updates += received
    return {
        "runs": [{"run_id": run_id, "started_at": _at(events[0])} for run_id, events in runs],
        "intake": first.intake.model_dump(mode="json"),
        "assessment": assessment,
        "status": status,
        "messages": messages,
        "updates": updates,
    }


def _records(settings: Settings, code: str) -> tuple[Json | None, Json | None]:
    """The ledger's de-identified row and the erasure record, each None when there is none."""
    check_ready(engine_for(settings.ledger_url))
    row = LedgerStore.for_url(settings.ledger_url).get(code)
    erased = ErasureLog.for_url(settings.ledger_url).get(code)
    return (row.model_dump(mode="json") if row else None, erased.model_dump(mode="json") if erased else None)


async def export_person(client: Client, settings: Settings, code: str) -> dict:
    """Everything held about the person of referral `code` (see the module's docstring). Raises
    ReferralNotFound when neither Temporal, the ledger nor the erasure record knows the code,
    LedgerNotReady when the project's database is not migrated."""
    ledger_row, erasure = await asyncio.to_thread(_records, settings, code)
    unreadable: str | None = None
    try:
        held = await _temporal(client, settings, code)
    except ErasedPayloadError:
        # The data key is destroyed (an erasure under way): what Temporal still holds is unreadable by anyone.
        held, unreadable = None, "the referral's data key was destroyed: what Temporal still holds can no longer be read"
    if held is None and unreadable is None and ledger_row is None and erasure is None:
        raise ReferralNotFound(code)
    held = held or {}
    return {
        "format": FORMAT,
        "referral": f"R-{code}",
        "workflow_id": workflow_id(code),
        "exported_at": datetime.now(UTC).isoformat(),
        "erased": erasure is not None and erasure["state"] == ERASED,
        "left_out": LEFT_OUT,
        "note": unreadable,
        "runs": held.get("runs", []),
        "intake": held.get("intake"),
        "assessment": held.get("assessment"),
        "status": held.get("status"),
        "messages": held.get("messages", []),
        "updates": held.get("updates", []),
        "ledger": ledger_row,
        "erasure": erasure,
    }
