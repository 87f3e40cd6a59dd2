"""Erasing a person's data on request: the one implementation behind `referral erase`, the API
and the coordinator's page (the steps themselves: workflows/erasure.py).

`erase` checks the request, starts the referral's ErasureWorkflow (`erasure-<code>`; asking
again while one runs joins it) and waits for it. An erasure that does not finish in time is not
lost: it goes on in Temporal, and `erasure_state` (or asking again) tells when it is done.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from temporalio.client import Client, WorkflowFailureError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from config.settings import Settings
from infra.database import engine_for
from infra.temporal import payload_codec
from ledger.erasures import ERASED, Erasure, ErasureLog
from ledger.migrate import check_ready
from ledger.store import LedgerStore
from starter.referrals import ReferralNotFound, _describe
from starter.referrals import workflow_id as referral_workflow_id
from workflows.erasure import ErasureDone, ErasureRequest, ErasureWorkflow
from workflows.erasure import workflow_id as erasure_workflow_id

DEFAULT_WAIT = timedelta(minutes=2)


class ErasurePending(Exception):
    """The erasure was started but has not finished within the wait (no worker running?)."""

    def __init__(self, code: str, wait: timedelta) -> None:
        super().__init__(
            f"the erasure of R-{code} is under way but not finished after {int(wait.total_seconds())} s "
            "(is a worker running?); it goes on by itself: ask again to see it done"
        )
        self.code = code


class ErasureFailed(Exception):
    """The erasure workflow failed (an operator terminated it, or a step gave up)."""


@dataclass(frozen=True)
class ErasureOutcome:
    erasure: Erasure
    already: bool  # erased before this request: nothing was done now
    was_open: bool = False


def erasure_log(settings: Settings) -> ErasureLog:
    return ErasureLog.for_url(settings.ledger_url)


def erasure_state(settings: Settings, code: str) -> Erasure | None:
    """The recorded erasure of this referral (requested or done), or None."""
    check_ready(engine_for(settings.ledger_url))
    return erasure_log(settings).get(code)


async def _known(client: Client, settings: Settings, code: str) -> bool:
    """Whether the referral exists: its runs in Temporal, or its ledger row (past Temporal's
    retention, its data may still be in backups). Not its data key alone: any attempt to act on
    a code, even a mistyped one, makes a key."""
    try:
        await _describe(client, referral_workflow_id(code))
        return True
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            raise
    return await asyncio.to_thread(LedgerStore.for_url(settings.ledger_url).get, code) is not None


async def _still_erased(client: Client, settings: Settings, code: str) -> bool:
    """Whether an erasure recorded as done still holds: its data key destroyed and no run in
    Temporal. A restored backup (of the key table, or of Temporal) can undo either; then the
    erasure is carried out again."""
    codec = payload_codec(settings)
    if codec is not None and codec.data_keys is not None and not (await asyncio.to_thread(codec.data_keys.state, code)).destroyed:
        return False
    try:
        await _describe(client, referral_workflow_id(code))
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return True
        raise
    return False


async def erase(
    client: Client, settings: Settings, code: str, by: str, reason: str, wait: timedelta = DEFAULT_WAIT, task_queue: str | None = None
) -> ErasureOutcome:
    """Erase the referral's personal data for good. Raises ValidationError (naming the field) for
    a bad request, ReferralNotFound when nothing is held under the code, LedgerNotReady when the
    project's database is not migrated, ErasurePending when it does not finish within `wait`."""
    request = ErasureRequest(code=code, requested_by=by.strip(), reason=reason.strip())
    await asyncio.to_thread(check_ready, engine_for(settings.ledger_url))
    recorded = await asyncio.to_thread(erasure_log(settings).get, code)
    if recorded is not None and recorded.state == ERASED and await _still_erased(client, settings, code):
        return ErasureOutcome(recorded, already=True)
    if recorded is None and not await _known(client, settings, code):
        raise ReferralNotFound(code)
    try:
        handle = await client.start_workflow(
            ErasureWorkflow.run,
            request,
            id=erasure_workflow_id(code),
            task_queue=task_queue or settings.referral_task_queue,
            # A running erasure is joined; a finished one runs again only when a restored backup
            # brought the key or the runs back (checked above).
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            static_summary=f"erase R-{code}",
        )
    except WorkflowAlreadyStartedError:
        handle = client.get_workflow_handle_for(ErasureWorkflow.run, erasure_workflow_id(code))
    try:
        done: ErasureDone = await asyncio.wait_for(handle.result(), wait.total_seconds())
    except TimeoutError:
        raise ErasurePending(code, wait) from None
    except WorkflowFailureError as err:
        raise ErasureFailed(f"the erasure of R-{code} failed ({type(err.cause).__name__}); ask again to retry it") from None
    recorded = await asyncio.to_thread(erasure_log(settings).get, code)
    assert recorded is not None, "the erasure's first step records it"
    return ErasureOutcome(recorded, already=False, was_open=done.was_open)


def erasures(settings: Settings) -> list[Erasure]:
    """Every erasure recorded, the oldest request first."""
    check_ready(engine_for(settings.ledger_url))
    return erasure_log(settings).all()
