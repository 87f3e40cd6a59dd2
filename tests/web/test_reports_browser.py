"""The reports page in a real browser (Debian's Chromium, as tests/web/test_browser.py): in French,
Arabic and English, axe-core finds no accessibility violation, nothing overflows a phone, and the
print layout keeps only the report. axe-core is the copy the `axe-playwright-python` package
pins (a test dependency): nothing is fetched at run time.

Screenshots go to REFERRAL_SCREENSHOTS (default /tmp): reports-<lang>.png, the whole page, and
reports-<lang>-top.png, its first 1900 pixels. docs/reports.png in the README is reports-fr-top.png,
compared by eye with the others when the page changes.
"""

from __future__ import annotations

import pytest

from ledger import migrate
from ledger.store import LedgerStore
from tests.ledger.test_reports import LEDGER
from tests.web import test_browser
from tests.web.test_browser import CHROMIUM, HASH, LAPTOP_VIEWPORT, PHONE_VIEWPORT, SCREENSHOTS, Site, fits_the_width, log_in, page_in, serving

browser = test_browser.browser  # the browser tests' fixture (module scope), reused

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium: run `make chromium`")

# Rules axe reports that no page of ours may break; all of axe's WCAG 2.x A and AA rules and its best practices.
AXE_OPTIONS = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"]}, "resultTypes": ["violations"]}


@pytest.fixture
async def report_site(dev_env, make_settings):
    settings = make_settings(coordinator_logins=f"amina:{HASH}", web_session_secret="reports-browser-secret-0123456789", referral_timezone="UTC")
    migrate.upgrade(settings.ledger_url)
    store = LedgerStore.from_settings(settings)
    for record in LEDGER:
        store.upsert(record)
    async with serving(settings, dev_env.client) as url:
        yield Site(url, settings, dev_env.client)


async def axe_violations(page) -> list[dict]:
    from axe_playwright_python.base import AXE_SCRIPT

    await page.evaluate(AXE_SCRIPT)
    result = await page.evaluate(f"axe.run(document, {AXE_OPTIONS!r})".replace("'", '"'))
    return [{"id": v["id"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"]][:5]} for v in result["violations"]]


@pytest.mark.parametrize("lang", ["fr", "ar", "en"])
async def test_reports_page_in_a_browser(browser, report_site, lang: str) -> None:
    async with page_in(browser, LAPTOP_VIEWPORT) as page:
        await log_in(page, report_site, "/reports")
        await page.goto(f"{report_site.url}/reports?lang={lang}")
        assert await page.locator("html").get_attribute("dir") == ("rtl" if lang == "ar" else "ltr")
        assert await page.locator("svg.chart").count() == 7
        assert await axe_violations(page) == []
        await page.screenshot(path=str(SCREENSHOTS / f"reports-{lang}.png"), full_page=True)
        await page.screenshot(path=str(SCREENSHOTS / f"reports-{lang}-top.png"), full_page=True, clip={"x": 0, "y": 0, "width": 1280, "height": 1900})

        # Paper: the header, filters and download link are left out; charts and tables stay.
        await page.emulate_media(media="print")
        assert not await page.locator("header.top").is_visible()
        assert not await page.locator("form.report-filters").is_visible()
        assert await page.locator("svg.chart").first.is_visible() and await page.locator("table.report").first.is_visible()
        await page.emulate_media(media="screen")

        # The filters work without script: a region chosen, the form sent.
        await page.select_option("#f-region", "souss-massa")
        await page.click("form.report-filters button[type=submit]")
        await page.wait_for_url("**region=souss-massa**")
        assert await page.locator("table.report").first.is_visible()
        assert await axe_violations(page) == []


async def test_reports_page_fits_a_phone(browser, report_site) -> None:
    async with page_in(browser, PHONE_VIEWPORT) as page:
        await log_in(page, report_site, "/reports")
        for lang in ("fr", "ar"):
            await page.goto(f"{report_site.url}/reports?lang={lang}")
            assert await fits_the_width(page), lang
            assert await axe_violations(page) == []
