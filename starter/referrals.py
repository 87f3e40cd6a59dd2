"""Starting and steering referrals: the one implementation behind the CLI, API, form and webhook.

Idempotency: the referral code is derived from the intake's `external_ref` (and nothing
personal), the workflow id is `referral-<CODE>`, and Temporal refuses a second workflow with
the same id, so the same external_ref submitted twice, even at the same moment, yields one
referral. Two different refs that hash to the same code are told apart by a digest in the
memo; the second one moves on to the next derived code.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from pydantic import BaseModel
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import (
    DescribeWorkflowExecutionRequest,
    DescribeWorkflowExecutionResponse,
    GetWorkflowExecutionHistoryRequest,
)
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from infra.codec import EncryptionCodec, ErasedPayloadError
from infra.data_keys import REFERRAL_WORKFLOW_PREFIX, ReferralDataErased
from starter import sms_commands
from starter.sms_commands import CODE_ALPHABET, CODE_LENGTH
from workflows import generations, status_memo
from workflows import search_attributes as sa
from workflows.intake import Intake, assess
from workflows.models import (
    ActionOutcome,
    CoordinatorAction,
    PartnerReply,
    ReferralInput,
    ReferralStatus,
    ReplyOutcome,
)
from workflows.referral import ReferralWorkflow

_MAX_CODE_TRIES = 16
_READ_TRIES = 4
_T = TypeVar("_T")


class ReferralNotFound(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(f"no referral R-{code}")
        self.code = code


class ReferralRejected(Exception):
    """An update the workflow's validator refused; `kind` is one of models.REJECTION_TYPES."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def workflow_id(code: str) -> str:
    # The codec binds a referral's data key by this prefix (infra/data_keys.py).
    return f"{REFERRAL_WORKFLOW_PREFIX}{code}"


# The forms of a code the API document declares (`normalise_code` reads a few more, as an SMS
# may write them: `#7K3Q9`, `R 7K3Q9`, Arabic-Indic digits).
_CODE_CHAR = "[" + "".join(sorted(set(CODE_ALPHABET + CODE_ALPHABET.lower()))) + "]"
CODE_PATTERN = rf"^(?:[Rr]-?|referral-)?{_CODE_CHAR}{{{CODE_LENGTH}}}$"


def normalise_code(text: str) -> str:
    """`r-7k3q9`, `R7K3Q9`, `referral-7K3Q9` or `7K3Q9` -> `7K3Q9`; raises ValueError naming the problem."""
    value = text.strip()
    if value.lower().startswith("referral-"):
        value = value[len("referral-"):]
    code = sms_commands.normalise_code(value)
    if code is None:
        raise ValueError(f"code: not a referral code (expected {CODE_LENGTH} characters such as 7K3Q9)")
    return code


def _digest(external_ref: str) -> str:
    return hashlib.sha256(f"referral-intake:{external_ref}".encode()).hexdigest()


def referral_code(external_ref: str, attempt: int = 0) -> str:
    """A short code from the external reference: same ref, same code."""
    digest = hashlib.sha256(f"referral-code:{attempt}:{external_ref}".encode()).digest()
    number = int.from_bytes(digest[:8], "big")
    chars = []
    for _ in range(CODE_LENGTH):
        number, i = divmod(number, len(CODE_ALPHABET))
        chars.append(CODE_ALPHABET[i])
    return "".join(chars)


@dataclass(frozen=True)
class Started:
    code: str
    workflow_id: str
    created: bool  # False when the external_ref had already started this referral


async def start_referral(client: Client, intake: Intake, task_queue: str) -> Started:
    """Start the referral for this intake, or return the one its external_ref already started.
    Raises ReferralDataErased when that referral was erased: nothing is started under its code
    again (a new referral for the person needs a new external_ref)."""
    digest = _digest(intake.external_ref)
    assessment = assess(intake)
    codec = client.data_converter.payload_codec
    for attempt in range(_MAX_CODE_TRIES):
        code = referral_code(intake.external_ref, attempt)
        wid = workflow_id(code)
        # Read from the table, not from a process's memory of the key: never start an erased code again.
        if isinstance(codec, EncryptionCodec) and codec.data_keys is not None and (await asyncio.to_thread(codec.data_keys.state, code)).destroyed:
            raise ReferralDataErased(code)
        try:
            await client.start_workflow(
                ReferralWorkflow.run,
                ReferralInput(code=code, intake=intake, assessment=assessment, generation=generations.CURRENT),
                id=wid,
                task_queue=task_queue,
                # Never a second referral under this id, even after the first one closed.
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                # The status as the workflow's first step has it, so a describe answers at once.
                memo={"intake_digest": digest, status_memo.MEMO_KEY: status_memo.initial(wid, intake, assessment)},
                search_attributes=sa.initial(intake.region, assessment.urgency, assessment.needs),
                static_summary=f"R-{code} · {assessment.urgency} · {intake.region} · {', '.join(assessment.needs)}",
            )
            return Started(code=code, workflow_id=wid, created=True)
        except WorkflowAlreadyStartedError:
            described = await _describe(client, wid)
            field = described.workflow_execution_info.memo.fields.get("intake_digest")
            known = (await client.data_converter.decode([field]))[0] if field is not None else ""
            if hmac.compare_digest(str(known), digest):
                return Started(code=code, workflow_id=wid, created=False)
            # A different referral owns this code: try the next one derived from the ref.
    raise RuntimeError("external_ref: no free referral code after several tries")


async def _describe(client: Client, wid: str) -> DescribeWorkflowExecutionResponse:
    """The bare describe call, not handle.describe(): that one also parses every search
    attribute, which fails on the time-skipping test server once ReplyDueBy is cleared."""
    request = DescribeWorkflowExecutionRequest(namespace=client.namespace, execution=WorkflowExecution(workflow_id=wid))
    return await _read(lambda: client.workflow_service.describe_workflow_execution(request, retry=True))


async def _read(call: Callable[[], Awaitable[_T]]) -> _T:
    """A read of the server, tried again when the server answers CANCELLED ("operation was
    canceled": its own call to the history service was cut, seen on a loaded dev server), which
    the SDK's retry leaves alone. Reads are safe to repeat."""
    for attempt in range(_READ_TRIES):
        try:
            return await call()
        except RPCError as err:
            if err.status != RPCStatusCode.CANCELLED or attempt == _READ_TRIES - 1:
                raise
            await asyncio.sleep(0.1 * 2**attempt)
    raise AssertionError("unreachable")


def _handle(client: Client, code: str) -> WorkflowHandle:
    return client.get_workflow_handle_for(ReferralWorkflow.run, workflow_id(code))


async def _exists(client: Client, code: str) -> None:
    try:
        await _handle(client, code).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise ReferralNotFound(code) from None
        raise


async def get_status(client: Client, code: str) -> ReferralStatus:
    """The status the workflow last published in its memo (workflows/status_memo.py), answered by
    the server alone, with no worker and no replay: a describe, and the run's first event for the
    external_ref (kept out of the memo). A referral without a status in its memo (started before
    the memo held it, or whose status outgrew it) is asked with the `status` query instead."""
    status, _ = await status_and_input(client, code)
    return status


async def status_and_input(client: Client, code: str) -> tuple[ReferralStatus, ReferralInput]:
    """`get_status`'s status, and the input of the referral's current run (its intake, which holds
    PERSONAL DATA: never log or show it; `referral ledger rebuild` takes the ledger's codes from it)."""
    execution = WorkflowExecution(workflow_id=workflow_id(code))
    try:
        described = await _describe(client, execution.workflow_id)
        request = GetWorkflowExecutionHistoryRequest(namespace=client.namespace, execution=execution, maximum_page_size=1)
        first = await _read(lambda: client.workflow_service.get_workflow_execution_history(request, retry=True))
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise ReferralNotFound(code) from None
        raise
    started = first.history.events[0].workflow_execution_started_event_attributes
    try:
        [run_input] = await client.data_converter.decode(started.input.payloads[:1], [ReferralInput])
    except ErasedPayloadError:
        raise ReferralNotFound(code) from None  # being erased: its runs are about to go
    info = described.workflow_execution_info
    memo = info.memo.fields.get(status_memo.MEMO_KEY)
    status = (await client.data_converter.decode([memo]))[0] if memo is not None else None
    if status is None:
        return await _handle(client, code).query(ReferralWorkflow.status), run_input
    return status_memo.expand(status, execution.workflow_id, info.start_time.ToDatetime(UTC), run_input.intake.external_ref), run_input


def _rejection(err: WorkflowUpdateFailedError) -> ReferralRejected:
    cause = err.cause
    if isinstance(cause, ApplicationError):
        return ReferralRejected(cause.type or "invalid", cause.message)
    return ReferralRejected("invalid", str(cause or err))


async def _update(client: Client, code: str, update, arg, update_id: str | None):
    try:
        return await _handle(client, code).execute_update(update, arg, id=update_id)
    except ReferralDataErased:
        # Erased (its data key destroyed): to a late reply it is simply closed.
        raise ReferralRejected("referral_closed", f"R-{code} is closed") from None
    except WorkflowUpdateFailedError as err:
        raise _rejection(err) from None
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            # Unknown id, or a closed workflow (updates need a running one)
            await _exists(client, code)
            raise ReferralRejected("referral_closed", f"R-{code} is closed") from None
        raise


async def partner_reply(client: Client, code: str, reply: PartnerReply, update_id: str | None = None) -> ReplyOutcome:
    """Apply a partner's reply. `update_id` (an SMS's MessageSid) makes a redelivery a no-op."""
    return await _update(client, code, ReferralWorkflow.partner_reply, reply, update_id)


async def coordinator_action(client: Client, code: str, action: CoordinatorAction, update_id: str | None = None) -> ActionOutcome:
    return await _update(client, code, ReferralWorkflow.coordinator_action, action, update_id)


class ListedReferral(BaseModel):
    """One row of `referral list` / `GET /api/referrals`, from search attributes only."""

    code: str
    workflow_id: str
    stage: str | None
    urgency: str | None
    region: str | None
    escalation_level: int | None
    awaiting_partners: list[str]
    reply_due_by: datetime | None
    running: bool


# A referral that continued as new is its latest run: the runs it continued from are left out.
LATEST_RUNS = "WorkflowType = 'ReferralWorkflow' AND ExecutionStatus != 'ContinuedAsNew'"


def list_query(stage: str | None = None, region: str | None = None, overdue: bool = False, now: datetime | None = None) -> str:
    parts = [LATEST_RUNS]
    if stage:
        parts.append(f"ReferralStage = '{stage}'")
    if region:
        parts.append(f"ReferralRegion = '{region}'")
    if overdue:
        at = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
        parts.append("ExecutionStatus = 'Running'")
        parts.append(f"(EscalationLevel > 0 OR ReplyDueBy < '{at}')")
    return " AND ".join(parts)


async def list_referrals(client: Client, query: str, limit: int = 1000) -> list[ListedReferral]:
    out: list[ListedReferral] = []
    async for wf in client.list_workflows(query, limit=limit):
        attrs = wf.typed_search_attributes
        code = wf.id.removeprefix("referral-")
        out.append(
            ListedReferral(
                code=code,
                workflow_id=wf.id,
                stage=attrs.get(sa.REFERRAL_STAGE),
                urgency=attrs.get(sa.REFERRAL_URGENCY),
                region=attrs.get(sa.REFERRAL_REGION),
                escalation_level=attrs.get(sa.ESCALATION_LEVEL),
                awaiting_partners=list(attrs.get(sa.AWAITING_PARTNERS) or []),
                reply_due_by=attrs.get(sa.REPLY_DUE_BY),
                running=wf.status == WorkflowExecutionStatus.RUNNING,
            )
        )
    return out
