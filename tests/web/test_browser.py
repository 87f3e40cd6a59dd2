"""The web form in a real browser: Debian's headless Chromium driven by Playwright.

The app runs under uvicorn on a free loopback port, in a background thread, against the dev
server and a real worker. Playwright never downloads a browser here: `make test` installs
Debian's chromium first (`make chromium`); without /usr/bin/chromium these tests are skipped.
Screenshots go to /tmp (REFERRAL_SCREENSHOTS overrides), never into the repository.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from config.settings import Settings
from starter import referrals
from tests.cases import NOTES, PHONE, PSEUDONYM
from tests.conftest import free_port, running_worker, wait_for
from web import security
from web.app import create_app
from workflows.models import CoordinatorAction

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = Path(os.environ.get("REFERRAL_SCREENSHOTS", "/tmp"))
PASSWORD = "mot de passe de test"
HASH = security.hash_password(PASSWORD)
PHONE_VIEWPORT = {"width": 390, "height": 844}
LAPTOP_VIEWPORT = {"width": 1280, "height": 900}

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed at /usr/bin/chromium: run `make chromium` (apt-get install chromium)",
)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        await chromium.close()


@dataclass
class Site:
    url: str
    settings: Settings
    client: object


@asynccontextmanager
async def serving(settings: Settings, client) -> AsyncIterator[str]:
    """uvicorn on 127.0.0.1:<free port> in a thread of its own; stopped on the way out."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, client=client), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        while thread.is_alive():
            await asyncio.sleep(0.05)


@pytest.fixture
async def site(dev_env, make_settings, smtp) -> AsyncIterator[Site]:
    base = make_settings(coordinator_logins=f"amina:{HASH}", web_session_secret="browser-test-secret-0123456789")
    async with running_worker(dev_env.client, base) as tq:
        settings = base.model_copy(update={"referral_task_queue": tq})
        async with serving(settings, dev_env.client) as url:
            yield Site(url, settings, dev_env.client)


@asynccontextmanager
async def page_in(browser, viewport=LAPTOP_VIEWPORT, locale: str = "fr-FR") -> AsyncIterator[object]:
    context = await browser.new_context(viewport=viewport, locale=locale)
    page = await context.new_page()
    page.set_default_timeout(15_000)
    try:
        yield page
    finally:
        await context.close()


async def fits_the_width(page) -> bool:
    """Nothing pushes the page sideways (a phone would need horizontal scrolling)."""
    return await page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


async def log_in(page, site: Site, next_path: str = "/referrals/new") -> None:
    await page.goto(f"{site.url}{next_path}")
    assert "/login" in page.url
    await page.fill("#f-login", "amina")
    await page.fill("#f-password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{site.url}{next_path}*")


async def fill_adult_case(page, external_ref: str, phone: str = "0650123456", needs=("shelter", "medical", "legal"), consent: str = "yes") -> None:
    """A realistic adult case, typed as a labour inspector would, in French."""
    await page.fill("#f-external_ref", external_ref)
    await page.select_option("#f-identified_by-agency", "labour_inspectorate")
    await page.fill("#f-identified_by-officer_id", "LI-0231")
    await page.select_option("#f-identified_by-region", "casablanca-settat")
    await page.fill("#f-identified_at", "2026-11-28T09:30")
    await page.fill("#f-timezone", "+01:00")
    await page.select_option("#f-sector", "agriculture")
    for indicator in ("retention_of_identity_documents", "withholding_of_wages", "debt_bondage"):
        await page.check(f"#f-indicators-{indicator}")
    await page.fill("#f-person-pseudonym", PSEUDONYM)
    await page.select_option("#f-person-age_group", "adult")
    await page.select_option("#f-person-sex", "female")
    await page.fill("#f-person-nationality", "CI")
    await page.fill("#f-person-languages", "fr, bm")
    await page.fill("#f-person-contact_phone", phone)
    for need in needs:
        await page.check(f"#f-needs-{need}")
    await page.check(f"#f-consent-given-{consent}")
    await page.fill("#f-consent-recorded_by", "LI-0231")
    await page.fill("#f-consent-recorded_at", "2026-11-28T09:40")
    await page.fill("#f-notes", NOTES)


async def test_log_in_fill_in_french_submit_and_follow_the_referral(browser, site: Site) -> None:
    external_ref = f"INSP-CAS-{time.time_ns() % 10**9}"
    async with page_in(browser) as page:
        await log_in(page, site)
        assert await page.get_attribute("html", "lang") == "fr"
        assert await page.text_content("h1") == "Nouvelle orientation"
        await fill_adult_case(page, external_ref)
        await page.click(".submit button")
        await page.wait_for_url("**/referrals/*?created=1")

        code = referrals.referral_code(external_ref)
        assert page.url.endswith(f"/referrals/{code}?created=1")
        assert (await page.text_content("#created-note .code")).strip() == f"R-{code}"
        body = await page.text_content("body")
        for secret in (PSEUDONYM, PHONE, "0650123456", NOTES[:20]):
            assert secret not in body

        # The stage moves on by itself: reload until it leaves identification
        async def stage() -> str | None:
            await page.goto(f"{site.url}/referrals/{code}")
            value = await page.get_attribute("#stage", "data-stage")
            return value if value != "identification" else None

        reached = await wait_for(stage, timeout=30, interval=0.5)
        assert reached in ("notification", "awaiting_acceptance")
        assert (await page.text_content("#stage")).strip() in ("Notification des partenaires", "En attente d'acceptation")
        for service in ("shelter", "medical", "legal"):
            assert await page.is_visible(f"#service-{service}")
        await page.screenshot(path=str(SCREENSHOTS / "referral-page-fr.png"), full_page=True)
        await page.set_viewport_size(PHONE_VIEWPORT)
        assert await fits_the_width(page)
        await page.goto(f"{site.url}/referrals/{code}?lang=ar")
        assert await fits_the_width(page)
        await page.screenshot(path=str(SCREENSHOTS / "referral-page-ar-phone.png"), full_page=True)
        await page.set_viewport_size(LAPTOP_VIEWPORT)
        await page.goto(f"{site.url}/referrals/{code}?lang=fr")

        # The same reference again: the existing referral, with a note saying so
        await page.goto(f"{site.url}/referrals/new")
        await fill_adult_case(page, external_ref)
        await page.click(".submit button")
        await page.wait_for_url(f"**/referrals/{code}?existing=1")
        assert "avait déjà été enregistrée" in await page.text_content("#existing-note")

        # Closing a service asks how it ended: the browser does not send the form without it
        await page.goto(f"{site.url}/referrals/{code}")
        close_legal = page.locator("#service-legal form.close-service button")
        await close_legal.click()
        assert not await page.evaluate("document.querySelector('#outcome-choice-legal').validity.valid")
        assert page.url == f"{site.url}/referrals/{code}"
        await page.select_option("#outcome-choice-legal", "not_needed")
        await close_legal.click()
        await page.wait_for_url(f"**/referrals/{code}?done=close_service")
        assert (await page.text_content("#outcome-legal")).strip() == "plus nécessaire"

        # A coordinator action from the page: cancel, with the confirmation box (no outcome needed)
        await page.goto(f"{site.url}/referrals/{code}")
        await page.check("#f-confirm")
        await page.click("button[value=cancel]")
        await page.wait_for_url(f"**/referrals/{code}?done=cancel")
        assert "Orientation annulée." in await page.text_content("#done-note")
        assert await page.get_attribute("#stage", "data-stage") == "closed"


async def test_arabic_form_renders_right_to_left(browser, site: Site) -> None:
    async with page_in(browser, viewport=LAPTOP_VIEWPORT) as page:
        await log_in(page, site)
        await page.goto(f"{site.url}/referrals/new?lang=ar")
        assert await page.get_attribute("html", "dir") == "rtl"
        assert await page.get_attribute("html", "lang") == "ar"
        assert await page.evaluate("getComputedStyle(document.body).direction") == "rtl"
        assert await page.text_content("h1") == "إحالة جديدة"
        assert "حماية الطفولة" in await page.text_content("#f-needs")  # a service label from config/messages/ar.po
        # Right to left really: the submit button sits on the right-hand side of the form
        form = await page.locator("form.intake").bounding_box()
        button = await page.locator(".submit button").bounding_box()
        assert button["x"] > form["x"] + form["width"] / 2
        # Codes and numbers stay left to right inside the right-to-left page
        assert await page.evaluate("getComputedStyle(document.querySelector('#f-person-contact_phone')).direction") == "ltr"
        assert await fits_the_width(page)
        await page.screenshot(path=str(SCREENSHOTS / "form-ar.png"), full_page=True)
        await page.set_viewport_size(PHONE_VIEWPORT)
        assert await fits_the_width(page)
        await page.screenshot(path=str(SCREENSHOTS / "form-ar-phone.png"), full_page=True)

        # The language sticks (cookie) on the next page
        await page.goto(f"{site.url}/referrals")
        assert await page.get_attribute("html", "dir") == "rtl"


async def test_form_with_errors_shows_each_beside_its_field_and_keeps_what_was_typed(browser, site: Site) -> None:
    external_ref = f"INSP-ERR-{time.time_ns() % 10**9}"
    async with page_in(browser, viewport=PHONE_VIEWPORT) as page:
        await log_in(page, site)
        assert await fits_the_width(page)
        await page.screenshot(path=str(SCREENSHOTS / "form-fr-phone.png"), full_page=True)
        # Bad phone, an adult without consent, no needs
        await fill_adult_case(page, external_ref, phone="12345", needs=(), consent="no")
        await page.click(".submit button")
        await page.wait_for_load_state()
        assert page.url.endswith("/referrals/new")

        expected = {
            "#f-person-contact_phone": "Numéro de téléphone invalide.",
            "#f-consent-given": "Le consentement de la personne est requis",
            "#f-needs": "Choisissez au moins un service.",
        }
        for control, message in expected.items():
            # The error sits inside the same field container as the control it is about
            container = page.locator(f".field:has({control}), fieldset.field{control}").first
            assert message in await container.locator(".error").text_content(), control
            assert await page.get_attribute(control, "aria-invalid") == "true"
        assert await page.locator(".field .error").count() == 3
        assert await page.is_visible("#error-summary")

        # Everything typed is still there
        assert await page.input_value("#f-external_ref") == external_ref
        assert await page.input_value("#f-person-pseudonym") == PSEUDONYM
        assert await page.input_value("#f-person-contact_phone") == "12345"
        assert await page.input_value("#f-person-languages") == "fr, bm"
        assert await page.input_value("#f-notes") == NOTES
        assert await page.input_value("#f-identified_at") == "2026-11-28T09:30"
        assert await page.input_value("#f-identified_by-region") == "casablanca-settat"
        assert await page.is_checked("#f-indicators-debt_bondage")
        assert await page.is_checked("#f-consent-given-no")
        assert not await page.is_checked("#f-consent-given-yes")
        assert await fits_the_width(page)
        await page.screenshot(path=str(SCREENSHOTS / "form-fr-phone-errors.png"), full_page=True)

        # Nothing started
        with pytest.raises(referrals.ReferralNotFound):
            await referrals.get_status(site.client, referrals.referral_code(external_ref))

        # Corrected, it goes through
        await page.fill("#f-person-contact_phone", "+212 650 12 34 56")
        await page.check("#f-consent-given-yes")
        await page.check("#f-needs-shelter")
        await page.click(".submit button")
        await page.wait_for_url("**/referrals/*?created=1")
        code = referrals.referral_code(external_ref)
        await referrals.coordinator_action(site.client, code, CoordinatorAction(action="cancel"))


async def test_pages_without_login_redirect_to_login(browser, site: Site) -> None:
    async with page_in(browser) as page:
        for path in ("/referrals/new", "/referrals", "/referrals/7K3Q9"):
            await page.goto(f"{site.url}{path}")
            assert page.url.startswith(f"{site.url}/login?next=")
            assert await page.is_visible("#f-password")
        # A wrong password: a generic message, still on the login page
        await page.fill("#f-login", "amina")
        await page.fill("#f-password", "wrong")
        await page.click("button[type=submit]")
        assert "Identifiant ou mot de passe incorrect." in await page.text_content("#login-error")
        # Log in, then log out: the pages are closed again
        await page.fill("#f-password", PASSWORD)
        await page.click("button[type=submit]")
        await page.wait_for_url("**/referrals/7K3Q9")
        await page.click(".logout button")
        await page.wait_for_url("**/login?bye=1")
        await page.goto(f"{site.url}/referrals/new")
        assert "/login?next=" in page.url
