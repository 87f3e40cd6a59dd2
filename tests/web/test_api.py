"""The JSON API (issue 4) against the Temporal dev server and a real worker, through ASGI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from config.settings import Settings
from starter import referrals
from tests.cases import NOTES, PHONE, PSEUDONYM, adult_case
from tests.conftest import running_worker, wait_for
from web.app import create_app
from workflows.models import CoordinatorAction

TOKEN = "api-test-token-7f1c2a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BASE = "http://testserver"


@dataclass
class Api:
    http: httpx.AsyncClient
    settings: Settings
    client: Client
    started: list[str] = field(default_factory=list)

    async def start(self, **overrides) -> str:
        r = await self.http.post("/api/referrals", json=adult_case(**overrides))
        assert r.status_code == 201, r.text
        self.started.append(r.json()["code"])
        return r.json()["code"]


def _app(settings: Settings, client: Client) -> httpx.AsyncClient:
    app = create_app(settings, client=client)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE, headers=AUTH)


@pytest.fixture
async def api(dev_env, make_settings) -> AsyncIterator[Api]:
    """The app with a worker; referrals started here are cancelled at the end."""
    async with running_worker(dev_env.client, make_settings()) as tq:
        settings = make_settings(referral_task_queue=tq, referral_api_tokens=f"another-token, {TOKEN}", public_base_url=BASE)
        async with _app(settings, dev_env.client) as http:
            api = Api(http, settings, dev_env.client)
            yield api
            for code in api.started:
                try:
                    await referrals.coordinator_action(dev_env.client, code, CoordinatorAction(action="cancel"))
                except referrals.ReferralRejected:
                    pass
                await dev_env.client.get_workflow_handle(referrals.workflow_id(code)).result()


@pytest.fixture
async def bare(dev_env, make_settings) -> AsyncIterator[Api]:
    """The app without a worker: for requests that must start nothing."""
    settings = make_settings(referral_task_queue="no-worker-here", referral_api_tokens=TOKEN, public_base_url=BASE)
    async with _app(settings, dev_env.client) as http:
        yield Api(http, settings, dev_env.client)


async def exists(client: Client, external_ref: str) -> bool:
    """Whether a referral was started for this ref (it would have the first derived code)."""
    try:
        await client.get_workflow_handle(referrals.workflow_id(referrals.referral_code(external_ref))).describe()
        return True
    except RPCError as err:
        assert err.status == RPCStatusCode.NOT_FOUND
        return False


def assert_no_personal_data(text: str) -> None:
    for secret in (PSEUDONYM, PHONE, PHONE[4:], NOTES[:20]):
        assert secret not in text


# --- auth ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "}],
    ids=["none", "wrong", "other-scheme", "empty"],
)
async def test_without_the_right_token_every_route_is_401(bare, headers):
    case = adult_case()
    calls = [
        ("POST", "/api/referrals", case),
        ("GET", "/api/referrals/7K3Q9", None),
        ("GET", "/api/referrals", None),
        ("POST", "/api/referrals/7K3Q9/cancel", {}),
        ("POST", "/api/referrals/7K3Q9/replies", {"partner_id": "cas-assoc", "action": "accept"}),
    ]
    for method, url, body in calls:
        request = bare.http.build_request(method, url, json=body)
        del request.headers["Authorization"]
        request.headers.update(headers)
        r = await bare.http.send(request)
        assert r.status_code == 401, (url, r.text)
        assert r.headers["WWW-Authenticate"] == "Bearer"
        assert r.json()["errors"][0]["field"] == "Authorization"
    assert not await exists(bare.client, case["external_ref"])


async def test_unauthenticated_bad_body_is_401_not_422(bare):
    request = bare.http.build_request("POST", "/api/referrals", content=b"{not json", headers={"Content-Type": "application/json"})
    del request.headers["Authorization"]
    r = await bare.http.send(request)
    assert r.status_code == 401


async def test_no_tokens_configured_refuses_everyone(dev_env, make_settings):
    settings = make_settings(referral_api_tokens=" , ")
    async with _app(settings, dev_env.client) as http:
        r = await http.get("/api/referrals")
        assert r.status_code == 401


async def test_the_right_token_is_accepted(bare):
    r = await bare.http.get("/api/referrals")
    assert r.status_code == 200
    assert "referrals" in r.json()


# --- validation: field errors, never a value, nothing started ---------------------------------

BAD_INTAKES = [
    ("indicators.0", dict(indicators=["forced_smiling"])),
    ("identified_by.region", dict(identified_by={"region": "atlantis"})),
    ("favourite_colour", dict(favourite_colour="blue")),
    ("needs.1", dict(needs=["shelter", "spa"])),
    ("person.contact_phone", dict(person={"contact_phone": "+2126501"})),
    ("person.nationality", dict(person={"nationality": "XX"})),
    ("person.pseudonym", dict(person={"pseudonym": PSEUDONYM * 20})),
    ("identified_at", dict(identified_at="2026-11-28T09:30:00")),
    ("consent", dict(consent={"given": False, "recorded_by": None, "recorded_at": None})),
    ("external_ref", dict(external_ref="no spaces allowed")),
    ("notes", dict(notes=NOTES * 100)),
]


@pytest.mark.parametrize("field_name, overrides", BAD_INTAKES, ids=[f for f, _ in BAD_INTAKES])
async def test_invalid_intake_names_the_field_and_echoes_nothing(bare, field_name, overrides):
    case = adult_case(**overrides)
    r = await bare.http.post("/api/referrals", json=case)
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert field_name in [e["field"] for e in errors], errors
    assert all(set(e) == {"field", "message"} for e in errors)
    assert_no_personal_data(r.text)
    assert "+2126501" not in r.text and "XX" not in r.text and "atlantis" not in r.text
    assert not await exists(bare.client, case["external_ref"])


@pytest.mark.parametrize(
    "content, content_type, status",
    [
        (b'{"external_ref": "X", "person": {"pseudonym": "Amina K."', "application/json", 422),
        (b"", "application/json", 422),
        (b"[1, 2, 3]", "application/json", 422),
        (b'"just a string"', "application/json", 422),
        (None, "text/plain", 415),
        (None, "application/x-www-form-urlencoded", 415),
        (None, None, 415),
        (b'{"external_ref": "\xff"}', "application/json", 400),
    ],
    ids=["malformed", "empty", "array", "string", "text-plain", "form", "no-content-type", "not-utf8"],
)
async def test_malformed_bodies_are_4xx_with_field_errors(bare, content, content_type, status):
    case = adult_case()
    body = content if content is not None else json.dumps(case).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    r = await bare.http.post("/api/referrals", content=body, headers=headers)
    assert r.status_code == status, r.text
    errors = r.json()["errors"]
    assert errors and errors[0]["field"] == "(body)"
    assert_no_personal_data(r.text)
    assert not await exists(bare.client, case["external_ref"])


async def test_oversized_bodies_are_413(bare):
    case = adult_case()
    big = json.dumps({**case, "padding": "x" * (70 * 1024)}).encode()
    r = await bare.http.post("/api/referrals", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.json()["errors"][0]["field"] == "(body)"

    async def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(80):
            yield b" " * 1024

    r = await bare.http.post("/api/referrals", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    assert not await exists(bare.client, case["external_ref"])


# --- start, idempotency, status, list ---------------------------------------------------------


async def test_same_external_ref_twice_is_one_referral(api):
    case = adult_case(needs=["legal"])
    first = await api.http.post("/api/referrals", json=case)
    assert first.status_code == 201, first.text
    body = first.json()
    api.started.append(body["code"])
    assert body["workflow_id"] == f"referral-{body['code']}"
    assert body["status_url"] == f"{BASE}/api/referrals/{body['code']}"
    assert body["created"] is True
    assert first.headers["Location"] == body["status_url"]

    again = await api.http.post("/api/referrals", json=case)
    assert again.status_code == 200
    assert again.json() == {**body, "created": False}

    # Even at the same moment: one 201 at most, the rest 200, always the same code.
    case2 = adult_case(needs=["legal"])
    results = await asyncio.gather(*(api.http.post("/api/referrals", json=case2) for _ in range(4)))
    assert sorted(r.status_code for r in results) == [200, 200, 200, 201]
    assert len({r.json()["code"] for r in results}) == 1
    api.started.append(results[0].json()["code"])

    async def runs() -> int:
        return len([wf async for wf in api.client.list_workflows(f"WorkflowId = '{body['workflow_id']}'")])

    await wait_for(runs)  # visibility lags a little
    assert await runs() == 1


async def test_status_and_its_errors(api):
    code = await api.start(needs=["shelter"])
    r = await api.http.get(f"/api/referrals/{code}")
    assert r.status_code == 200, r.text
    status = r.json()
    assert status["code"] == code and status["region"] == "casablanca-settat"
    assert status["stage"] in ("identification", "notification", "awaiting_acceptance")
    assert_no_personal_data(r.text)

    assert (await api.http.get(f"/api/referrals/r-{code.lower()}")).json()["code"] == code

    r = await api.http.get("/api/referrals/33333")
    assert r.status_code == 404
    assert r.json()["errors"][0]["field"] == "code"

    r = await api.http.get("/api/referrals/NOT-A-CODE")
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "code"


async def test_list_filters_by_stage_region_and_overdue(api):
    code = await api.start(needs=["shelter"], identified_by={"region": "souss-massa"})

    async def listed(query: str) -> list[str]:
        r = await api.http.get(f"/api/referrals?{query}")
        assert r.status_code == 200, r.text
        return [row["code"] for row in r.json()["referrals"]]

    await wait_for(lambda: _contains(listed("region=souss-massa&stage=awaiting_acceptance"), code))
    assert code not in await listed("region=oriental")
    assert code not in await listed("region=souss-massa&overdue=true")
    r = await api.http.get("/api/referrals?stage=lost&region=mars")
    assert r.status_code == 422
    assert {e["field"] for e in r.json()["errors"]} == {"stage", "region"}


async def _contains(listing, code: str) -> bool:
    return code in await listing


# --- coordinator actions and replies ------------------------------------------------------------


async def test_replies_and_their_rejections(api):
    code = await api.start(needs=["shelter", "medical"])
    await wait_for(lambda: _awaiting(api, code, "cas-assoc"))

    r = await api.http.post(f"/api/referrals/{code}/replies", json={"partner_id": "cas-assoc", "action": "accept"})
    assert r.status_code == 200, r.text
    assert r.json() == {"code": code, "outcome": "accepted", "services": ["shelter"]}

    r = await api.http.post(f"/api/referrals/{code}/replies", json={"partner_id": "cas-assoc", "action": "accept"})
    assert r.status_code == 200
    assert r.json()["kind"] == "already_applied"

    r = await api.http.post(f"/api/referrals/{code}/replies", json={"partner_id": "nat-legal-adala", "action": "accept"})
    assert r.status_code == 409
    assert r.json()["kind"] == "not_offered" and code in r.json()["message"]

    r = await api.http.post(f"/api/referrals/{code}/replies", json={"partner_id": "cas-assoc", "action": "maybe"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "action"

    r = await api.http.post("/api/referrals/33333/replies", json={"partner_id": "cas-assoc", "action": "accept"})
    assert r.status_code == 404

    # A retried call with the same Idempotency-Key is applied once.
    await wait_for(lambda: _awaiting(api, code, "cas-clinic"))
    headers = {"Idempotency-Key": "reply-1"}
    body = {"partner_id": "cas-clinic", "action": "decline", "reason": "no bed"}
    first = await api.http.post(f"/api/referrals/{code}/replies", json=body, headers=headers)
    second = await api.http.post(f"/api/referrals/{code}/replies", json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json() == {"code": code, "outcome": "declined", "services": ["medical"]}


async def _awaiting(api: Api, code: str, partner: str) -> bool:
    return partner in (await referrals.get_status(api.client, code)).awaiting_partners


async def test_assign_checks_the_directory(api):
    code = await api.start(needs=["medical"])
    url = f"/api/referrals/{code}/assign"

    r = await api.http.post(url, json={"service": "medical", "partner_id": "nobody-here"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "partner_id"
    r = await api.http.post(url, json={"service": "medical", "partner_id": "nat-legal-adala"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "partner_id"
    r = await api.http.post(url, json={"service": "teleportation", "partner_id": "nat-medical-sahha"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "service"
    r = await api.http.post(url, json={"service": "shelter", "partner_id": "nat-shelter-amal"})
    assert r.status_code == 409 and r.json()["kind"] == "invalid"  # this referral has no shelter

    r = await api.http.post(url, json={"service": "medical", "partner_id": "nat-medical-sahha", "by": "coord-cas"})
    assert r.status_code == 200, r.text
    assert r.json() == {"code": code, "action": "assign", "stage": "follow_up"}
    medical = (await referrals.get_status(api.client, code)).services[0]
    assert medical.partner_id == "nat-medical-sahha" and medical.assigned_by_coordinator

    r = await api.http.post(url, json={"service": "medical", "partner_id": "nat-medical-sahha"})
    assert r.status_code == 200 and r.json()["kind"] == "already_applied"


async def test_close_a_service_then_cancel_then_refused(api):
    code = await api.start(needs=["shelter", "legal"])
    r = await api.http.post(f"/api/referrals/{code}/close", json={"service": "legal", "by": "coord-cas", "outcome": "transferred"})
    assert r.status_code == 200, r.text
    status = await referrals.get_status(api.client, code)
    assert [s.service for s in status.services] == ["shelter", "legal"]
    assert status.services[1].stage == "closed" and status.services[0].stage != "closed"
    assert (status.services[1].outcome, status.services[0].outcome) == ("transferred", None)

    r = await api.http.post(f"/api/referrals/{code}/cancel")  # no body at all
    assert r.status_code == 200, r.text
    assert r.json() == {"code": code, "action": "cancel", "stage": "closed"}
    status = await referrals.get_status(api.client, code)
    assert status.closed_reason == "cancelled"
    assert [s.outcome for s in status.services] == [None, "transferred"]  # a cancel without outcome says none

    r = await api.http.post(f"/api/referrals/{code}/close", json={"outcome": "other"})
    assert r.status_code == 409
    assert r.json()["kind"] == "referral_closed"


async def test_close_requires_an_outcome_and_cancel_takes_one(api):
    code = await api.start(needs=["shelter"])
    for body in (None, {}, {"reason": "duplicate"}, {"outcome": "finished"}, {"outcome": None}):
        r = await api.http.post(f"/api/referrals/{code}/close", json=body)
        assert r.status_code == 422, (body, r.text)
        assert [e["field"] for e in r.json()["errors"]] == (["(body)"] if body is None else ["outcome"]), r.text
    assert (await referrals.get_status(api.client, code)).stage != "closed"
    r = await api.http.post(f"/api/referrals/{code}/cancel", json={"outcome": "not_needed", "reason": "found a place"})
    assert r.status_code == 200, r.text
    status = await referrals.get_status(api.client, code)
    assert (status.closed_reason, status.services[0].outcome) == ("cancelled", "not_needed")
    r = await api.http.post(f"/api/referrals/{code}/withdraw-consent", json={"outcome": "person_declined"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "outcome"  # implied: not a field


async def test_a_decline_code_through_the_api(api):
    code = await api.start(needs=["shelter"])
    await wait_for(lambda: _awaiting(api, code, "cas-assoc"))
    url = f"/api/referrals/{code}/replies"
    for body, field_name in (
        ({"partner_id": "cas-assoc", "action": "accept", "decline_code": 1}, "decline_code"),
        ({"partner_id": "cas-assoc", "action": "decline", "decline_code": 5}, "decline_code"),
        ({"partner_id": "cas-assoc", "action": "decline", "decline_code": "1 no beds"}, "decline_code"),
    ):
        r = await api.http.post(url, json=body)
        assert r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == [field_name], r.text
        assert "no beds" not in r.text
    r = await api.http.post(url, json={"partner_id": "cas-assoc", "action": "decline", "decline_code": 3, "reason": "too far"})
    assert r.status_code == 200 and r.json()["outcome"] == "declined", r.text
    first = (await referrals.get_status(api.client, code)).services[0].attempts[0]
    assert (first.outcome, first.decline_code, first.reason) == ("declined", 3, "too far")
    r = await api.http.get(f"/api/referrals/{code}")
    assert r.json()["services"][0]["attempts"][0]["decline_code"] == 3


async def test_close_and_withdraw_consent(api):
    code = await api.start(needs=["shelter"])
    r = await api.http.post(f"/api/referrals/{code}/withdraw-consent", json={"reason": "the person asked", "by": "coord-cas"})
    assert r.status_code == 200, r.text
    assert r.json()["stage"] == "closed"
    status = await referrals.get_status(api.client, code)
    assert status.closed_reason == "consent_withdrawn" and status.services[0].outcome == "person_declined"

    other = await api.start(needs=["shelter"])
    r = await api.http.post(f"/api/referrals/{other}/close", json={"reason": "duplicate", "outcome": "not_needed"})
    assert r.status_code == 200
    status = await referrals.get_status(api.client, other)
    assert status.closed_reason == "closed" and status.services[0].outcome == "not_needed"

    r = await api.http.post(f"/api/referrals/{other}/close", json={"nonsense": 1, "outcome": "other"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "nonsense"


async def test_openapi_documents_the_routes(bare):
    r = await bare.http.get("/openapi.json")
    spec = r.json()
    for path in ("/api/referrals", "/api/referrals/{code}", "/api/referrals/{code}/assign", "/api/referrals/{code}/replies"):
        assert path in spec["paths"]
    post = spec["paths"]["/api/referrals"]["post"]
    assert post["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/Intake")
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert (await bare.http.get("/docs")).status_code == 200
