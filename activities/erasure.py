"""The erasure's activities (workflows/erasure.py): each step of erasing a person's data, each
safe to repeat, since a step cut by a crash is tried again by the next worker.

They reach Temporal through the worker's own client (`activity.client()`, the data converter
with the keys), the key table through the codec's store (infra/data_keys.py), and the ledger and
the record of erasures through the project's database. Log lines carry the referral's code only.
"""

from __future__ import annotations

import asyncio

import structlog
from temporalio import activity
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import WorkflowExecutionStatus
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest, DescribeWorkflowExecutionRequest
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from config.settings import Settings
from infra.data_keys import CACHE_SECONDS, REFERRAL_WORKFLOW_PREFIX, ReferralDataErased
from infra.temporal import payload_codec
from ledger.erasures import ErasureLog
from ledger.store import LedgerNotReady, LedgerStore
from workflows.erasure import (
    CLOSE_REFERRAL,
    DELETE_RUNS,
    DESTROY_DATA_KEY,
    MARK_LEDGER,
    RECORD_DONE,
    RECORD_REQUEST,
    ErasureDone,
    ErasureStep,
)
from workflows.models import CoordinatorAction
from workflows.referral import ReferralWorkflow

log = structlog.get_logger("activities")

POLL_SECONDS = 0.5
HEARTBEAT_EVERY = 5.0
WITHDRAWAL_SENT = "withdrawal sent"


def _wid(code: str) -> str:
    return f"{REFERRAL_WORKFLOW_PREFIX}{code}"


async def _latest_status(client: Client, wid: str) -> WorkflowExecutionStatus.ValueType | None:
    """The status of the latest run of `wid`, or None when Temporal has none."""
    request = DescribeWorkflowExecutionRequest(namespace=client.namespace, execution=WorkflowExecution(workflow_id=wid))
    try:
        described = await client.workflow_service.describe_workflow_execution(request, retry=True)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return described.workflow_execution_info.status


async def _running(client: Client, code: str) -> bool:
    return await _latest_status(client, _wid(code)) == WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING


class ErasureActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _log(self) -> ErasureLog:
        return ErasureLog.for_url(self.settings.ledger_url)

    @activity.defn(name=RECORD_REQUEST)
    async def record_request(self, step: ErasureStep) -> bool:
        r = step.request
        await asyncio.to_thread(self._log().record_request, r.code, step.at, r.requested_by, r.reason)
        log.info("erasure requested", code=r.code, by=r.requested_by)
        return True

    @activity.defn(name=CLOSE_REFERRAL)
    async def close_referral(self, step: ErasureStep) -> bool:
        """Withdraw consent if the referral is open (the partners are told, as for any withdrawal),
        then wait until its workflow has finished: its last sends need its data key. True when
        this erasure closed it."""
        client = activity.client()
        code = step.request.code
        # An earlier attempt, cut short, may have sent the withdrawal: it said so in its heartbeat.
        sent_before = list(activity.info().heartbeat_details[:1]) == [WITHDRAWAL_SENT]
        if not await _running(client, code):
            return sent_before
        action = CoordinatorAction(action="withdraw_consent", by=step.request.requested_by)
        handle = client.get_workflow_handle_for(ReferralWorkflow.run, _wid(code))
        closed_here = True
        try:
            # The same update id on a retry: Temporal applies it once.
            update = asyncio.ensure_future(handle.execute_update(ReferralWorkflow.coordinator_action, action, id=f"erasure-{code}"))
            while not update.done():  # the withdrawal's sends may take longer than a heartbeat
                activity.heartbeat(WITHDRAWAL_SENT)
                await asyncio.wait({update}, timeout=HEARTBEAT_EVERY)
            update.result()
        except ReferralDataErased:
            # Its key is already destroyed (a restored backup brought the runs back, or an erasure
            # cut short): no worker can read it, nobody can be told. Stop it where it stands.
            await handle.terminate(reason="erased: its data key was destroyed")
            closed_here = False
        except WorkflowUpdateFailedError:
            closed_here = False  # already closing (another action came first): wait for it
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
            closed_here = False  # it finished meanwhile
        while await _running(client, code):
            activity.heartbeat(WITHDRAWAL_SENT if closed_here else "waiting for the referral to finish")
            await asyncio.sleep(POLL_SECONDS)
        log.info("erasure: referral closed", code=code, closed_here=closed_here)
        return closed_here

    @activity.defn(name=DESTROY_DATA_KEY)
    async def destroy_data_key(self, step: ErasureStep) -> bool:
        """False when payloads are not encrypted here (REFERRAL_ALLOW_PLAINTEXT): no key to destroy."""
        codec = payload_codec(self.settings)
        if codec is None or codec.data_keys is None:
            log.warning("erasure: payload encryption is off, no data key to destroy", code=step.request.code)
            return False
        state = await asyncio.to_thread(codec.data_keys.destroy, step.request.code, step.at)
        # Other processes may hold the key in memory for decoding that long: once this step is
        # done, none can decrypt the referral's payloads any more.
        await asyncio.sleep(CACHE_SECONDS)
        log.info("erasure: data key destroyed", code=step.request.code, key_id=state.key_id)
        return True

    @activity.defn(name=DELETE_RUNS)
    async def delete_runs(self, step: ErasureStep) -> int:
        """Delete every run of the referral (it may have continued as new many times), then wait
        until Temporal no longer lists any. How many runs were deleted (by earlier attempts too)."""
        client = activity.client()
        wid = _wid(step.request.code)
        deleted: set[str] = set()
        # Runs an earlier attempt deleted before it was cut short (its last heartbeat).
        before = activity.info().heartbeat_details[:1]
        earlier = before[0] if before and isinstance(before[0], int) else 0
        for _ in range(int(240 / POLL_SECONDS)):
            runs = [w.run_id async for w in client.list_workflows(f"WorkflowId = '{wid}'")]
            if not runs and await _latest_status(client, wid) is None:
                log.info("erasure: runs deleted", code=step.request.code, runs=earlier + len(deleted))
                return earlier + len(deleted)
            for run_id in runs:
                if run_id in deleted:
                    continue  # asked already: visibility catches up on its own (about 30 s on the dev server)
                try:
                    await client.workflow_service.delete_workflow_execution(
                        DeleteWorkflowExecutionRequest(namespace=client.namespace, workflow_execution=WorkflowExecution(workflow_id=wid, run_id=run_id)),
                        retry=True,
                    )
                except RPCError as err:
                    if err.status != RPCStatusCode.NOT_FOUND:
                        raise
                deleted.add(run_id)
            if not runs:  # listed no more, but a describe still finds it: delete the latest run
                await _delete_latest(client, wid)
            activity.heartbeat(earlier + len(deleted))
            await asyncio.sleep(POLL_SECONDS)
        raise ApplicationError(f"R-{step.request.code}: Temporal still lists runs after their deletion", type="RunsStillListed")

    @activity.defn(name=MARK_LEDGER)
    async def mark_ledger(self, step: ErasureStep) -> bool:
        """Keep the de-identified row, marked erased; False when the ledger has no row for it."""
        store = LedgerStore.for_url(self.settings.ledger_url)
        try:
            await asyncio.to_thread(store.check)
        except LedgerNotReady as err:
            raise ApplicationError(str(err), type="LedgerNotReady") from None
        marked = await asyncio.to_thread(store.mark_erased, step.request.code, step.at)
        return marked

    @activity.defn(name=RECORD_DONE)
    async def record_done(self, done: ErasureDone) -> bool:
        await asyncio.to_thread(self._log().record_done, done.code, done.erased_at, done.runs_deleted, done.ledger_marked)
        log.info("erasure done", code=done.code, runs_deleted=done.runs_deleted, ledger_marked=done.ledger_marked)
        return True

    def all(self) -> list:
        return [self.record_request, self.close_referral, self.destroy_data_key, self.delete_runs, self.mark_ledger, self.record_done]


async def _delete_latest(client: Client, wid: str) -> None:
    try:
        await client.workflow_service.delete_workflow_execution(
            DeleteWorkflowExecutionRequest(namespace=client.namespace, workflow_execution=WorkflowExecution(workflow_id=wid)),
            retry=True,
        )
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
