"""/openapi.json against the validators: a request built from the document alone is never refused
for a reason the document does not state; and a 405 names the methods the path really allows.

Requests come from schemathesis's generator (positive mode: only what the document allows),
deterministically (derandomized), a bounded number per operation. They go through ASGI to the app,
which talks to the Temporal dev server on a task queue no worker polls: an intake the document
allows must start a referral (201, or 200 for an external_ref seen before); an update on a code
nobody started is 404. The document's own statements are the only other refusals allowed: 422 on
`partner_id` for an assignment to a partner the directory does not have (the directory is operator
data and the document is public, so it names the rule rather than the partners).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import schemathesis
from fastapi.routing import APIRoute
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter
from schemathesis import GenerationMode
from starlette.routing import compile_path
from temporalio.client import Client
from temporalio.service import RPCError

from activities.directory import load_directory
from config.settings import Settings
from ledger import migrate
from ledger.record import DECLINE_CODES, SERVICE_OUTCOMES
from starter import referrals
from web.app import create_app
from web.methods import METHODS
from web.routes import api as api_routes
from web.routes import reports as report_routes
from workflows.intake import Intake, Timestamp, normalise_phone

TOKEN = "openapi-test-token-5d2e"
BASE = "http://testserver"
EXAMPLES = 25  # per operation; the intake gets twice as many
GENERATED = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
# Answers a request the document allows may get: success, no such referral, refused by the referral,
# Temporal unavailable. Never 400, 413, 415 or 422 (nor 401: the token is right).
ALLOWED = {"POST /api/referrals": {200, 201}, "GET /api/referrals": {200}, "GET /api/reports": {200}}
UPDATE_ANSWERS = {200, 404, 409, 503}

OPERATIONS = sorted(
    f"{method} {route.path}"
    for router in (api_routes.router, report_routes.router)
    for route in router.routes
    if isinstance(route, APIRoute)
    for method in route.methods or ()
)


@pytest.fixture(scope="module", autouse=True)
def _hypothesis_put_back() -> Iterator[None]:
    """schemathesis patches hypothesis's globals when it first builds a strategy (a printer that
    prints nothing, a 32 KiB buffer); the rest of the suite gets hypothesis as it was."""
    from hypothesis import core as run
    from hypothesis.internal import entropy
    from hypothesis.internal.conjecture import engine
    from hypothesis.strategies._internal import collections as lists
    from hypothesis.strategies._internal import core as strategies

    patched = [
        (run, "RepresentationPrinter"), (run, "BUFFER_SIZE"), (engine, "BUFFER_SIZE"), (lists, "BUFFER_SIZE"),
        (strategies, "is_first_param_referenced_in_function"), (entropy, "register_random"),
    ]
    saved = [(module, name, getattr(module, name)) for module, name in patched]
    yield
    for module, name, value in saved:
        setattr(module, name, value)


@dataclass
class Served:
    http: httpx.AsyncClient
    client: Client
    settings: Settings
    schema: schemathesis.BaseSchema
    task_queue: str
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)

    async def send(self, case: schemathesis.Case) -> httpx.Response:
        request = case.as_transport_kwargs(base_url=BASE)
        headers = {k: v for k, v in request["headers"].items() if k.lower() != "authorization"}
        headers["Authorization"] = f"Bearer {TOKEN}"
        content = json.dumps(request["json"]).encode() if "json" in request else request.get("data")
        r = await self.http.request(request["method"], request["url"], params=request.get("params"), headers=headers, content=content)
        seen = self.statuses.setdefault(case.operation.label, {})
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        return r


@pytest.fixture
async def served(dev_env, make_settings) -> AsyncIterator[Served]:
    task_queue = f"openapi-no-worker-{uuid.uuid4()}"
    settings_ = make_settings(referral_task_queue=task_queue, referral_api_tokens=TOKEN, public_base_url=BASE)
    migrate.upgrade(settings_.ledger_url)  # /api/reports reads an (empty) ledger
    app = create_app(settings_, client=dev_env.client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        doc = (await http.get("/openapi.json")).json()
        served = Served(http, dev_env.client, settings_, schemathesis.openapi.from_dict(doc), task_queue)
        yield served
    # Nothing polls this queue: end what the generated intakes started.
    async for wf in dev_env.client.list_workflows(f"TaskQueue = '{task_queue}'"):
        try:
            await dev_env.client.get_workflow_handle(wf.id).terminate("openapi test over")
        except RPCError:
            pass
    print(f"\nopenapi: {served.statuses}")


def _explain(case: schemathesis.Case, r: httpx.Response) -> str:
    return f"{case.operation.label} {r.status_code} {r.text[:400]}\nsent: path={case.path_parameters} query={case.query} body={case.body!r:.600}"


def _generated(operation, examples: int) -> list[schemathesis.Case]:
    """Requests built from the document alone. Drawn first, then sent: hypothesis runs no coroutine."""
    cases: list[schemathesis.Case] = []

    @settings(GENERATED, max_examples=examples)
    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    def draw(case):
        cases.append(case)

    draw()
    return cases


@pytest.mark.parametrize("label", OPERATIONS)
async def test_requests_built_from_the_document_are_accepted(served, label):
    method, path = label.split(" ", 1)
    directory = load_directory(served.settings.referral_partners_file)
    cases = _generated(served.schema[path][method], EXAMPLES * (2 if label == "POST /api/referrals" else 1))
    assert len(cases) >= (2 if method == "GET" else EXAMPLES)
    for case in cases:
        r = await served.send(case)
        assert r.status_code in ALLOWED.get(label, UPDATE_ANSWERS) or _stated_partner_refusal(label, r), _explain(case, r)
        if label.endswith("/assign"):
            # The same request naming a partner the directory has for that service: no 422 at all.
            case.body["partner_id"] = next(p.id for p in directory.partners if case.body["service"] in p.services)
            r = await served.send(case)
            assert r.status_code in UPDATE_ANSWERS, _explain(case, r)
    if label == "POST /api/referrals":
        assert served.statuses[label].get(201), "no generated intake started a referral"


def _stated_partner_refusal(label: str, r: httpx.Response) -> bool:
    """The refusal AssignBody.partner_id's description states: a partner not in the directory."""
    return label.endswith("/assign") and r.status_code == 422 and [e["field"] for e in r.json()["errors"]] == ["partner_id"]


async def test_the_largest_intake_the_document_allows_fits_the_body_limit(served):
    """Every string at its maxLength in characters that JSON escapes to 12 bytes, every list full:
    still under the 64 KiB the server reads, so a schema-valid intake is never a 413."""
    doc = served.schema.raw_schema["components"]["schemas"]
    person, consent = doc["Person"]["properties"], doc["Consent"]["properties"]
    wide = "\U0001f600"  # one character, "\\ud83d\\ude00" in ASCII JSON
    intake = {
        "external_ref": "R" * doc["Intake"]["properties"]["external_ref"]["maxLength"],
        "identified_by": {"agency": "ngo", "officer_id": "o" * doc["IdentifiedBy"]["properties"]["officer_id"]["maxLength"], "region": "oriental"},
        "identified_at": "2026-01-05T09:30:00.123456+01:00",
        "sector": "agriculture",
        "indicators": doc["Intake"]["properties"]["indicators"]["items"]["enum"],
        "immediate_danger": True,
        "person": {
            "pseudonym": wide * person["pseudonym"]["maxLength"],
            "age_group": "adult",
            "sex": "unknown",
            "nationality": "MA",
            "languages": person["languages"]["items"]["enum"],
            "contact_phone": "+212650123456",
        },
        "needs": doc["Intake"]["properties"]["needs"]["items"]["enum"],
        "consent": {"given": True, "recorded_by": wide * consent["recorded_by"]["anyOf"][0]["maxLength"], "recorded_at": "2026-01-05T09:40:00+01:00"},
        "urgency": "emergency",
        "notes": wide * doc["Intake"]["properties"]["notes"]["anyOf"][0]["maxLength"],
    }
    body = json.dumps(intake, ensure_ascii=True, indent=2).encode()
    assert len(body) < api_routes.MAX_BODY_BYTES
    r = await served.http.post("/api/referrals", content=body, headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 201, r.text


def test_generated_intakes_pass_the_model(doc):
    """The intake's cross-field rules (consent, needs) and formats, with more examples and no HTTP."""
    operation = schemathesis.openapi.from_dict(doc)["/api/referrals"]["POST"]

    @settings(GENERATED, max_examples=100)
    @given(case=operation.as_strategy(GenerationMode.POSITIVE))
    def check(case):
        Intake.model_validate(case.body)

    check()


# --- what the document declares, piece by piece --------------------------------------------------


def _component(doc: dict, name: str) -> dict:
    return doc["components"]["schemas"][name]


@pytest.fixture(scope="module")
def doc() -> dict:
    return create_app(Settings(_env_file=None), client=None).openapi()  # type: ignore[call-arg]


def test_the_document_declares_the_constraints(doc):
    schemathesis.openapi.from_dict(doc).validate()  # against the OpenAPI 3.1 meta-schema
    paths = doc["paths"]
    code = next(p for p in paths["/api/referrals/{code}"]["get"]["parameters"] if p["name"] == "code")
    assert code["schema"]["pattern"] == referrals.CODE_PATTERN
    for name in ("Intake", "IdentifiedBy", "Person", "Consent", "AssignBody", "CloseBody", "CancelBody", "ActionBody", "ReplyBody"):
        assert _component(doc, name)["additionalProperties"] is False, name
    intake = _component(doc, "Intake")
    assert set(intake["required"]) == {"external_ref", "identified_by", "identified_at", "sector", "person", "consent"}
    assert intake["allOf"] and _component(doc, "Consent")["then"]["required"] == ["recorded_by", "recorded_at"]
    person = _component(doc, "Person")["properties"]
    assert "MA" in person["nationality"]["anyOf"][0]["enum"]
    assert "wo" in person["languages"]["items"]["enum"]
    assert person["contact_phone"]["anyOf"][0]["pattern"].startswith(r"^\+212")
    for method, path in [("post", "/api/referrals"), *[("post", p) for p in paths if p.startswith("/api/referrals/{code}/") and "post" in paths[p]]]:
        responses = paths[path][method]["responses"]
        assert {"400", "401", "413", "415", "422", "503"} <= set(responses), path
        assert list(paths[path][method]["requestBody"]["content"]) == ["application/json"]
    for path in paths:
        for operation in paths[path].values():
            assert operation["security"] == [{"HTTPBearer": []}]
            assert "401" in operation["responses"]
    assert doc["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "a token from REFERRAL_API_TOKENS"
    }
    key = next(p for p in paths["/api/referrals/{code}/cancel"]["post"]["parameters"] if p["name"] == "Idempotency-Key")
    assert key["schema"] == {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[A-Za-z0-9._:-]+$", "title": "Idempotency-Key"}
    rejection = _component(doc, "Rejection")["properties"]["kind"]
    assert "not_offered" in rejection["enum"] and "already_applied" not in rejection["enum"]
    # The outcome codes: required to close, optional to cancel, a decline's code only with decline.
    close = _component(doc, "CloseBody")
    assert close["required"] == ["outcome"] and close["properties"]["outcome"]["enum"] == list(SERVICE_OUTCOMES)
    assert paths["/api/referrals/{code}/close"]["post"]["requestBody"]["required"] is True
    assert _component(doc, "CancelBody")["properties"]["outcome"]["anyOf"][0]["enum"] == list(SERVICE_OUTCOMES)
    assert "outcome" not in _component(doc, "ActionBody")["properties"]  # withdrawal of consent: implied
    reply = _component(doc, "ReplyBody")
    assert reply["properties"]["decline_code"]["anyOf"][0]["enum"] == sorted(DECLINE_CODES)
    assert reply["then"] == {"properties": {"decline_code": {"type": "null"}}}


@settings(max_examples=200, derandomize=True, database=None)
@given(st.data())
def test_every_code_the_pattern_allows_is_read(data):
    code = data.draw(st.from_regex(referrals.CODE_PATTERN, fullmatch=True))
    assert len(referrals.normalise_code(code)) == 5


@settings(max_examples=200, derandomize=True, database=None)
@given(st.data())
def test_every_phone_number_the_pattern_allows_is_valid(data):
    pattern = Intake.model_json_schema()["$defs"]["Person"]["properties"]["contact_phone"]["anyOf"][0]["pattern"]
    number = data.draw(st.from_regex(pattern, fullmatch=True))
    assert normalise_phone(number) == number


@settings(max_examples=150, derandomize=True, database=None)
@given(st.data())
def test_every_time_the_pattern_allows_is_read_with_its_offset(data):
    """The pattern alone (for clients that skip `format`) gives only dates that exist."""
    pattern = Intake.model_json_schema()["$defs"]["Consent"]["properties"]["recorded_at"]["anyOf"][0]["pattern"]
    text = data.draw(st.from_regex(pattern, fullmatch=True))
    assert Timestamps.validate_python(text).utcoffset() is not None


Timestamps = TypeAdapter(Timestamp)


# --- 405: Allow names every method of the path ---------------------------------------------------


def _routes(routes) -> list[tuple[str, set[str]]]:
    """(path, methods) of every route, through included routers."""
    out = []
    for route in routes:
        inner = getattr(route, "original_router", None) or getattr(route, "routes", None)
        if inner is not None and not hasattr(route, "methods"):
            out += _routes(inner.routes if hasattr(inner, "routes") else inner)
        elif getattr(route, "methods", None):
            out.append((route.path, set(route.methods)))
    return out


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "7K3Q9", path)


async def test_405_names_every_method_the_path_allows(make_settings):
    app = create_app(make_settings(referral_api_tokens=TOKEN), client=None)
    routes = _routes(app.routes)
    assert ("/p/{token}", {"GET"}) in routes and ("/referrals/new", {"POST"}) in routes and ("/healthz", {"GET"}) in routes
    checked = 0
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        for url in sorted({_concrete(path) for path, _ in routes}):
            allowed = set().union(*(methods for path, methods in routes if compile_path(path)[0].match(url)))
            for method in METHODS:
                if method in allowed:
                    continue
                r = await http.request(method, url)
                assert r.status_code == 405, (method, url, r.status_code)
                assert set(r.headers["Allow"].split(", ")) == allowed, (method, url, r.headers["Allow"])
                checked += 1
    assert checked > 50


async def test_405_on_the_api_is_a_field_list(make_settings):
    app = create_app(make_settings(referral_api_tokens=TOKEN), client=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as http:
        r = await http.delete("/api/referrals")
        assert r.status_code == 405 and r.headers["Allow"] == "GET, POST"
        assert r.json()["errors"][0]["field"] == "(method)"
        r = await http.put("/referrals/new")  # the referral page's /referrals/{code} matches first
        assert r.status_code == 405 and r.headers["Allow"] == "GET, POST"
