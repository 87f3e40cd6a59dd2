"""ErasureWorkflow: a person's data erased for good, on request (`referral erase`, the API, the
coordinator's page).

One workflow per referral (`erasure-<code>`, started by starter/erasure.py), so an erasure cut by
a crash (a worker killed, a server restart) is carried on by the next worker until it is
complete: never left half done. Its steps, each an activity safe to repeat
(activities/erasure.py):

1. record the request (code, who, when, why) in the project's database;
2. close the referral if it is open, as a withdrawal of consent (the partners are told), and
   wait until its workflow has finished its last sends;
3. destroy the referral's data key (infra/data_keys.py): from then on no process can decrypt
   any payload of it, wherever Temporal or a backup keeps them;
4. delete every run of `referral-<code>` from Temporal (history and visibility);
5. mark the ledger's de-identified row erased (kept for the statistics), if there is one;
6. record the erasure as done.

Its own payloads are under the master key and hold codes, a coordinator id and the reason, never
the person's data. Deterministic: the activities are called by name.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field
from temporalio import workflow
from temporalio.common import RetryPolicy

ERASURE_WORKFLOW_PREFIX = "erasure-"

RECORD_REQUEST = "erasure_record_request"
CLOSE_REFERRAL = "erasure_close_referral"
DESTROY_DATA_KEY = "erasure_destroy_data_key"
DELETE_RUNS = "erasure_delete_runs"
MARK_LEDGER = "erasure_mark_ledger"
RECORD_DONE = "erasure_record_done"

# Errors no retry can fix: the step is wrong, not the moment.
NON_RETRYABLE = ["ErasureRefused"]
RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=NON_RETRYABLE,
)


class ErasureRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(pattern=r"^[A-Z0-9]{5}$")
    requested_by: str = Field(min_length=1, max_length=64)
    # Why: recorded for the data protection officer. Never the person's data (the forms say so).
    reason: str = Field(min_length=1, max_length=500)


class ErasureStep(BaseModel):
    """What the activities of one erasure are given: the request and when it was made."""

    request: ErasureRequest
    at: datetime


class ErasureDone(BaseModel):
    code: str
    erased_at: datetime
    was_open: bool  # the referral was closed (consent withdrawn) by this erasure
    runs_deleted: int
    ledger_marked: bool


def workflow_id(code: str) -> str:
    return f"{ERASURE_WORKFLOW_PREFIX}{code}"


@workflow.defn
class ErasureWorkflow:
    @workflow.run
    async def run(self, request: ErasureRequest) -> ErasureDone:
        step = ErasureStep(request=request, at=workflow.now())
        ref = f"R-{request.code}"
        await self._do(RECORD_REQUEST, step, bool, f"{ref}: record the erasure request")
        # Waits for the referral's last sends: as long as a withdrawal of consent may take.
        was_open = await self._do(CLOSE_REFERRAL, step, bool, f"{ref}: close it (consent withdrawn)", timedelta(minutes=10), heartbeat=True)
        await self._do(DESTROY_DATA_KEY, step, bool, f"{ref}: destroy its data key")
        runs = await self._do(DELETE_RUNS, step, int, f"{ref}: delete its runs from Temporal", timedelta(minutes=5), heartbeat=True)
        marked = await self._do(MARK_LEDGER, step, bool, f"{ref}: mark the ledger row erased")
        done = ErasureDone(code=request.code, erased_at=workflow.now(), was_open=was_open, runs_deleted=runs, ledger_marked=marked)
        await self._do(RECORD_DONE, done, bool, f"{ref}: record the erasure as done")
        return done

    async def _do(
        self,
        activity: str,
        arg: BaseModel,
        result_type: type,
        summary: str,
        timeout: timedelta = timedelta(seconds=30),
        heartbeat: bool = False,
    ):
        return await workflow.execute_activity(
            activity,
            arg,
            result_type=result_type,
            start_to_close_timeout=timeout,
            heartbeat_timeout=timedelta(seconds=30) if heartbeat else None,
            retry_policy=RETRY,
            summary=summary,
        )
