"""Fuzzing `POST /api/referrals` with hypothesis: whatever arrives, never a 5xx, always a 2xx or
a 4xx, and no referral started unless the answer was 201 (200: one that already existed).

The app talks to the real Temporal dev server on a task queue no worker polls, so a referral
started by mistake stays visible (and is terminated at the end). Every intake is fictional.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from config.settings import Settings
from starter import referrals
from tests.conftest import wait_for
from tests.fixtures import PARTNERS_FILE, POLICY_FILE
from web.app import create_app
from workflows.intake import INDICATORS, REGIONS, SERVICES

TOKEN = "fuzz-api-token-3b9e"
BASE = "http://testserver"
MAX_EXAMPLES = 120
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,  # every run explores afresh; a failure prints its example
)


@dataclass
class Api:
    http: httpx.AsyncClient
    client: Client
    task_queue: str
    created: dict[str, str] = field(default_factory=dict)  # external_ref -> code, from 201s
    statuses: dict[int, int] = field(default_factory=dict)

    async def post(self, content: bytes, content_type: str | None, external_ref: Any = None) -> httpx.Response:
        headers = {"Content-Type": content_type} if content_type is not None else {}
        r = await self.http.post("/api/referrals", content=content, headers=headers)
        self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (r.status_code, r.text[:500])
        assert 200 <= r.status_code < 300 or 400 <= r.status_code < 500, r.status_code
        if r.status_code in (200, 201):
            body = r.json()
            assert isinstance(external_ref, str)
            if r.status_code == 201:
                assert external_ref not in self.created
                self.created[external_ref] = body["code"]
            else:
                assert self.created.get(external_ref) == body["code"], "200 for a referral this run never created"
        else:
            assert "errors" in r.json() or "detail" in r.json()
            if isinstance(external_ref, str) and external_ref not in self.created:
                assert not await started(self.client, external_ref), "a 4xx started a referral"
        return r


async def started(client: Client, external_ref: str) -> bool:
    try:
        external_ref.encode("utf-8")
    except UnicodeEncodeError:
        return False  # a lone surrogate: no code can be derived, nothing can have started
    try:
        await client.get_workflow_handle(referrals.workflow_id(referrals.referral_code(external_ref))).describe()
        return True
    except RPCError as err:
        assert err.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT)
        return False


@asynccontextmanager
async def open_api(client: Client, data_dir: Path) -> AsyncIterator[Api]:
    """The app on a task queue of its own that no worker polls; what it started is ended after."""
    task_queue = f"fuzz-no-worker-{uuid.uuid4()}"
    settings_ = Settings(  # type: ignore[call-arg]
        _env_file=None,
        referral_data_dir=data_dir,
        referral_task_queue=task_queue,
        referral_api_tokens=TOKEN,
        public_base_url=BASE,
        referral_allow_plaintext=True,
        referral_partners_file=PARTNERS_FILE,
        referral_policy_file=POLICY_FILE,
    )
    app = create_app(settings_, client=client)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        api = Api(http, client, task_queue)
        yield api
    async for wf in client.list_workflows(f"TaskQueue = '{task_queue}'"):
        try:
            await client.get_workflow_handle(wf.id).terminate("fuzz test over")
        except RPCError:
            pass
    print(f"\nAPI fuzz: {sum(api.statuses.values())} requests, statuses {dict(sorted(api.statuses.items()))}, {len(api.created)} referrals started")


@pytest.fixture(scope="module")
async def api(dev_env, tmp_path_factory) -> AsyncIterator[Api]:
    async with open_api(dev_env.client, tmp_path_factory.mktemp("fuzz-api")) as api:
        yield api


# --- strategies --------------------------------------------------------------------------------

# Any text: unicode of every category (control characters included), sometimes long.
texts = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=100, max_size=2000),
    st.sampled_from(["", " ", "\x00", "\u202e", "null", "0", "true", "R-7K3Q9", "💥" * 50, "\ud800"]),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), texts,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)
huge_strings = st.integers(min_value=1_000, max_value=100 * 1024).flatmap(
    lambda n: st.sampled_from(["x", "é", "ق", "\x00", "😀"]).map(lambda c: c * (n // len(c.encode())))
)


def fictional_intake(
    *,
    minor: bool = False,
    danger: bool = False,
    consent: bool = True,
    region: str = REGIONS[0],
    sector: str = "other",
    indicators: list[str] | None = None,
    nationality: str = "CI",
    languages: list[str] | None = None,
    contact_phone: str | None = None,
    needs: list[str] | None = None,
    urgency: str | None = None,
    notes: str | None = None,
) -> dict[str, Any]:
    """A fictional intake that the API accepts as is (consent is recorded when it must be)."""
    consent = consent or not (minor or danger)
    return {
        "external_ref": f"FUZZ-{uuid.uuid4().hex[:16]}",
        "identified_by": {"agency": "ngo", "officer_id": "FUZZ-01", "region": region},
        "identified_at": "2026-01-05T09:30:00+01:00",
        "sector": sector,
        "indicators": indicators or [],
        "immediate_danger": danger,
        "person": {
            "pseudonym": "Test Person",
            "age_group": "minor" if minor else "adult",
            "sex": "unknown",
            "nationality": nationality,
            "languages": languages or [],
            "contact_phone": contact_phone,
        },
        "needs": needs or ["shelter"],
        "consent": (
            {"given": True, "recorded_by": "FUZZ-01", "recorded_at": "2026-01-05T09:40:00+01:00"}
            if consent
            else {"given": False}
        ),
        "urgency": urgency,
        "notes": notes,
    }


@st.composite
def valid_intakes(draw) -> dict[str, Any]:
    """A fictional intake that the API accepts as is."""
    return fictional_intake(
        minor=draw(st.booleans()),
        danger=draw(st.booleans()),
        consent=draw(st.booleans()),
        region=draw(st.sampled_from(REGIONS)),
        sector=draw(st.sampled_from(["agriculture", "domestic_work", "other"])),
        indicators=draw(st.lists(st.sampled_from(INDICATORS), max_size=4)),
        nationality=draw(st.sampled_from(["CI", "NG", "SN", "ma"])),
        languages=draw(st.lists(st.sampled_from(["fr", "ar", "en", "wo"]), max_size=3)),
        contact_phone=draw(st.sampled_from([None, "+212650123459", "0650123458"])),
        needs=draw(st.lists(st.sampled_from(SERVICES), min_size=1, max_size=3)),
        urgency=draw(st.sampled_from([None, "normal", "urgent", "emergency"])),
        notes=draw(st.sampled_from([None, "Fictional fuzz intake."])),
    )


PATHS = [
    ("external_ref",), ("identified_by",), ("identified_by", "agency"), ("identified_by", "officer_id"),
    ("identified_by", "region"), ("identified_at",), ("sector",), ("indicators",), ("immediate_danger",),
    ("person",), ("person", "pseudonym"), ("person", "age_group"), ("person", "sex"), ("person", "nationality"),
    ("person", "languages"), ("person", "contact_phone"), ("needs",), ("consent",), ("consent", "given"),
    ("consent", "recorded_by"), ("consent", "recorded_at"), ("urgency",), ("notes",),
]


def _set(data: dict, path: tuple[str, ...], value: Any, delete: bool = False) -> None:
    node: Any = data
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            return
        node = node[key]
    if delete:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


@st.composite
def mutated_intakes(draw) -> dict[str, Any]:
    """A valid intake with one to three random field mutations."""
    data = draw(valid_intakes())
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(PATHS))
        kind = draw(st.sampled_from(["value", "delete", "huge", "unknown_field", "list_of", "surrogate"]))
        if kind == "value":
            _set(data, path, draw(json_values))
        elif kind == "delete":
            _set(data, path, None, delete=True)
        elif kind == "huge":
            _set(data, path, draw(huge_strings))
        elif kind == "unknown_field":
            _set(data, (*path[:-1], draw(st.text(min_size=1, max_size=20))), draw(json_values))
        elif kind == "list_of":
            _set(data, path, [draw(json_values) for _ in range(draw(st.integers(0, 3)))])
        else:  # a lone surrogate inside an otherwise plausible string
            _set(data, path, "Test \ud83d Person")
    return data


def _encode(data: Any, ascii_only: bool, encoding: str = "utf-8") -> bytes:
    # ensure_ascii keeps lone surrogates as \\udXXX escapes, as a JSON client may send them.
    # UTF-16 and UTF-32 are valid JSON encodings (RFC 7159) that the API reads like UTF-8.
    return json.dumps(data, ensure_ascii=ascii_only or encoding != "utf-8").encode(encoding, "surrogatepass")


JSON_TYPES = st.sampled_from(["application/json", "application/json; charset=utf-8", "application/vnd.fuzz+json", "APPLICATION/JSON"])
OTHER_TYPES = st.sampled_from(
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml", "", "application/json-seq", "*/*"]
)


# --- the tests ---------------------------------------------------------------------------------


@FUZZ
@given(
    data=mutated_intakes(),
    ascii_only=st.booleans(),
    encoding=st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "utf-32-be"]),
    content_type=JSON_TYPES,
)
async def test_mutated_intakes_are_201_or_4xx(api, data, ascii_only, encoding, content_type):
    await api.post(_encode(data, ascii_only, encoding), content_type, data.get("external_ref"))


@settings(FUZZ, max_examples=MAX_EXAMPLES // 2)
@given(data=valid_intakes(), content_type=JSON_TYPES, twice=st.booleans())
async def test_valid_intakes_start_exactly_one_referral(api, data, content_type, twice):
    r = await api.post(_encode(data, False), content_type, data["external_ref"])
    assert r.status_code == 201, r.text
    if twice:
        again = await api.post(_encode(data, True), content_type, data["external_ref"])
        assert again.status_code == 200 and again.json()["code"] == r.json()["code"]


@settings(FUZZ, max_examples=MAX_EXAMPLES // 2)
@given(body=json_values, content_type=JSON_TYPES)
async def test_random_json_is_4xx(api, body, content_type):
    r = await api.post(_encode(body, True), content_type)
    assert 400 <= r.status_code < 500


@settings(FUZZ, max_examples=MAX_EXAMPLES // 2)
@given(
    content=st.one_of(
        st.binary(max_size=2000),
        st.builds(lambda d: _encode(d, False)[: len(_encode(d, False)) // 2], valid_intakes()),  # truncated
        st.integers(1, 40_000).map(lambda n: b"[" * n + b"]" * n),  # nested deep
        st.integers(1, 20_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.builds(lambda d: _encode(d, False).replace(b'"', b"\xff", 3), valid_intakes()),  # malformed bytes
    ),
    content_type=st.one_of(JSON_TYPES, OTHER_TYPES),
)
async def test_malformed_bytes_and_content_types_are_4xx(api, content, content_type):
    r = await api.post(content, content_type)
    assert 400 <= r.status_code < 500


@settings(FUZZ, max_examples=MAX_EXAMPLES // 4)
@given(data=valid_intakes(), content_type=OTHER_TYPES)
async def test_a_valid_intake_under_a_wrong_content_type_starts_nothing(api, data, content_type):
    r = await api.post(_encode(data, False), content_type, data["external_ref"])
    assert r.status_code == 415, r.text


async def assert_visibility_agrees(api: Api) -> None:
    """The workflows on the API's task queue are exactly the 201s."""

    async def counted():
        count = await api.client.count_workflows(f"TaskQueue = '{api.task_queue}'")
        return count.count == len(api.created)

    await wait_for(counted, timeout=15)
    ids = {wf.id async for wf in api.client.list_workflows(f"TaskQueue = '{api.task_queue}'")}
    assert ids == {referrals.workflow_id(code) for code in api.created.values()}


async def test_fuzzed_requests_started_exactly_the_201s(api):
    """After the fuzzing above (in this module's run), visibility agrees with the answers."""
    await assert_visibility_agrees(api)


async def test_no_referral_started_without_a_201(dev_env, tmp_path):
    """On a task queue of its own, whatever ran before: valid intakes (each sent twice), one
    with each field removed, one with each field of the wrong type, an unknown field, a valid
    intake under other content types, and broken JSON; visibility holds exactly the 201s."""
    async with open_api(dev_env.client, tmp_path / "data") as api:
        for variant in (fictional_intake(), fictional_intake(minor=True, consent=False), fictional_intake(danger=True, needs=["medical", "shelter"])):
            first = await api.post(_encode(variant, False), "application/json", variant["external_ref"])
            assert first.status_code == 201, first.text
            again = await api.post(_encode(variant, True), "application/json", variant["external_ref"])
            assert again.status_code == 200, again.text
        for path in PATHS:
            for mutate in ("delete", "wrong_type"):
                data = fictional_intake()
                _set(data, path, [{"x": 1}], delete=mutate == "delete")
                await api.post(_encode(data, False), "application/json", data.get("external_ref"))
        data = fictional_intake()
        data["unknown_field"] = "x"
        assert (await api.post(_encode(data, False), "application/json", data["external_ref"])).status_code == 422
        data = fictional_intake()
        for content_type in ("text/plain", None, "application/x-www-form-urlencoded"):
            assert (await api.post(_encode(data, False), content_type, data["external_ref"])).status_code == 415
        assert (await api.post(_encode(data, False)[:40], "application/json", data["external_ref"])).status_code == 422
        refused = sum(n for status, n in api.statuses.items() if 400 <= status < 500)
        assert len(api.created) >= 3 and refused >= len(PATHS), api.statuses
        await assert_visibility_agrees(api)
