"""Erasing a person's data from the referral page, in a real browser (Debian's Chromium driven by
Playwright, as tests/web/test_browser.py): the section reads well in French, Arabic (right to
left) and English with no accessibility violation axe-core finds; a wrong code typed erases
nothing and says so; the right one erases, and the page then says who erased it and when.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from starter import erasure, referrals
from tests.cases import NOTES, PHONE, PSEUDONYM, adult_intake
from tests.conftest import wait_for
from tests.web import test_browser
from tests.web.test_browser import CHROMIUM, LAPTOP_VIEWPORT, PHONE_VIEWPORT, SCREENSHOTS, Site, fits_the_width, log_in, page_in
from tests.web.test_reports_browser import axe_violations
from workflows.models import CoordinatorAction

browser = test_browser.browser  # the browser tests' fixtures, reused
site = test_browser.site

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed at /usr/bin/chromium: run `make chromium`")

ERASE_TIMEOUT_MS = 90_000  # the erasure closes the referral and deletes its runs: about 25 s here

WORDS = {
    "fr": ("Effacer les données de la personne", "L'effacement est irréversible", "Effacer aussi définitivement les données de la personne"),
    "ar": ("محو بيانات الشخص", "لا يمكن التراجع عن المحو", "محو بيانات الشخص نهائيًا أيضًا"),
    "en": ("Erase the person's data", "Erasure cannot be undone", "Also erase the person's data for good"),
}


async def started(site: Site) -> str:
    intake = adult_intake(external_ref=f"ERASE-BROWSER-{uuid.uuid4().hex[:12]}")
    code = (await referrals.start_referral(site.client, intake, site.settings.referral_task_queue)).code

    async def moved_on() -> bool:
        return (await referrals.get_status(site.client, code)).stage != "identification"

    await wait_for(moved_on, timeout=30)
    return code


def assert_nothing_about_the_person(text: str) -> None:
    for secret in (PSEUDONYM, PHONE, "0650123456", NOTES[:20]):
        assert secret not in text


@pytest.mark.parametrize("lang", ["fr", "ar", "en"])
async def test_the_erase_section_reads_well(browser, site: Site, lang: str) -> None:
    code = await started(site)
    try:
        async with page_in(browser, LAPTOP_VIEWPORT) as page:
            await log_in(page, site, f"/referrals/{code}")
            await page.goto(f"{site.url}/referrals/{code}?lang={lang}")
            assert await page.get_attribute("html", "dir") == ("rtl" if lang == "ar" else "ltr")
            title, warning, box = WORDS[lang]
            assert (await page.text_content("#erase h2")).strip() == title
            assert warning in await page.text_content("#erase-warning")
            assert box in await page.text_content("label[for=w-erase]")
            assert not await page.is_checked("#w-erase")  # the withdrawal keeps the data unless asked
            assert f"R-{code}" in await page.text_content("label[for=e-code]")
            # The code is typed left to right, also in the Arabic page.
            assert await page.evaluate("getComputedStyle(document.querySelector('#e-code')).direction") == "ltr"
            assert await axe_violations(page) == []
            await page.set_viewport_size(PHONE_VIEWPORT)
            assert await fits_the_width(page)
            await page.locator("#erase").screenshot(path=str(SCREENSHOTS / f"erase-section-{lang}-phone.png"))
            await page.locator("#withdraw-form").screenshot(path=str(SCREENSHOTS / f"erase-withdrawal-{lang}-phone.png"))
    finally:
        await referrals.coordinator_action(site.client, code, CoordinatorAction(action="cancel"))


async def test_a_wrong_code_erases_nothing_the_right_one_erases(browser, site: Site) -> None:
    code = await started(site)
    async with page_in(browser, LAPTOP_VIEWPORT) as page:
        await log_in(page, site, f"/referrals/{code}")
        await page.goto(f"{site.url}/referrals/{code}?lang=fr")

        # The browser itself asks for the reason and the code before sending.
        await page.click("#erase button[type=submit]")
        assert page.url == f"{site.url}/referrals/{code}?lang=fr"
        assert not await page.evaluate("document.querySelector('#e-reason').validity.valid")

        await page.fill("#e-reason", "Demande de la personne, ticket DPO 31")
        await page.fill("#e-code", "R-33333")
        await page.click("#erase button[type=submit]")
        await page.wait_for_url(f"**/referrals/{code}?rejected=erase_confirm")
        assert "rien n'a été effacé" in await page.text_content("#rejected-note")
        assert await page.get_attribute("#stage", "data-stage") in ("notification", "awaiting_acceptance")
        assert await asyncio.to_thread(erasure.erasure_state, site.settings, code) is None
        assert (await referrals.get_status(site.client, code)).closed_reason is None

        await page.fill("#e-reason", "Demande de la personne, ticket DPO 31")
        await page.fill("#e-code", code.lower())
        await page.click("#erase button[type=submit]", timeout=ERASE_TIMEOUT_MS)  # waits for the answer
        await page.wait_for_url(f"**/referrals/{code}?done=erase", timeout=ERASE_TIMEOUT_MS)
        assert (await page.text_content("h1")).strip() == f"R-{code} : données effacées"
        assert "Les données de la personne ont été effacées." in await page.text_content("#done-note")
        text = await page.text_content("#erased-text")
        assert text.startswith(f"R-{code} a été effacée le ") and text.endswith(" par amina.")
        assert_nothing_about_the_person(await page.content())
        assert await axe_violations(page) == []
        with pytest.raises(referrals.ReferralNotFound):
            await referrals.get_status(site.client, code)

        # The page of the erased referral, in each language: 410, who and when, nothing else.
        for lang, said in (("ar", "من طرف"), ("en", "was erased on"), ("fr", "a été effacée le")):
            response = await page.goto(f"{site.url}/referrals/{code}?lang={lang}")
            assert response is not None and response.status == 410
            assert said in await page.text_content("#erased-text") and "amina" in await page.text_content("#erased-text")
            assert await page.locator("form[action$='/erase']").count() == 0
            assert_nothing_about_the_person(await page.content())
            assert await axe_violations(page) == []
            await page.set_viewport_size(PHONE_VIEWPORT)
            assert await fits_the_width(page)
            await page.screenshot(path=str(SCREENSHOTS / f"erased-{lang}-phone.png"), full_page=True)
            await page.set_viewport_size(LAPTOP_VIEWPORT)
