"""The partner details page (issue 4): signed links from the offer email, details after acceptance only."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import get_args

import httpx
import pytest
from temporalio.client import Client

from activities.directory import load_directory
from activities.partner_links import (
    PartnerLinkExpired,
    PartnerLinkInvalid,
    partner_link,
    sign_partner_link,
    verify_partner_link,
)
from activities.sms import read_outbox
from config.settings import Settings
from infra.signing import Signing
from infra.translations import LANGUAGES, PACKAGED_MESSAGES_DIR, translations
from starter import referrals
from tests.cases import NOTES, PHONE, PSEUDONYM, adult_intake
from tests.conftest import running_worker, wait_for
from tests.fixtures import PARTNERS_FILE
from web.app import create_app
from web.security import SECURITY_HEADERS
from workflows.intake import Person
from workflows.models import CoordinatorAction

SECRET = "partner-link-test-secret-0123456789abcdef"
BASE = "http://testserver"
DIRECTORY = load_directory(PARTNERS_FILE)
LINK = re.compile(r"http://testserver/p/[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+(?:\?lang=[a-z]{2})?")
NONCE = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Site:
    http: httpx.AsyncClient
    settings: Settings
    client: Client


def _client(settings: Settings, client: Client) -> httpx.AsyncClient:
    app = create_app(settings, client=client)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)


@pytest.fixture
async def site(dev_env, make_settings) -> AsyncIterator[Site]:
    settings = make_settings(partner_link_secret=SECRET, public_base_url=BASE)
    async with running_worker(dev_env.client, settings) as tq:
        settings = make_settings(partner_link_secret=SECRET, public_base_url=BASE, referral_task_queue=tq)
        async with _client(settings, dev_env.client) as http:
            yield Site(http, settings, dev_env.client)


async def start(site: Site, *needs: str) -> str:
    started = await referrals.start_referral(site.client, adult_intake(needs=list(needs)), site.settings.referral_task_queue)
    return started.code


async def finish(site: Site, code: str) -> None:
    try:
        await referrals.coordinator_action(site.client, code, CoordinatorAction(action="cancel"))
    except referrals.ReferralRejected:
        pass
    await site.client.get_workflow_handle(referrals.workflow_id(code)).result()


def emailed_link(smtp, partner_id: str, code: str) -> str | None:
    """The link in the offer email this partner received for this referral."""
    for msg in smtp.to(DIRECTORY.partner(partner_id).email):
        if f"R-{code}" in msg["Subject"]:
            found = LINK.search(msg.get_content())
            if found:
                return found.group(0).removeprefix(BASE)
    return None


def assert_no_personal_data(text: str) -> None:
    for secret in (PSEUDONYM, PHONE, PHONE[4:], NOTES[:20]):
        assert secret not in text


def assert_private_headers(r: httpx.Response) -> None:
    assert r.headers["Cache-Control"] == "no-store"
    assert r.headers["Pragma"] == "no-cache"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["X-Robots-Tag"].startswith("noindex")
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    # One policy for every page: the coordinators' strict CSP, no inline style, no script.
    for name, value in SECURITY_HEADERS.items():
        assert r.headers[name] == value, name
    assert "unsafe-inline" not in r.headers["Content-Security-Policy"]
    if r.headers.get("content-type", "").startswith("text/html"):
        assert "<style" not in r.text and " style=" not in r.text and "<script" not in r.text.lower()


def nonce(page: httpx.Response) -> str:
    found = NONCE.search(page.text)
    assert found, page.text
    return found.group(1)


# --- links -----------------------------------------------------------------------------------


def test_links_are_signed_bound_and_expiring():
    now = datetime.now(UTC)
    token = sign_partner_link(SECRET, "7K3Q9", "cas-assoc", now + timedelta(hours=1))
    assert verify_partner_link(SECRET, token, now) == ("7K3Q9", "cas-assoc")
    assert "cas-assoc" not in token and "7K3Q9" not in token  # opaque, though not secret
    with pytest.raises(PartnerLinkExpired):
        verify_partner_link(SECRET, token, now + timedelta(hours=1, seconds=1))
    with pytest.raises(PartnerLinkInvalid):
        verify_partner_link("another-secret-of-sufficient-length-000", token, now)
    with pytest.raises(PartnerLinkInvalid):
        verify_partner_link(None, token, now)
    # Rebinding the payload to another partner or referral breaks the signature.
    payload, mac = token.split(".")
    decoded = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)).decode()
    for forged in (decoded.replace("cas-assoc", "cas-clinic"), decoded.replace("7K3Q9", "7K3Q4")):
        assert forged != decoded
        forged_payload = base64.urlsafe_b64encode(forged.encode()).rstrip(b"=").decode()
        with pytest.raises(PartnerLinkInvalid):
            verify_partner_link(SECRET, f"{forged_payload}.{mac}", now)
    for junk in ("", ".", "abc", "a.b.c", token + "x", token.replace(".", "")):
        with pytest.raises(PartnerLinkInvalid):
            verify_partner_link(SECRET, junk, now)
    # The same fields signed under the same secret for another purpose (e.g. the form nonce's
    # or a session's) are no link.
    for purpose in ("partner-form", "web-session"):
        other = Signing(SECRET, purpose).sign(["7K3Q9", "cas-assoc"], (now + timedelta(hours=1)).timestamp())
        with pytest.raises(PartnerLinkInvalid):
            verify_partner_link(SECRET, other, now)
    assert partner_link(BASE, None, 72, "7K3Q9", "cas-assoc") is None
    assert partner_link(BASE, SECRET, 72, "7K3Q9", "ori-assoc", "ar").endswith("?lang=ar")
    # Short enough for any email client to keep on one line.
    longest = partner_link("https://referrals.example.org", SECRET, 72, "7K3Q9", "nat-shelter-amal", "ar")
    assert longest is not None and len(longest) < 160


# --- the page --------------------------------------------------------------------------------


async def test_emailed_link_shows_the_offer_then_details_after_accepting(site, smtp):
    code = await start(site, "shelter", "medical")
    link = await wait_for(lambda: emailed_link(smtp, "cas-assoc", code))

    page = await site.http.get(link)
    assert page.status_code == 200, page.text
    assert_private_headers(page)
    assert f"R-{code}" in page.text and "hébergement" in page.text and "Casablanca-Settat" in page.text
    assert 'lang="fr"' in page.text and 'dir="ltr"' in page.text
    assert_no_personal_data(page.text)
    assert f'action="{link}/accept"' in page.text
    assert '<link rel="stylesheet" href="/static/forms/partner.css">' in page.text
    css = await site.http.get("/static/forms/partner.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css") and "section.person" in css.text

    accepted = await site.http.post(f"{link}/accept", data={"csrf": nonce(page), "service": "shelter", "lang": "fr"})
    assert accepted.status_code == 303
    assert accepted.headers["Location"] == f"{link}?lang=fr&result=accepted"
    assert_private_headers(accepted)
    status = await referrals.get_status(site.client, code)
    shelter = next(s for s in status.services if s.service == "shelter")
    assert shelter.attempts[0].outcome == "accepted"

    after = await site.http.get(accepted.headers["Location"])
    assert after.status_code == 200
    assert_private_headers(after)
    for secret in (PSEUDONYM, PHONE, NOTES):
        assert secret in after.text
    assert "Accepter" not in after.text  # nothing left to answer

    # The other partner offered this referral (medical) sees its offer, not the person.
    clinic_link = await wait_for(lambda: emailed_link(smtp, "cas-clinic", code))
    assert clinic_link != link
    clinic_page = await site.http.get(clinic_link)
    assert clinic_page.status_code == 200 and f"R-{code}" in clinic_page.text and "soins médicaux" in clinic_page.text
    assert_no_personal_data(clinic_page.text)

    # A genuine link for a partner never offered this referral shows nothing about the person.
    stranger = sign_partner_link(SECRET, code, "nat-legal-adala", datetime.now(UTC) + timedelta(hours=1))
    stranger_page = await site.http.get(f"/p/{stranger}")
    assert stranger_page.status_code == 200 and "ne vous est pas proposée" in stranger_page.text
    assert_no_personal_data(stranger_page.text)

    # Messages never carried personal data, and the offer SMS stays short (no link).
    for msg in smtp.messages:
        assert_no_personal_data(msg.as_string())
    for sms in read_outbox(site.settings.outbox_dir):
        assert_no_personal_data(sms["body"])
        assert "/p/" not in sms["body"]

    # Once the referral is closed, the details are gone for everyone.
    await finish(site, code)
    closed = await site.http.get(link)
    assert closed.status_code == 200 and "clos" in closed.text
    assert_no_personal_data(closed.text)


async def test_decline_from_the_page(site, smtp):
    code = await start(site, "shelter")
    link = await wait_for(lambda: emailed_link(smtp, "cas-assoc", code))
    page = await site.http.get(link + "?lang=en")
    declined = await site.http.post(
        f"{link}/decline", data={"csrf": nonce(page), "service": "shelter", "lang": "en", "reason": "no bed tonight"}
    )
    assert declined.status_code == 303
    assert declined.headers["Location"].endswith("result=declined")
    attempt = (await referrals.get_status(site.client, code)).services[0].attempts[0]
    assert attempt.partner_id == "cas-assoc" and attempt.outcome == "declined" and attempt.reason == "no bed tonight"

    after = await site.http.get(declined.headers["Location"])
    assert "decline is recorded" in after.text and "no longer offered" in after.text
    assert_no_personal_data(after.text)

    # Accepting now, after declining, is refused and still shows nothing.
    again = await site.http.post(f"{link}/accept", data={"csrf": nonce(page), "service": "shelter", "lang": "en"})
    assert again.headers["Location"].endswith("result=reassigned")
    assert_no_personal_data((await site.http.get(again.headers["Location"])).text)
    await finish(site, code)


async def test_decline_from_the_page_with_a_reason_code(site, smtp):
    code = await start(site, "shelter")
    link = await wait_for(lambda: emailed_link(smtp, "cas-assoc", code))
    page = await site.http.get(link + "?lang=en")
    # The same codes as the SMS grammar, worded in the page's language; the page asks for one.
    assert '<select name="decline_code" required>' in page.text
    for n, words in ((1, "no capacity"), (2, "not a service we offer"), (3, "outside our area"), (4, "cannot take this person"), (9, "other")):
        assert f'<option value="{n}">{n} · {words}' in page.text
    arabic = await site.http.get(link + "?lang=ar")
    assert '<option value="3">3 · خارج منطقتنا' in arabic.text
    data = {"csrf": nonce(page), "service": "shelter", "lang": "en", "reason": "only women's shelter"}
    for bad in ("5", "0", "one", "1 2"):
        refused = await site.http.post(f"{link}/decline", data={**data, "decline_code": bad})
        assert refused.headers["Location"].endswith("result=invalid"), bad
    assert (await referrals.get_status(site.client, code)).services[0].attempts[0].outcome is None
    declined = await site.http.post(f"{link}/decline", data={**data, "decline_code": "4"})
    assert declined.headers["Location"].endswith("result=declined")
    attempt = (await referrals.get_status(site.client, code)).services[0].attempts[0]
    assert (attempt.outcome, attempt.decline_code, attempt.reason) == ("declined", 4, "only women's shelter")
    await finish(site, code)


async def test_arabic_page_is_right_to_left(site, smtp):
    code = await start(site, "shelter")
    link = await wait_for(lambda: emailed_link(smtp, "cas-assoc", code))
    page = await site.http.get(link, params={"lang": "ar"})
    assert page.status_code == 200
    assert '<html lang="ar" dir="rtl">' in page.text
    assert "قبول" in page.text and f"R-{code}" in page.text
    english = await site.http.get(link, params={"lang": "en"})
    assert '<html lang="en" dir="ltr">' in english.text and "Accept" in english.text
    unknown = await site.http.get(link, params={"lang": "xx"})
    assert '<html lang="fr" dir="ltr">' in unknown.text
    await finish(site, code)


async def test_cross_site_posts_are_refused(site, smtp):
    code = await start(site, "shelter")
    link = await wait_for(lambda: emailed_link(smtp, "cas-assoc", code))
    page = await site.http.get(link)
    good = {"csrf": nonce(page), "service": "shelter", "lang": "fr"}

    refused = [
        await site.http.post(f"{link}/accept", data=good, headers={"Origin": "https://evil.example"}),
        await site.http.post(f"{link}/accept", data=good, headers={"Sec-Fetch-Site": "cross-site"}),
        await site.http.post(f"{link}/accept", data={**good, "csrf": "forged"}),
        await site.http.post(f"{link}/accept", data={"service": "shelter"}),
    ]
    async with _client(site.settings, site.client) as fresh:  # no cookie: as a cross-site form would be
        refused.append(await fresh.post(f"{link}/accept", data=good))
    for r in refused:
        assert r.status_code == 403, r.text
        assert_private_headers(r)
    attempt = (await referrals.get_status(site.client, code)).services[0].attempts[0]
    assert attempt.outcome is None

    # Same origin (or the `null` origin that no-referrer pages send) is fine.
    ok = await site.http.post(f"{link}/accept", data=good, headers={"Origin": "null"})
    assert ok.status_code == 303
    await finish(site, code)


async def test_expired_and_tampered_links_are_403(dev_env, make_settings):
    settings = make_settings(partner_link_secret=SECRET, public_base_url=BASE)
    past = datetime.now(UTC) - timedelta(minutes=1)
    expired = sign_partner_link(SECRET, "7K3Q9", "cas-assoc", past)
    genuine = sign_partner_link(SECRET, "7K3Q9", "cas-assoc", datetime.now(UTC) + timedelta(hours=1))
    payload, mac = genuine.split(".")
    tampered = f"{payload}.{mac[:-2]}{'A' if mac[-2] != 'A' else 'B'}{mac[-1]}"
    async with _client(settings, dev_env.client) as http:
        r = await http.get(f"/p/{expired}")
        assert r.status_code == 403 and "expiré" in r.text
        assert_private_headers(r)
        for token in (tampered, "garbage", genuine + "x"):
            r = await http.get(f"/p/{token}")
            assert r.status_code == 403 and "pas valide" in r.text
            assert "7K3Q9" not in r.text
        r = await http.post(f"/p/{tampered}/accept", data={"csrf": "x"})
        assert r.status_code == 403

    # Without a configured secret, no token is honoured.
    async with _client(make_settings(public_base_url=BASE), dev_env.client) as http:
        assert (await http.get(f"/p/{genuine}")).status_code == 403


async def test_a_partner_assigned_by_hand_gets_a_link_and_the_details(site, smtp):
    code = await start(site, "shelter")
    first = await wait_for(lambda: emailed_link(smtp, "cas-assoc", code))
    await referrals.coordinator_action(
        site.client, code, CoordinatorAction(action="assign", service="shelter", partner_id="nat-shelter-amal", by="coord-cas")
    )
    link = await wait_for(lambda: emailed_link(smtp, "nat-shelter-amal", code))
    page = await site.http.get(link)
    assert page.status_code == 200 and PSEUDONYM in page.text and PHONE in page.text

    passed_over = await site.http.get(first)
    assert "ne vous est plus proposée" in passed_over.text
    assert_no_personal_data(passed_over.text)
    await finish(site, code)


@pytest.mark.parametrize("language, wording", [("fr", "répondre sur cette page"), ("en", "answer on this page"), ("ar", "الرد عبر هذه الصفحة")])
def test_offer_reminder_and_assigned_emails_carry_the_link(make_settings, language, wording):
    from activities.directory import Contact
    from activities.referral_activities import ReferralActivities
    from workflows.models import Notice, NoticeContext

    settings = make_settings(partner_link_secret=SECRET, public_base_url="https://nrm.example.ma")
    activities = ReferralActivities(settings)
    contact = Contact(id="cas-assoc", name="x", email="x@example.org", language=language)
    context = NoticeContext(code="7K3Q9", urgency="normal", region="casablanca-settat", service="shelter", deadline=datetime.now(UTC))
    for template in ("offer", "reminder", "assigned"):
        message = activities._render(Notice(recipient="partner", recipient_id="cas-assoc", template=template, context=context), contact)
        found = re.search(r"https://nrm\.example\.ma/p/(\S+?)(?:\?lang=(\w+))?(?:\s|$)", message.body)
        assert found, (template, message.body)
        assert verify_partner_link(SECRET, found.group(1)) == ("7K3Q9", "cas-assoc")
        assert found.group(2) == (None if language == "fr" else language)
        assert message.sms is None or "/p/" not in message.sms
        if template == "reminder":
            assert wording in message.body
    # Not in other partner notices, nor without a secret.
    message = activities._render(Notice(recipient="partner", recipient_id="cas-assoc", template="checkin", context=context), contact)
    assert "/p/" not in message.body
    bare = ReferralActivities(make_settings(public_base_url="https://nrm.example.ma"))
    message = bare._render(Notice(recipient="partner", recipient_id="cas-assoc", template="offer", context=context), contact)
    assert "/p/" not in message.body


def test_every_partner_page_text_in_three_languages():
    """The page's words are the catalogue's `partner_page.*`; each state, result and refusal has one."""
    keys = {
        *(f"state.{s}" for s in ("offered", "held", "completed", "passed", "not_offered", "closed")),
        *(f"result.{r}" for r in ("accepted", "declined", "already_applied", "reassigned", "not_offered", "referral_closed", "not_applicable", "invalid")),
        *(f"sexes.{s}" for s in get_args(Person.model_fields["sex"].annotation)),
        "decline_code", "decline_code_choose",
        "invalid_link", "expired_link", "csrf", "not_found", "unavailable", "none", "title", "footer",
    }
    for lang in LANGUAGES:
        section = translations(PACKAGED_MESSAGES_DIR, lang).section("partner_page")
        assert keys <= set(section), (lang, keys - set(section))
