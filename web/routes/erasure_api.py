"""Erasing a person's data through the JSON API (issue 16), beside web/routes/api.py and with its
rules (bearer token, JSON bodies, field errors, never a submitted value in an answer):

    POST /api/referrals/{code}/erase     {"reason": "...", "by": "..."?}
    GET  /api/referrals/{code}/erasure   the recorded erasure

An erasure closes the referral if it is open (a withdrawal of consent: the partners are told),
destroys its data key, deletes its runs from Temporal and keeps the ledger's de-identified row,
marked erased (starter/erasure.py). It cannot be undone. `POST .../withdraw-consent` with
`"erase": true` does the same after the withdrawal.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import Field

from web import deps, erasures
from web.routes.api import _BODY_DOC, _BODY_RESPONSES, ERRORS, ApiRoute, CodePath, _Body, _code, bearer_doc

router = APIRouter(
    prefix="/api",
    tags=["erasure"],
    route_class=ApiRoute,
    dependencies=[Depends(bearer_doc)],
    responses={
        401: {**ERRORS, "description": "no or wrong bearer token (checked before anything else)"},
        422: {**ERRORS, "description": "invalid input, against this document's schemas; each error names its field, never its value"},
        503: {**ERRORS, "description": "Temporal or the project's database unreachable (or not migrated), or the erasure failed: ask again"},
    },
)

_NOT_FOUND = {**ERRORS, "description": "nothing is held under this code"}


class EraseBody(_Body):
    reason: str = Field(
        min_length=1,
        max_length=erasures.REASON_MAX,
        description="why the data is erased, recorded for the data protection officer; never the person's name, phone or story",
        # At least one character that is not a space (spaces are removed first); the schema says it.
        json_schema_extra={"pattern": r"\S"},
    )
    by: str | None = Field(default=None, max_length=64, description="who asks (a coordinator id); absent: `api`")


@router.post(
    "/referrals/{code}/erase",
    response_model=erasures.ErasureResult,
    summary="Erase the person's data for good (closes the referral if open; cannot be undone)",
    responses={
        200: {"description": "erased; or erased before (already: true), so a retry is safe"},
        202: {"model": erasures.ErasureUnderWay, "description": "under way, not finished in time (is a worker running?): it goes on by itself"},
        **_BODY_RESPONSES,
        404: _NOT_FOUND,
    },
    openapi_extra=_BODY_DOC,
)
async def erase(code: CodePath, body: EraseBody, request: Request) -> JSONResponse:
    """Closes the referral if it is still open (as a withdrawal of consent: the partners are told),
    destroys its data key, deletes its runs from Temporal and marks its de-identified ledger row
    erased. Asking again while it runs joins it; once done, answers `already: true`."""
    code = _code(code)
    return await erasures.erase_for_api(deps.client_of(request), deps.settings_of(request), code, body.by, body.reason)


@router.get(
    "/referrals/{code}/erasure",
    response_model=erasures.ErasureRecord,
    summary="The recorded erasure of a referral",
    responses={
        202: {"model": erasures.ErasureUnderWay, "description": "an erasure was started and has not recorded anything yet"},
        404: {**ERRORS, "description": "no erasure of this referral was asked"},
    },
)
async def erasure_of(code: CodePath, request: Request) -> erasures.ErasureRecord | JSONResponse:
    code = _code(code)
    settings = deps.settings_of(request)
    found = await erasures.recorded(settings, code)
    if found is not None:
        return erasures.record_of(found)
    if await erasures.erasure_running(deps.client_of(request), code):
        return erasures.under_way(settings, code)
    return JSONResponse({"errors": [{"field": "code", "message": f"no erasure of R-{code} was asked"}]}, status_code=404)
