"""The coordinators' reports page and its CSV download, from the ledger.

    GET /reports        charts (server-side SVG) and tables, filters, a printable layout
    GET /reports.csv    the same report as CSV (ledger.report_output.to_csv), small counts suppressed

For logged-in coordinators only; the same report as `GET /api/reports` (web.routes.reports).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response
from markupsafe import Markup

from activities.directory import ConfigError, load_directory
from ledger.record import URGENCIES
from ledger.report_output import to_csv
from ledger.reports import DECLINE_COLUMNS, OUTCOME_COLUMNS, Filters, Report
from ledger.store import LedgerNotReady
from web.charts import Bar, Segment, bar_chart, stacked_chart
from web.deps import settings_of
from web.i18n import Words, language_of
from web.rendering import render
from web.routes.reports import report_for
from web.security import SecureRoute, authenticated_session, to_login
from workflows.intake import REGIONS

log = structlog.get_logger(__name__)

router = APIRouter(route_class=SecureRoute, include_in_schema=False)


def read_filters(request: Request) -> tuple[Filters, dict[str, str]]:
    """The filters of the query string, and an error key per field that was not understood (then ignored)."""
    q = request.query_params
    errors: dict[str, str] = {}

    def day(name: str) -> date | None:
        text = (q.get(name) or "").strip()
        if not text:
            return None
        try:
            return date.fromisoformat(text)
        except ValueError:
            errors[name] = "err_day"
            return None

    region = (q.get("region") or "").strip() or None
    if region is not None and region not in REGIONS:
        errors["region"] = "err_choice"
        region = None
    return Filters(date_from=day("from"), date_to=day("to"), region=region), errors


def _query(filters: Filters) -> str:
    pairs = [("from", filters.date_from), ("to", filters.date_to), ("region", filters.region)]
    return urlencode([(k, str(v)) for k, v in pairs if v])


def _number(value: Any) -> int | None:
    return value if isinstance(value, int) else None


def _hours(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def charts(report: Report, words: Words, rtl: bool) -> dict[str, Markup]:
    """The report's charts, labelled in the page's language."""
    desc = words.t("chart_desc")

    def bars(chart_id: str, title_key: str, rows: list[Any], kind: str) -> Markup:
        made = [Bar(words.label(kind, r.key), _number(r.count), str(r.count)) for r in rows]
        return bar_chart(chart_id, words.t(title_key), desc, made, rtl)

    urgencies = list(URGENCIES)
    months = [(m.month, [Segment(i, _number(m.by_urgency[u])) for i, u in enumerate(urgencies)]) for m in report.by_month]
    outcomes = [
        (words.label("services", o.service), [Segment(i, _number(o.by_outcome[c])) for i, c in enumerate(OUTCOME_COLUMNS)]) for o in report.outcomes
    ]
    waits = [
        Bar(words.label("urgency", r.key), round(r.median_hours) if r.median_hours is not None else None, _hours(r.median_hours))
        for r in report.acceptance_by_urgency
    ]
    return {
        "by_month": stacked_chart("c-month", words.t("rep_by_month"), desc, months, [words.label("urgency", u) for u in urgencies], rtl),
        "by_region": bars("c-region", "rep_by_region", report.by_region, "regions"),
        "by_sector": bars("c-sector", "rep_by_sector", report.by_sector, "sectors"),
        "by_indicator": bars("c-indicator", "rep_by_indicator", report.by_indicator, "indicators"),
        "by_age_group": bars("c-age", "rep_by_age_group", report.by_age_group, "age_group"),
        "acceptance": bar_chart("c-accept", words.t("rep_acceptance_urgency"), desc, waits, rtl),
        "outcomes": stacked_chart(
            "c-outcomes", words.t("rep_outcomes"), desc, outcomes, [words.label("service_outcomes", c) for c in OUTCOME_COLUMNS], rtl
        ),
    }


def _partner_names(request: Request) -> dict[str, str]:
    try:
        directory = load_directory(settings_of(request).referral_partners_file)
    except ConfigError as err:
        log.error("web_directory_unreadable", error=str(err))
        return {}
    return {p.id: p.name for p in directory.partners}


@router.get("/reports")
async def reports_page(request: Request) -> Response:
    session = authenticated_session(request)
    if session is None:
        return to_login(request)
    filters, errors = read_filters(request)
    lang = language_of(request)
    words = Words(lang, settings_of(request))
    context: dict[str, Any] = dict(
        session=session, csrf=session.csrf, filters=filters, errors=errors, regions=REGIONS, query=_query(filters),
        report=None, charts={}, partner_names={}, decline_columns=DECLINE_COLUMNS, outcome_columns=OUTCOME_COLUMNS,
        urgencies=URGENCIES, hours=_hours,
    )  # fmt: skip
    try:
        report = await report_for(request, filters)
    except LedgerNotReady as err:
        log.error("web_ledger_unavailable", error=str(err))
        return render(request, "reports.html", 503, **context)
    context.update(report=report, charts=charts(report, words, lang == "ar"), partner_names=_partner_names(request))
    return render(request, "reports.html", **context)


@router.get("/reports.csv")
async def reports_csv(request: Request) -> Response:
    session = authenticated_session(request)
    if session is None:
        return to_login(request)
    filters, _errors = read_filters(request)
    try:
        report = await report_for(request, filters)
    except LedgerNotReady as err:
        log.error("web_ledger_unavailable", error=str(err))
        return Response("the ledger is unavailable\n", status_code=503, media_type="text/plain; charset=utf-8")
    name = f"referral-report-{datetime.now(UTC):%Y-%m-%d}.csv"
    return Response(to_csv(report), media_type="text/csv; charset=utf-8", headers={"Content-Disposition": f'attachment; filename="{name}"'})
