"""The codec server (/codec/encode, /codec/decode): round trip, authentication, CORS, and the
Temporal CLI decoding a real history through it."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import uvicorn

from config.settings import Settings
from infra.codec import new_key_entry
from starter import referrals
from tests.cases import NOTES, PHONE, PSEUDONYM, adult_intake
from tests.conftest import free_port
from web.app import create_app
from web.security import SESSION_COOKIE, encode_session, new_session

TOKEN = "codec-test-token"
UI = "http://localhost:8233"
BASE = "http://testserver"
TEMPORAL = str(Path(sys.executable).parent / "temporal")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def plain_body(*texts: str) -> dict:
    return {"payloads": [{"metadata": {"encoding": b64(b"json/plain")}, "data": b64(json.dumps(t).encode())} for t in texts]}


def payload_texts(cli_json: str) -> str:
    """Every `data` and `metadata` value of the CLI's JSON output, base64-decoded, one per line."""
    out: list[str] = []

    def walk(node: object, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for v in node:
                walk(v, key)
        elif isinstance(node, str) and key in ("data", "encoding", "encryption-key-id"):
            try:
                out.append(base64.b64decode(node).decode("utf-8", "replace"))
            except ValueError:
                pass

    try:
        walk(json.loads(cli_json))
    except ValueError:
        return ""
    return "\n".join(out)


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings(referral_api_tokens=TOKEN)


@pytest.fixture
async def http(settings, dev_env):
    app = create_app(settings, client=dev_env.client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
        yield client


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_round_trip_encode_then_decode(http):
    body = plain_body(PSEUDONYM, "second")
    encoded = await http.post("/codec/encode", json=body, headers=bearer())
    assert encoded.status_code == 200, encoded.text
    payloads = encoded.json()["payloads"]
    assert len(payloads) == 2
    for p in payloads:
        assert base64.b64decode(p["metadata"]["encoding"]) == b"binary/encrypted"
        assert base64.b64decode(p["metadata"]["encryption-key-id"]) == b"test-1"
    assert PSEUDONYM not in encoded.text and b64(json.dumps(PSEUDONYM).encode()) not in encoded.text

    decoded = await http.post("/codec/decode", json=encoded.json(), headers=bearer())
    assert decoded.status_code == 200
    assert decoded.json() == body
    assert decoded.headers["cache-control"] == "no-store"


async def test_decode_leaves_plain_payloads_and_names_an_unknown_key(http, make_settings):
    assert (await http.post("/codec/decode", json=plain_body("x"), headers=bearer())).json() == plain_body("x")
    assert (await http.post("/codec/decode", json={}, headers=bearer())).json() == {"payloads": []}

    other = make_settings(referral_api_tokens=TOKEN, referral_encryption_keys=new_key_entry("elsewhere"))
    app = create_app(other, client=object())  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as foreign:
        sealed = (await foreign.post("/codec/encode", json=plain_body(PSEUDONYM), headers=bearer())).json()
    refused = await http.post("/codec/decode", json=sealed, headers=bearer())
    assert refused.status_code == 422
    assert "'elsewhere'" in refused.json()["error"] and PSEUDONYM not in refused.text

    assert (await http.post("/codec/decode", content=b"{not json", headers={**bearer(), "Content-Type": "application/json"})).status_code == 400
    form = await http.post("/codec/decode", content=b"payloads=1", headers={**bearer(), "Content-Type": "text/plain"})
    assert form.status_code == 415


async def test_authentication_bearer_or_login_session(http, settings):
    for headers in ({}, bearer("wrong"), {"Authorization": "Basic " + b64(b"api:" + TOKEN.encode())}):
        refused = await http.post("/codec/decode", json=plain_body("x"), headers=headers)
        assert refused.status_code == 401, headers
        assert refused.headers["www-authenticate"] == "Bearer"
        assert "payloads" not in refused.json()

    # The login form's session before login (CSRF only) is not a login.
    http.cookies.set(SESSION_COOKIE, encode_session(settings, new_session(settings, None)))
    assert (await http.post("/codec/decode", json=plain_body("x"))).status_code == 401
    http.cookies.set(SESSION_COOKIE, "forged.value")
    assert (await http.post("/codec/decode", json=plain_body("x"))).status_code == 401

    http.cookies.set(SESSION_COOKIE, encode_session(settings, new_session(settings, "coordinator")))
    ok = await http.post("/codec/decode", json=plain_body("x"))
    assert ok.status_code == 200 and ok.json() == plain_body("x")
    http.cookies.clear()
    assert (await http.post("/codec/encode", json=plain_body("x"), headers=bearer())).status_code == 200


async def test_cors_preflight_only_for_the_ui_origin(http, settings):
    request_headers = "content-type,authorization,x-namespace"
    for path in ("/codec/decode", "/codec/encode"):
        pre = await http.options(
            path,
            headers={"Origin": UI, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": request_headers},
        )
        assert pre.status_code in (200, 204)
        assert pre.headers["access-control-allow-origin"] == UI
        assert pre.headers["access-control-allow-credentials"] == "true"
        allowed = {h.strip().lower() for h in pre.headers["access-control-allow-headers"].split(",")}
        assert {"content-type", "authorization", "x-namespace"} <= allowed
        assert "POST" in pre.headers["access-control-allow-methods"]

    evil = await http.options(
        "/codec/decode",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": request_headers},
    )
    assert "access-control-allow-origin" not in evil.headers
    assert "access-control-allow-credentials" not in evil.headers

    # The actual requests: the UI's origin may read the answer (and a 401), another may not.
    ok = await http.post("/codec/decode", json=plain_body("x"), headers={**bearer(), "Origin": UI, "X-Namespace": "default"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == UI
    assert ok.headers["access-control-allow-credentials"] == "true" and "Origin" in ok.headers["vary"]
    unauth = await http.post("/codec/decode", json=plain_body("x"), headers={"Origin": UI})
    assert unauth.status_code == 401 and unauth.headers["access-control-allow-origin"] == UI
    other = await http.post("/codec/decode", json=plain_body("x"), headers={**bearer(), "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


async def test_the_temporal_cli_decodes_a_history_through_the_codec_server(dev_env, settings):
    """What an operator does: `temporal workflow show --codec-endpoint .../codec --codec-auth`."""
    client = dev_env.client
    started = await referrals.start_referral(
        client,
        adult_intake(needs=["shelter"], person={"pseudonym": PSEUDONYM, "contact_phone": PHONE}, notes=NOTES),
        f"no-worker-{uuid.uuid4()}",  # the start event is all this needs
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, client=client), host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), "uvicorn did not start"
            await asyncio.sleep(0.05)
        base = [TEMPORAL, "workflow", "show", "--workflow-id", started.workflow_id, "--address",
                client.service_client.config.target_host, "--namespace", client.namespace, "--output", "json",
                "--codec-endpoint", f"http://127.0.0.1:{port}/codec"]  # fmt: skip

        def run(*extra: str) -> subprocess.CompletedProcess:
            return subprocess.run([*base, *extra], capture_output=True, text=True, timeout=60)

        decoded = await asyncio.to_thread(run, "--codec-auth", f"Bearer {TOKEN}")
        assert decoded.returncode == 0, decoded.stderr
        # The CLI prints payload data as base64 of the decoded (json/plain) bytes.
        assert PSEUDONYM in payload_texts(decoded.stdout) and NOTES in payload_texts(decoded.stdout)
        assert "binary/encrypted" not in payload_texts(decoded.stdout)

        refused = await asyncio.to_thread(run)
        assert PSEUDONYM not in refused.stdout + refused.stderr + payload_texts(refused.stdout)
    finally:
        server.should_exit = True
        await serving
        await client.get_workflow_handle(started.workflow_id).terminate("test over")
