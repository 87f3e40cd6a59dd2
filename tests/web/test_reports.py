"""The reports' web surfaces over a hand-made ledger (tests/ledger/test_reports.py's): `GET /api/reports`
(bearer, JSON, always suppressed), the `/reports` page in three languages and its CSV download."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from ledger import migrate
from ledger.report_output import to_csv
from ledger.reports import HIDDEN, Filters, build_report
from ledger.store import LedgerStore
from tests.ledger.test_reports import LEDGER
from tests.web.test_forms import TOKENS, browser_like, log_in, web_settings
from web.security import SECURITY_HEADERS

TOKEN = TOKENS.split(",")[0]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def settings(make_settings):
    return web_settings(make_settings, referral_timezone="UTC")


@pytest.fixture
def filled(settings) -> LedgerStore:
    migrate.upgrade(settings.ledger_url)
    store = LedgerStore.from_settings(settings)
    for record in LEDGER:
        store.upsert(record)
    return store


def _without_time(report: dict) -> dict:
    return {k: v for k, v in report.items() if k != "generated_at"}


async def test_api_report_is_the_suppressed_report(settings, filled) -> None:
    async with browser_like(settings) as http:
        assert (await http.get("/api/reports")).status_code == 401
        r = await http.get("/api/reports", headers=AUTH)
        assert r.status_code == 200, r.text
        expected = build_report(LEDGER, Filters(), tz=UTC, now=datetime.now(UTC)).model_dump(mode="json")
        assert _without_time(r.json()) == _without_time(expected)
        assert r.json()["suppressed"] is True and r.json()["by_region"][1] == {"key": "souss-massa", "count": HIDDEN}

        r = await http.get("/api/reports", params={"from": "2026-02-01", "to": "2026-02-28", "region": "oriental"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["referrals"] == 5
        assert r.json()["filters"] == {"date_from": "2026-02-01", "date_to": "2026-02-28", "region": "oriental"}
        r = await http.get("/api/reports", params={"from": "2026-03-01", "to": "2026-02-01"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["referrals"] == 0  # an empty period, not an error

        for params, field in (({"from": "2026-02-30"}, "from"), ({"to": "soon"}, "to"), ({"region": "atlantis"}, "region")):
            r = await http.get("/api/reports", params=params, headers=AUTH)
            assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == [field], r.text
            assert "atlantis" not in r.text and "soon" not in r.text


@pytest.fixture
def not_set_up(settings, tmp_path: Path):
    """A ledger database nobody migrated (the tests' settings come with a migrated one)."""
    return settings.model_copy(update={"ledger_database_url": SecretStr(f"sqlite:///{tmp_path / 'never-migrated.sqlite3'}")})


async def test_api_says_when_the_ledger_is_not_set_up(not_set_up) -> None:
    async with browser_like(not_set_up) as http:
        r = await http.get("/api/reports", headers=AUTH)
        assert r.status_code == 503
        assert r.json() == {"errors": [{"field": "(server)", "message": "the ledger database has no tables: run `referral ledger upgrade`"}]}


async def test_page_needs_a_login(settings, filled) -> None:
    async with browser_like(settings) as http:
        for path in ("/reports", "/reports.csv"):
            r = await http.get(path)
            assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")


@pytest.mark.parametrize(
    ("lang", "title", "direction"),
    [("fr", "Statistiques des orientations", "ltr"), ("ar", "إحصاءات الإحالات", "rtl"), ("en", "Referral statistics", "ltr")],
)
async def test_page_shows_charts_and_tables_in_each_language(settings, filled, lang, title, direction) -> None:
    async with browser_like(settings) as http:
        await log_in(http, next_url="/reports")
        r = await http.get("/reports", params={"lang": lang})
        assert r.status_code == 200
        html = r.text
        assert f'<html lang="{lang}" dir="{direction}">' in html and f"<h1>{title}</h1>" in html
        for name, value in SECURITY_HEADERS.items():
            assert r.headers[name] == value
        assert html.count('<svg class="chart" role="img"') == 7 and "<script" not in html and "style=" not in html
        assert '<bdi dir="ltr">&lt;5</bdi>' in html  # a suppressed cell
        assert ('direction="rtl"' in html) == (lang == "ar")
        if lang == "ar":
            assert "الشرق" in html  # the region's name in Arabic, in the chart and the table
        assert 'href="/reports.csv"' in html and 'href="/static/forms/reports.css"' in html


async def test_page_filters_and_their_errors(settings, filled) -> None:
    async with browser_like(settings) as http:
        await log_in(http, next_url="/reports")
        r = await http.get("/reports", params={"from": "2026-02-01", "region": "oriental", "lang": "en"})
        assert r.status_code == 200 and "5 referrals started in the period" in r.text
        assert 'href="/reports.csv?from=2026-02-01&amp;region=oriental"' in r.text
        r = await http.get("/reports", params={"from": "31/01/2026", "lang": "en"})
        assert r.status_code == 200 and 'id="e-from"' in r.text and "Enter a date as YYYY-MM-DD." in r.text
        assert "13 referrals started in the period" in r.text  # the filter not understood is left out


async def test_csv_download_is_the_report_csv(settings, filled) -> None:
    async with browser_like(settings) as http:
        await log_in(http, next_url="/reports")
        r = await http.get("/reports.csv", params={"to": "2026-01-31"})
        assert r.status_code == 200 and r.headers["content-type"] == "text/csv; charset=utf-8"
        assert r.headers["content-disposition"].startswith('attachment; filename="referral-report-')
        expected = to_csv(build_report(LEDGER, Filters(date_to=date(2026, 1, 31)), tz=UTC, now=datetime.now(UTC)))
        strip = lambda text: [line for line in text.splitlines() if not line.startswith("report,generated_at,")]  # noqa: E731
        assert strip(r.text) == strip(expected)
        assert "by_month,2026-01,urgent,<5" in r.text.splitlines()


async def test_page_when_the_ledger_is_not_set_up(not_set_up) -> None:
    async with browser_like(not_set_up) as http:
        await log_in(http, next_url="/reports")
        r = await http.get("/reports", params={"lang": "en"})
        assert r.status_code == 503 and "The ledger is unavailable for the moment." in r.text
        assert (await http.get("/reports.csv")).status_code == 503
