"""What the JSON API and the coordinators' pages share about erasing a person's data: the answers'
models, the wait, and the safe reading of the record of erasures.

The erasure itself is `starter.erasure.erase` (the one implementation behind the CLI, the API and
the page). Nothing here ever holds the person's data: an erasure's record is a code, times, a
coordinator's login and a reason.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Literal

import structlog
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from config.settings import Settings
from infra.data_keys import DataKeysNotReady
from ledger.erasures import ERASED, Erasure
from ledger.migrate import LedgerNotReady
from starter import erasure
from workflows.erasure import workflow_id as erasure_workflow_id

log = structlog.get_logger(__name__)

# How long a request waits for the erasure to finish: it closes the referral, destroys its key and
# deletes its runs, about 25 s on the dev server (most of it waiting for visibility to drop the
# deleted runs); under a reverse proxy's usual 60 s. Past it the erasure goes on by itself: the
# API answers 202, the page says it is under way.
WAIT = timedelta(seconds=45)
# The reason is recorded for the data protection officer (ledger/erasures.py).
REASON_MAX = 500
CONSENT_WITHDRAWN = "consent withdrawn"


class ErasureRecord(BaseModel):
    """The recorded erasure of a referral (what `referral erasures` lists, without the reason)."""

    code: str = Field(description="the referral code, e.g. 7K3Q9")
    state: Literal["requested", "erased"] = Field(description="requested: under way; erased: done, for good")
    requested_at: datetime
    erased_at: datetime | None = Field(description="when it was done; null while under way")
    requested_by: str = Field(description="who asked: a coordinator's id or login, or `api`")


class ErasureResult(ErasureRecord):
    already: bool = Field(description="true when the referral had been erased before this request: nothing was done now")


class ErasureUnderWay(BaseModel):
    code: str
    state: Literal["requested"] = "requested"
    message: str
    erasure_url: str = Field(description="GET it to see the erasure done")


class Gone(BaseModel):
    error: str = Field(description="R-7K3Q9 was erased on 2026-11-28")


def record_of(found: Erasure) -> ErasureRecord:
    return ErasureRecord(
        code=found.code,
        state="erased" if found.state == ERASED else "requested",
        requested_at=found.requested_at,
        erased_at=found.erased_at,
        requested_by=found.requested_by,
    )


async def recorded(settings: Settings, code: str) -> Erasure | None:
    """The recorded erasure of this referral, or None, also when the project's database is not
    migrated or cannot be opened (then nothing can have been erased through it)."""
    try:
        return await asyncio.to_thread(erasure.erasure_state, settings, code)
    except LedgerNotReady as err:
        log.warning("erasure_state_unavailable", code=code, error=str(err))
        return None


async def erased(settings: Settings, code: str) -> Erasure | None:
    """The erasure of this referral when it is done, else None."""
    found = await recorded(settings, code)
    return found if found is not None and found.state == ERASED else None


def gone_message(done: Erasure) -> str:
    when = done.erased_at or done.requested_at
    return f"R-{done.code} was erased on {when:%Y-%m-%d}"


def gone(done: Erasure) -> JSONResponse:
    return JSONResponse(Gone(error=gone_message(done)).model_dump(), status_code=410)


def erasure_url(settings: Settings, code: str) -> str:
    return f"{settings.public_base_url.rstrip('/')}/api/referrals/{code}/erasure"


def under_way(settings: Settings, code: str, message: str | None = None) -> JSONResponse:
    answer = ErasureUnderWay(
        code=code,
        message=message or f"the erasure of R-{code} is under way; it goes on by itself",
        erasure_url=erasure_url(settings, code),
    )
    return JSONResponse(answer.model_dump(), status_code=202, headers={"Location": answer.erasure_url})


async def erasure_running(client: Client, code: str) -> bool:
    """Whether the referral's ErasureWorkflow is running (started, not yet recorded anything)."""
    try:
        described = await client.get_workflow_handle(erasure_workflow_id(code)).describe()
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return described.status == WorkflowExecutionStatus.RUNNING


def _server_error(message: str) -> JSONResponse:
    return JSONResponse({"errors": [{"field": "(server)", "message": message}]}, status_code=503)


async def erase_for_api(client: Client, settings: Settings, code: str, by: str | None, reason: str) -> JSONResponse:
    """Erase and answer as the API does: 200 with the erasure, 202 while under way, 503 when it
    failed or the databases are not ready. ReferralNotFound and ValidationError go up (404, 422)."""
    who = (by or "").strip() or "api"
    try:
        outcome = await erasure.erase(client, settings, code, by=who, reason=reason[:REASON_MAX], wait=WAIT)
    except erasure.ErasurePending as err:
        log.info("api_erasure_pending", code=code)
        return under_way(settings, code, str(err))
    except erasure.ErasureFailed as err:
        log.error("api_erasure_failed", code=code)
        return _server_error(str(err))
    except (LedgerNotReady, DataKeysNotReady) as err:
        log.error("api_erasure_unavailable", code=code, error=str(err))
        return _server_error("the project's database is not ready; try again later")
    log.info("api_erasure", code=code, by=who, already=outcome.already, was_open=outcome.was_open)
    result = ErasureResult(**record_of(outcome.erasure).model_dump(), already=outcome.already)
    return JSONResponse(result.model_dump(mode="json"))
