"""The codec server: lets the Temporal UI (and `temporal --codec-endpoint`) show decrypted payloads
to authorised operators.

    POST /codec/decode   {"payloads": [{"metadata": {"encoding": "<base64>", ...}, "data": "<base64>"}]}
    POST /codec/encode   same shape, both ways

Temporal's remote codec protocol: the body and the answer are a `temporal.api.common.v1.Payloads`
in proto JSON (bytes as base64). Decoding uses the keys of REFERRAL_ENCRYPTION_KEYS (all of them:
histories written under an older key still decode); encoding uses the first. Without keys
(REFERRAL_ALLOW_PLAINTEXT=true) payloads are returned as they are.

Who may call it: a coordinator logged in to the web form (its session cookie, sent by the UI when
"Include cross-origin credentials" is on in the UI's codec settings), or a caller with a bearer
token of REFERRAL_API_TOKENS (e.g. `temporal workflow show --codec-endpoint ... --codec-auth
"Bearer <token>"`). Anyone else: 401. The CORS preflight (OPTIONS) needs no credentials and is
granted only to the Temporal UI's origin(s), TEMPORAL_UI_ORIGIN; other origins get no
`Access-Control-Allow-*` header, so a browser never hands them the answer.

Requests must be `application/json` (so a cross-site HTML form cannot post here) and at most
MAX_BODY_BYTES. Errors never include payload data: an unknown key id is named, nothing else.
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from config.settings import Settings
from infra.codec import PayloadDecryptionError
from infra.temporal import payload_codec
from web import deps
from web.security import authorised, current_session

router = APIRouter(prefix="/codec", include_in_schema=False)

MAX_BODY_BYTES = 8 * 1024 * 1024
ALLOWED_METHODS = "POST, OPTIONS"
ALLOWED_HEADERS = "Content-Type, Authorization, X-Namespace"
PREFLIGHT_MAX_AGE = "600"


def _cors_headers(settings: Settings, origin: str | None) -> dict[str, str]:
    """CORS headers for `origin` when it is the Temporal UI's; none otherwise."""
    headers = {"Vary": "Origin", "Cache-Control": "no-store"}
    if origin and origin.rstrip("/") in settings.ui_origins:
        headers.update(
            {
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Credentials": "true",
            }
        )
    return headers


def _error(status: int, message: str, cors: dict[str, str], extra: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={**cors, **(extra or {})})


def _authorised(request: Request, settings: Settings) -> bool:
    if authorised(settings, request.headers.get("authorization")):
        return True
    session = current_session(request)
    return session is not None and session.authenticated


@router.options("/{operation}")
async def preflight(operation: str, request: Request) -> Response:
    settings = deps.settings_of(request)
    origin = request.headers.get("origin")
    cors = _cors_headers(settings, origin)
    if operation not in ("decode", "encode") or "Access-Control-Allow-Origin" not in cors:
        return Response(status_code=403, headers=cors)
    cors.update(
        {
            "Access-Control-Allow-Methods": ALLOWED_METHODS,
            "Access-Control-Allow-Headers": ALLOWED_HEADERS,
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
        }
    )
    return Response(status_code=204, headers=cors)


async def _payloads(request: Request, cors: dict[str, str]) -> Payloads | JSONResponse:
    mime = (request.headers.get("content-type") or "").split(";", 1)[0].strip().lower()
    if mime != "application/json":
        return _error(415, "Content-Type must be application/json", cors)
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        return _error(413, f"the body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB", cors)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return _error(413, f"the body is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB", cors)
    try:
        payloads = Payloads()
        json_format.Parse(body or b"{}", payloads, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, UnicodeDecodeError):
        return _error(400, 'expected {"payloads": [{"metadata": {...}, "data": "<base64>"}]}', cors)
    return payloads


async def _convert(request: Request, operation: str) -> Response:
    settings = deps.settings_of(request)
    cors = _cors_headers(settings, request.headers.get("origin"))
    if not _authorised(request, settings):
        return _error(401, "log in to the web form, or send Authorization: Bearer <API token>", cors, {"WWW-Authenticate": "Bearer"})
    parsed = await _payloads(request, cors)
    if isinstance(parsed, JSONResponse):
        return parsed
    codec = payload_codec(settings)
    items = list(parsed.payloads)
    if codec is not None:
        try:
            items = await (codec.decode(items) if operation == "decode" else codec.encode(items))
        except PayloadDecryptionError as err:
            return _error(422, str(err), cors)
    answer = json_format.MessageToDict(Payloads(payloads=items), preserving_proto_field_name=True)
    answer.setdefault("payloads", [])
    return Response(json.dumps(answer), media_type="application/json", headers=cors)


@router.post("/decode")
async def decode(request: Request) -> Response:
    return await _convert(request, "decode")


@router.post("/encode")
async def encode(request: Request) -> Response:
    return await _convert(request, "encode")
