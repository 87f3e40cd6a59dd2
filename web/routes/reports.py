"""`GET /api/reports`: the ledger's statistics as JSON, the same report as `referral report --format json`.

Bearer-authenticated like every /api route (web.routes.api.ApiRoute), small counts always
suppressed (shown as "<5"; only the CLI can show them). The period is days of start in
REFERRAL_TIMEZONE, both ends included; a `from` after `to` is an empty period, not an error.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Query, Request
from pydantic import WithJsonSchema

from ledger.reports import Filters, Report
from ledger.store import LedgerNotReady
from web import deps
from web.routes.api import ERRORS, ApiError, ApiRoute, bearer_doc
from workflows.intake import CALENDAR_DATE, REGIONS, Region

router = APIRouter(
    prefix="/api",
    tags=["reports"],
    route_class=ApiRoute,
    dependencies=[Depends(bearer_doc)],
    responses={
        401: {**ERRORS, "description": "no or wrong bearer token (checked before anything else)"},
        422: {**ERRORS, "description": "a parameter this document does not allow; each error names its field"},
        503: {**ERRORS, "description": "the ledger database unreachable or not migrated (`referral ledger upgrade`)"},
    },
)


async def report_for(request: Request, filters: Filters) -> Report:
    """The suppressed report the filters choose; LedgerNotReady when the ledger cannot answer.
    The store is synchronous: it runs in a thread."""
    store = deps.ledger_of(request)
    await asyncio.to_thread(store.check)
    tz = ZoneInfo(deps.settings_of(request).referral_timezone)
    return await asyncio.to_thread(store.report, filters, tz=tz, now=datetime.now(UTC), suppress=True)


_DAY = WithJsonSchema({"type": "string", "format": "date", "pattern": f"^{CALENDAR_DATE}$", "description": "a day, YYYY-MM-DD"})


@router.get("/reports", response_model=Report, summary="Statistics from the ledger; counts from 1 to 4 as \"<5\"")
async def reports(
    request: Request,
    date_from: Annotated[date | None, Query(alias="from", description="referrals started on or after this day"), _DAY] = None,
    date_to: Annotated[date | None, Query(alias="to", description="referrals started on or before this day"), _DAY] = None,
    region: Annotated[Region | None, Query(), WithJsonSchema({"type": "string", "enum": list(REGIONS)})] = None,
) -> Report:
    """Referrals by month and urgency, region, sector, indicator and age group; time to first
    acceptance; per partner; escalations; outcomes by service. Days are in REFERRAL_TIMEZONE."""
    try:
        return await report_for(request, Filters(date_from=date_from, date_to=date_to, region=region))
    except LedgerNotReady as err:
        raise ApiError(503, [{"field": "(server)", "message": str(err)}]) from None
