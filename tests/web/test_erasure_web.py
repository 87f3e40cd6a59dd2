"""Erasing a person's data from the web (issue 16): the JSON API (`POST /api/referrals/{code}/erase`,
`GET .../erasure`, `withdraw-consent` with `erase`, 410 for an erased referral's status) and the
coordinator's page (the erase form and the withdrawal's box, both confirmed by typing the code),
against the Temporal dev server and a real worker. The browser test is test_erasure_browser.py.

The referrals' data-key table is the session's: each referral here has an external_ref of its own.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import unescape

import httpx
import pytest
from temporalio.client import Client
from temporalio.service import RPCError

from config.settings import Settings
from ledger.erasures import ERASED
from ledger.store import LedgerStore
from starter import erasure, referrals
from tests.cases import NOTES, PHONE, PSEUDONYM, adult_case, adult_intake
from tests.conftest import running_worker, wait_for
from tests.web import test_openapi
from tests.web.test_api import AUTH, BASE, TOKEN
from tests.web.test_forms import browser_like, csrf_of, log_in, web_settings
from tests.web.test_openapi import EXAMPLES, _explain, _generated
from web import erasures
from web.app import create_app
from web.routes import erasure_api
from workflows.erasure import workflow_id as erasure_workflow_id
from workflows.models import CoordinatorAction

# test_openapi's fixtures, reused: the app as a generated client sees it, and hypothesis put back
# as it was after schemathesis (autouse).
served = test_openapi.served
_hypothesis_put_back = test_openapi._hypothesis_put_back


def assert_nothing_about_the_person(text: str) -> None:
    for secret in (PSEUDONYM, PHONE, PHONE[4:], NOTES[:20]):
        assert secret not in text


async def stage_of(client: Client, code: str) -> str | None:
    try:
        return (await referrals.get_status(client, code)).stage
    except referrals.ReferralNotFound:
        return None


async def past_identification(client: Client, code: str) -> bool:
    return await stage_of(client, code) not in (None, "identification")


@dataclass
class Api:
    http: httpx.AsyncClient
    settings: Settings
    client: Client
    started: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)  # every body received, checked for personal data

    async def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        r = await self.http.request(method, url, **kwargs)
        self.answers.append(r.text)
        return r

    async def start(self) -> str:
        r = await self.request("POST", "/api/referrals", json=adult_case(external_ref=f"ERASE-API-{uuid.uuid4().hex[:12]}"))
        assert r.status_code == 201, r.text
        code = r.json()["code"]
        self.started.append(code)
        await wait_for(lambda: past_identification(self.client, code), timeout=30)
        return code


def _app(settings: Settings, client: Client) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings, client=client)), base_url=BASE, headers=AUTH)


@pytest.fixture
async def api(dev_env, make_settings) -> AsyncIterator[Api]:
    """The API with a worker; what is left of the referrals started here is cancelled at the end."""
    async with running_worker(dev_env.client, make_settings()) as tq:
        settings = make_settings(referral_task_queue=tq, referral_api_tokens=TOKEN, public_base_url=BASE)
        async with _app(settings, dev_env.client) as http:
            api = Api(http, settings, dev_env.client)
            yield api
            for code in api.started:
                try:
                    await referrals.coordinator_action(dev_env.client, code, CoordinatorAction(action="cancel"))
                except (referrals.ReferralRejected, referrals.ReferralNotFound):
                    pass
            for text in api.answers:
                assert_nothing_about_the_person(text)


# --- the API -------------------------------------------------------------------------------


async def test_bad_requests_name_the_field_and_erase_nothing(dev_env, make_settings):
    settings = make_settings(referral_task_queue="no-worker-here", referral_api_tokens=TOKEN, public_base_url=BASE)
    async with _app(settings, dev_env.client) as http:
        code = "33333"
        for body, field_name in [
            ({}, "reason"),
            ({"reason": "   "}, "reason"),
            ({"reason": "x" * 501}, "reason"),
            ({"reason": "asked", "by": "b" * 65}, "by"),
            ({"reason": "asked", "colour": "blue"}, "colour"),
            ({"reason": 7}, "reason"),
        ]:
            r = await http.post(f"/api/referrals/{code}/erase", json=body)
            assert r.status_code == 422, (body, r.text)
            assert [e["field"] for e in r.json()["errors"]] == [field_name], r.text
            assert "x" * 20 not in r.text and "blue" not in r.text  # never the value
        r = await http.post("/api/referrals/not-a-code/erase", json={"reason": "asked"})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "code"
        r = await http.post(f"/api/referrals/{code}/erase", content=b"reason=asked", headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 415
        r = await http.post(f"/api/referrals/{code}/erase", json={"reason": "asked"}, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["errors"][0]["field"] == "Authorization"
        # Nothing is held under this code: 404, and no erasure was started.
        r = await http.post(f"/api/referrals/{code}/erase", json={"reason": "asked"})
        assert r.status_code == 404 and r.json()["errors"][0]["field"] == "code", r.text
        r = await http.get(f"/api/referrals/{code}/erasure")
        assert r.status_code == 404 and r.json()["errors"][0]["field"] == "code"
        r = await http.get(f"/api/referrals/{code}")
        assert r.status_code == 404  # never erased: not 410
    assert not await erasures.erasure_running(dev_env.client, code)
    with pytest.raises(RPCError):
        await dev_env.client.get_workflow_handle(erasure_workflow_id(code)).describe()


async def test_erase_through_the_api_then_the_status_is_gone(api: Api):
    code = await api.start()
    kept = await api.start()  # another referral, untouched
    before = datetime.now(UTC)

    r = await api.request("POST", f"/api/referrals/r-{code.lower()}/erase", json={"reason": " the person asked (DPO ticket 7) ", "by": "coord-7"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"code", "state", "requested_at", "erased_at", "requested_by", "already"}
    assert (body["code"], body["state"], body["requested_by"], body["already"]) == (code, "erased", "coord-7", False)
    assert before <= datetime.fromisoformat(body["requested_at"]) <= datetime.fromisoformat(body["erased_at"]) <= datetime.now(UTC)

    # The status is gone, and says so.
    r = await api.request("GET", f"/api/referrals/{code}")
    assert r.status_code == 410, r.text
    assert r.json() == {"error": f"R-{code} was erased on {datetime.fromisoformat(body['erased_at']):%Y-%m-%d}"}
    with pytest.raises(referrals.ReferralNotFound):
        await referrals.get_status(api.client, code)
    r = await api.request("GET", f"/api/referrals/{code}/erasure")
    assert r.status_code == 200
    assert r.json() == {k: v for k, v in body.items() if k != "already"}
    # Asking again: done already, the first request stands.
    r = await api.request("POST", f"/api/referrals/{code}/erase", json={"reason": "again"})
    assert r.status_code == 200 and r.json()["already"] is True and r.json()["requested_by"] == "coord-7"
    # Steering an erased referral: it is closed for good.
    r = await api.request("POST", f"/api/referrals/{code}/cancel", json={})
    assert r.status_code == 409 and r.json()["kind"] == "referral_closed", r.text

    r = await api.request("GET", f"/api/referrals/{kept}")
    assert r.status_code == 200 and r.json()["code"] == kept


async def test_withdraw_consent_and_erase_in_one_call(api: Api):
    code = await api.start()
    r = await api.request("POST", f"/api/referrals/{code}/withdraw-consent", json={"reason": "moved abroad", "erase": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["code"], body["state"], body["requested_by"], body["already"]) == (code, "erased", "api", False)
    recorded = await asyncio.to_thread(erasure.erasure_state, api.settings, code)
    assert recorded is not None and recorded.reason == "consent withdrawn: moved abroad"
    # The de-identified record keeps the withdrawal: the statistics still count it.
    row = await asyncio.to_thread(LedgerStore.for_url(api.settings.ledger_url).get, code)
    assert row is not None and row.erased and row.closure_reason == "consent_withdrawn"
    assert (await api.request("GET", f"/api/referrals/{code}")).status_code == 410
    # Again, the same call: already erased, safe to retry.
    r = await api.request("POST", f"/api/referrals/{code}/withdraw-consent", json={"erase": True})
    assert r.status_code == 200 and r.json()["already"] is True

    # Without `erase` (or false), a withdrawal keeps the data, as before.
    other = await api.start()
    r = await api.request("POST", f"/api/referrals/{other}/withdraw-consent", json={"erase": False})
    assert r.status_code == 200 and r.json() == {"code": other, "action": "withdraw_consent", "stage": "closed"}
    assert (await api.request("GET", f"/api/referrals/{other}")).status_code == 200
    assert await asyncio.to_thread(erasure.erasure_state, api.settings, other) is None
    r = await api.request("POST", f"/api/referrals/{other}/withdraw-consent", json={"erase": "yes please"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "erase"


async def test_an_erasure_not_finished_in_time_is_202_and_goes_on(dev_env, make_settings, monkeypatch):
    """No worker: the erasure is started but cannot finish; the API says it is under way."""
    monkeypatch.setattr(erasures, "WAIT", timedelta(seconds=1))
    queue = f"erasure-no-worker-{uuid.uuid4()}"
    settings = make_settings(referral_task_queue=queue, referral_api_tokens=TOKEN, public_base_url=BASE)
    code = (await referrals.start_referral(dev_env.client, adult_intake(), queue)).code
    try:
        async with _app(settings, dev_env.client) as http:
            r = await http.post(f"/api/referrals/{code}/erase", json={"reason": "asked"})
            assert r.status_code == 202, r.text
            assert r.json()["state"] == "requested" and r.json()["code"] == code
            assert r.headers["Location"] == r.json()["erasure_url"] == f"{BASE}/api/referrals/{code}/erasure"
            r = await http.get(f"/api/referrals/{code}/erasure")
            assert r.status_code == 202 and r.json()["code"] == code
    finally:
        for wid in (erasure_workflow_id(code), referrals.workflow_id(code)):
            await dev_env.client.get_workflow_handle(wid).terminate("test over")


@pytest.mark.parametrize("label", ["POST /api/referrals/{code}/erase", "GET /api/referrals/{code}/erasure"])
async def test_requests_built_from_the_document_are_accepted(served, label, monkeypatch):
    """As tests/web/test_openapi.py does for the rest of the API: requests built from the document
    alone are refused only for what it states (no such referral). No worker polls the queue, so an
    erasure that starts (a code something is held under) is under way: 202."""
    monkeypatch.setattr(erasures, "WAIT", timedelta(seconds=1))
    method, path = label.split(" ", 1)
    cases = _generated(served.schema[path][method], EXAMPLES)
    assert len(cases) >= (2 if method == "GET" else EXAMPLES)
    for case in cases:
        r = await served.send(case)
        assert r.status_code in {200, 202, 404, 503}, _explain(case, r)


def test_the_document_declares_the_erasure_routes():
    doc = create_app(Settings(_env_file=None), client=None).openapi()  # type: ignore[call-arg]
    erase = doc["paths"]["/api/referrals/{code}/erase"]["post"]
    assert {"200", "202", "400", "401", "404", "413", "415", "422", "503"} <= set(erase["responses"])
    body = doc["components"]["schemas"]["EraseBody"]
    assert body["required"] == ["reason"] and body["additionalProperties"] is False
    assert body["properties"]["reason"]["maxLength"] == 500 and body["properties"]["reason"]["pattern"] == r"\S"
    assert set(doc["components"]["schemas"]["ErasureResult"]["properties"]) == {"code", "state", "requested_at", "erased_at", "requested_by", "already"}
    assert {"200", "202", "404"} <= set(doc["paths"]["/api/referrals/{code}/erasure"]["get"]["responses"])
    assert "410" in doc["paths"]["/api/referrals/{code}"]["get"]["responses"]
    withdraw = doc["paths"]["/api/referrals/{code}/withdraw-consent"]["post"]
    assert "202" in withdraw["responses"] and doc["components"]["schemas"]["ActionBody"]["properties"]["erase"]["type"] == "boolean"
    assert erasure_api.router.routes and all(isinstance(r, erasure_api.ApiRoute) for r in erasure_api.router.routes)  # the API's rules


# --- the coordinator's page ------------------------------------------------------------------


@dataclass
class Page:
    http: httpx.AsyncClient
    settings: Settings
    client: Client

    async def start(self) -> str:
        intake = adult_intake(external_ref=f"ERASE-WEB-{uuid.uuid4().hex[:12]}")
        code = (await referrals.start_referral(self.client, intake, self.settings.referral_task_queue)).code
        await wait_for(lambda: past_identification(self.client, code), timeout=30)
        return code

    async def get(self, path: str) -> httpx.Response:
        r = await self.http.get(path)
        assert_nothing_about_the_person(r.text)
        return r

    async def post(self, path: str, data: dict[str, str]) -> str:
        """The form posted as the page sends it (the session's CSRF token), answered by a redirect."""
        page = await self.http.get("/referrals/new")
        r = await self.http.post(path, data={"csrf": csrf_of(page.text), **data})
        assert r.status_code == 303, r.text
        return r.headers["location"]


@pytest.fixture
async def site(dev_env, make_settings) -> AsyncIterator[Page]:
    base = web_settings(make_settings)
    async with running_worker(dev_env.client, base) as tq:
        settings = base.model_copy(update={"referral_task_queue": tq})
        async with browser_like(settings, dev_env.client) as http:
            await log_in(http)
            yield Page(http, settings, dev_env.client)


def text_of(html: str) -> str:
    return unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)))


async def test_the_erase_form_needs_the_typed_code_then_erases(site: Page):
    code = await site.start()
    other = await site.start()
    page = await site.get(f"/referrals/{code}?lang=en")
    assert 'action="/referrals/' + code + '/erase"' in page.text
    shown = text_of(page.text)
    assert "Erase the person's data" in shown and "Erasure cannot be undone" in shown and "must not contain personal data" in shown
    assert f"To confirm, type the referral's code (R-{code})" in shown

    # Anything but this referral's code refuses, with a message, and erases nothing.
    for typed in ("", "yes", "R-33333", other, f"R-{code}0", f"{code[:4]}"):
        location = await site.post(f"/referrals/{code}/erase", {"reason": "the person asked", "erase_code": typed})
        assert location == f"/referrals/{code}?rejected=erase_confirm", typed
    refused = await site.get(f"{location}&lang=en")
    assert refused.status_code == 200
    assert "the code typed is not this referral's code; nothing was erased." in text_of(refused.text)
    assert await stage_of(site.client, code) not in (None, "closed")
    # Without the CSRF token: 403, nothing erased.
    r = await site.http.post(f"/referrals/{code}/erase", data={"reason": "asked", "erase_code": code})
    assert r.status_code == 403
    # The reason is required (and holds at most 500 characters).
    for reason in ("", "  ", "r" * 501):
        location = await site.post(f"/referrals/{code}/erase", {"reason": reason, "erase_code": code})
        assert location == f"/referrals/{code}?rejected=erase_reason"
    assert await stage_of(site.client, code) not in (None, "closed")
    assert await asyncio.to_thread(erasure.erasure_state, site.settings, code) is None

    # The right code, written as a coordinator might: erased, by the logged-in coordinator.
    location = await site.post(f"/referrals/{code}/erase", {"reason": "DPO request 12", "erase_code": f" r-{code.lower()} "})
    assert location == f"/referrals/{code}?done=erase"
    assert await stage_of(site.client, code) is None
    recorded = await asyncio.to_thread(erasure.erasure_state, site.settings, code)
    assert recorded is not None and recorded.state == ERASED and (recorded.requested_by, recorded.reason) == ("amina", "DPO request 12")

    gone = await site.get(f"{location}&lang=en")
    assert gone.status_code == 410
    when = recorded.erased_at.astimezone(site_tz(site)).strftime("%d/%m/%Y %H:%M") if recorded.erased_at else ""
    shown = text_of(gone.text)
    assert "The person's data was erased." in shown
    assert f"R-{code} was erased on {when} by amina." in shown
    assert 'action="/referrals/' + code not in gone.text  # no form left
    fr = await site.get(f"/referrals/{code}?lang=fr")
    assert fr.status_code == 410 and f"R-{code} a été effacée le {when} par amina." in text_of(fr.text)
    ar = await site.get(f"/referrals/{code}?lang=ar")
    assert ar.status_code == 410 and 'dir="rtl"' in ar.text
    assert f"مُحيت \u2068R-{code}\u2069 بتاريخ \u2068{when}\u2069 من طرف \u2068amina\u2069." in text_of(ar.text)
    # Erasing again says it is done; the other referral goes on.
    assert await site.post(f"/referrals/{other}/erase", {"reason": "x", "erase_code": code}) == f"/referrals/{other}?rejected=erase_confirm"
    assert await stage_of(site.client, other) not in (None, "closed")
    await referrals.coordinator_action(site.client, other, CoordinatorAction(action="cancel"))


def site_tz(site: Page):
    from zoneinfo import ZoneInfo

    return ZoneInfo(site.settings.referral_timezone)


async def test_the_withdrawal_asks_whether_to_erase_too(site: Page):
    code = await site.start()
    page = await site.get(f"/referrals/{code}?lang=en")
    box = re.search(r'<input type="checkbox" id="w-erase"[^>]*>', page.text)
    assert box and "checked" not in box[0] and 'name="erase"' in box[0]  # unchecked by default
    assert "Also erase the person's data for good" in text_of(page.text)

    # Ticked, with a wrong code: nothing at all is done, not even the withdrawal.
    withdraw = {"action": "withdraw_consent", "confirm": "yes", "reason": "left the country", "erase": "yes"}
    for typed in ("", "R-33333"):
        location = await site.post(f"/referrals/{code}/actions", {**withdraw, "erase_code": typed})
        assert location == f"/referrals/{code}?rejected=erase_confirm"
    status = await referrals.get_status(site.client, code)
    assert status.stage != "closed" and status.closed_reason is None

    # With the code: withdrawn, then erased.
    location = await site.post(f"/referrals/{code}/actions", {**withdraw, "erase_code": code})
    assert location == f"/referrals/{code}?done=erase"
    assert await stage_of(site.client, code) is None
    recorded = await asyncio.to_thread(erasure.erasure_state, site.settings, code)
    assert recorded is not None and recorded.state == ERASED
    assert (recorded.requested_by, recorded.reason) == ("amina", "consent withdrawn: left the country")
    gone = await site.get(f"{location}&lang=fr")
    assert gone.status_code == 410 and "Les données de la personne ont été effacées." in text_of(gone.text)

    # Unticked: the withdrawal alone; the data is kept, and can still be erased from the page.
    kept = await site.start()
    location = await site.post(f"/referrals/{kept}/actions", {"action": "withdraw_consent", "confirm": "yes", "erase_code": kept})
    assert location == f"/referrals/{kept}?done=withdraw_consent"
    status = await referrals.get_status(site.client, kept)
    assert status.stage == "closed" and status.closed_reason == "consent_withdrawn"
    page = await site.get(f"/referrals/{kept}?lang=en")
    assert page.status_code == 200 and f'action="/referrals/{kept}/erase"' in page.text
    assert 'value="withdraw_consent"' not in page.text  # no more withdrawal form
    location = await site.post(f"/referrals/{kept}/erase", {"reason": "asked later", "erase_code": f"R-{kept}"})
    assert location == f"/referrals/{kept}?done=erase" and await stage_of(site.client, kept) is None
