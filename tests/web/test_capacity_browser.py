"""The partner's capacity page in a real browser (Debian's Chromium, Playwright), on a phone:
in French, Arabic (right to left) and English, axe-core finds no accessibility violation and
nothing overflows; a partner opens its "my organisation" link, says it is full for a service for
three days, sees since when, then says it has room again, all without logging in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from activities.partner_links import ORGANISATION_PATH, sign_organisation_link
from ledger import migrate
from ledger.capacity import CapacityStore
from tests.conftest import running_worker
from tests.web import test_browser
from tests.web.test_browser import CHROMIUM, PHONE_VIEWPORT, SCREENSHOTS, Site, fits_the_width, page_in, serving
from tests.web.test_reports_browser import axe_violations

browser = test_browser.browser  # the browser tests' fixture (module scope), reused

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium: run `make chromium`")

SECRET = "capacity-browser-secret-0123456789abcdef"
PARTNER = "cas-assoc"  # Casablanca: shelter and psychosocial support


@pytest.fixture
async def capacity_site(dev_env, make_settings, smtp) -> AsyncIterator[Site]:
    base = make_settings(partner_link_secret=SECRET)
    migrate.upgrade(base.ledger_url)
    async with running_worker(dev_env.client, base) as tq:
        settings = base.model_copy(update={"referral_task_queue": tq})
        async with serving(settings, dev_env.client) as url:
            yield Site(url, settings, dev_env.client)
        # The coordinators' notice of a FULL with an end waits for it: not left on the dev server.
        query = f"WorkflowType = 'CapacityNoticeWorkflow' AND ExecutionStatus = 'Running' AND TaskQueue = '{tq}'"
        async for running in dev_env.client.list_workflows(query):
            await dev_env.client.get_workflow_handle(running.id, run_id=running.run_id).terminate("test over")


def organisation_url(site: Site, lang: str) -> str:
    token = sign_organisation_link(SECRET, PARTNER, datetime.now(UTC) + timedelta(hours=1))
    return f"{site.url}{ORGANISATION_PATH}{token}?lang={lang}"


@pytest.mark.parametrize("lang", ["fr", "ar", "en"])
async def test_capacity_page_reads_well_on_a_phone(browser, capacity_site: Site, lang: str) -> None:
    async with page_in(browser, PHONE_VIEWPORT) as page:
        await page.goto(organisation_url(capacity_site, lang))
        assert await page.locator("html").get_attribute("dir") == ("rtl" if lang == "ar" else "ltr")
        assert await page.locator("html").get_attribute("lang") == lang
        assert await page.locator("section.answer").count() >= 2  # each service, then all of them
        assert await axe_violations(page) == []
        assert await fits_the_width(page)
        await page.screenshot(path=str(SCREENSHOTS / f"capacity-{lang}.png"), full_page=True)


async def test_a_partner_says_full_for_three_days_then_open_again(browser, capacity_site: Site) -> None:
    async with page_in(browser, PHONE_VIEWPORT) as page:
        await page.goto(organisation_url(capacity_site, "fr"))
        shelter = page.locator("section.answer", has_text="Hébergement").first
        await shelter.locator("select[name=days]").select_option("3")
        await shelter.get_by_role("button", name="Complet").click()
        await page.wait_for_url("**result=full*")
        assert "Enregistré : complet." in await page.locator("[role=status]").inner_text()
        shelter = page.locator("section.answer", has_text="Hébergement").first
        assert "Complet depuis le" in await shelter.inner_text()
        assert await axe_violations(page) == []

        await shelter.get_by_role("button", name="Disponible").click()
        await page.wait_for_url("**result=open*")
        assert "Complet depuis" not in await page.locator("section.answer", has_text="Hébergement").first.inner_text()

    changes = CapacityStore.from_settings(capacity_site.settings).changes_of([PARTNER])[PARTNER]
    assert [(c.state, c.service, c.channel, c.until is not None) for c in changes] == [("full", "shelter", "web", True), ("open", "shelter", "web", False)]
