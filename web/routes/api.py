"""The coordinators' JSON API under /api: start, read, list and steer referrals.

Every route mirrors a CLI command and calls the same functions in `starter.referrals`.

- Auth: `Authorization: Bearer <token>`, compared in constant time with each token of
  `REFERRAL_API_TOKENS` (comma-separated). None configured: every call is refused. It is checked
  before the body is read, so an unauthenticated caller learns nothing about its input.
- Errors: `{"errors": [{"field", "message"}]}` (400, 401, 404, 405, 413, 415, 422, 503) and, for an update
  the referral refused, 409 `{"kind", "message"}` with `kind` from `workflows.models.REJECTION_TYPES`.
  The same action or reply applied twice (`already_applied`) is not an error: 200
  `{"code", "kind": "already_applied", "message"}`, so a script may safely retry.
  No error ever repeats a submitted value: the intake holds personal data.
- Bodies: JSON only (`Content-Type: application/json`, else 415), at most 64 KiB (else 413).
- `Idempotency-Key` header (optional) on actions and replies: becomes the Temporal update id, so a
  retried call is applied once and answered with the first outcome.

FastAPI's default handling of invalid requests (a 422 whose `detail` echoes the `input`) is
replaced for these routes by `ApiRoute`, which turns it into the field list above.

/openapi.json declares all of this (patterns, enums, lengths, cross-field rules, the body limit,
every error answer), so a client built from it is refused only for what it states;
tests/web/test_openapi.py sends requests built from the document alone to check it.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator
from starlette.exceptions import HTTPException
from temporalio.service import RPCError

from activities.directory import CONTACT_ID_PATTERN, ConfigError, load_directory
from config.settings import Settings
from ledger.record import DECLINE_CODES, DeclineCode, ServiceOutcome
from starter import referrals
from web import deps, erasures
from web.security import authorised
from workflows.intake import REGIONS, Intake, Region, Service, field_errors
from workflows.models import (
    REJECTION_TYPES,
    STAGES,
    ActionOutcome,
    CoordinatorAction,
    PartnerAction,
    PartnerReply,
    ReferralStatus,
    ReplyOutcome,
    Stage,
)
from workflows.update_rules import CONSENT_WITHDRAWN_OUTCOME, misplaced_decline_code

MAX_BODY_BYTES = 64 * 1024


# --- response and body models (shown at /docs) -------------------------------------------


class FieldError(BaseModel):
    field: str = Field(description="dotted path of the field, e.g. person.contact_phone; (body) for the whole body")
    message: str = Field(description="what is wrong; never the submitted value")


class ErrorList(BaseModel):
    errors: list[FieldError]


class Rejection(BaseModel):
    kind: str = Field(
        description="why the referral refused the update",
        json_schema_extra={"enum": [kind for kind in REJECTION_TYPES if kind != "already_applied"]},
    )
    message: str


class AlreadyApplied(BaseModel):
    code: str
    kind: Literal["already_applied"] = "already_applied"
    message: str


class StartedReferral(BaseModel):
    code: str = Field(description="the referral code, e.g. 7K3Q9 (shown as R-7K3Q9)")
    workflow_id: str
    status_url: str
    created: bool = Field(description="false when this external_ref had already started the referral")


class ReferralList(BaseModel):
    referrals: list[referrals.ListedReferral]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# Surrounding spaces are stripped before the checks (`str_strip_whitespace`).
_PARTNER_ID: dict[str, Any] = {"pattern": CONTACT_ID_PATTERN}


class AssignBody(_Body):
    service: Service
    partner_id: str = Field(
        min_length=1,
        max_length=64,
        description="the id of a partner in the directory that offers `service`; any other is refused with 422 on partner_id",
        json_schema_extra=_PARTNER_ID,
    )
    by: str | None = Field(default=None, max_length=64, description="coordinator id")
    reason: str | None = Field(default=None, max_length=1600)


class CloseBody(_Body):
    service: Service | None = Field(default=None, description="close only this service; the whole referral when absent")
    outcome: ServiceOutcome = Field(description="how the service ended, or every service still open when the whole referral closes")
    by: str | None = Field(default=None, max_length=64)
    reason: str | None = Field(default=None, max_length=1600)


class _ActionFields(_Body):
    by: str | None = Field(default=None, max_length=64)
    reason: str | None = Field(default=None, max_length=1600)


class ActionBody(_ActionFields):  # a withdrawal of consent
    erase: bool = Field(default=False, description="also erase the person's data for good, as POST .../erase (cannot be undone)")


class CancelBody(_ActionFields):
    outcome: ServiceOutcome | None = Field(default=None, description="optional: how the services still open ended")


_DECLINE_CODE_RULE = (
    "only with action decline: "
    + ", ".join(f"{n} {meaning}" for n, meaning in DECLINE_CODES.items())
    + "; absent: a decline without a reason code"
)


class ReplyBody(_Body):
    partner_id: str = Field(
        min_length=1,
        max_length=64,
        description="a partner offered (or holding) this referral; any other is refused with 409 (not_offered)",
        json_schema_extra=_PARTNER_ID,
    )
    action: PartnerAction
    reason: str | None = Field(default=None, max_length=1600, description="free text, kept in the encrypted history only")
    decline_code: DeclineCode | None = Field(default=None, description=_DECLINE_CODE_RULE)
    service: Service | None = Field(default=None, description="the service replied about; all of the partner's when absent")

    # The rule stated in the schema too, so a client built from the document keeps to it.
    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"action": {"not": {"const": "decline"}}}, "required": ["action"]},
        "then": {"properties": {"decline_code": {"type": "null"}}},
    })

    @model_validator(mode="after")
    def _decline_code_only_with_decline(self) -> ReplyBody:
        if problem := misplaced_decline_code(self.action, self.decline_code):
            raise ValueError(problem)
        return self


# --- errors, auth and body limits: one route class for every /api route --------------------


class ApiError(Exception):
    def __init__(self, status: int, errors: list[dict[str, str]], headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.errors = errors
        self.headers = headers


def _error(status: int, field: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"errors": [{"field": field, "message": message}]}, status_code=status, headers=headers)


def request_errors(errors: list[Any]) -> list[dict[str, str]]:
    """FastAPI's validation errors as {field, message}, without `input` or `ctx` (personal data)."""
    out = []
    for item in errors:
        loc = [str(p) for p in item.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        if item.get("type") == "json_invalid":
            out.append({"field": "(body)", "message": "malformed JSON"})
            continue
        field = ".".join(loc)
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        if not field and ": " in message:
            # Model-level rules name their own field: "consent: ..."
            field, message = message.split(": ", 1)
        out.append({"field": field or "(body)", "message": message})
    return out


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


async def _read_capped(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            if int(length) > MAX_BODY_BYTES:
                raise ApiError(413, [{"field": "(body)", "message": f"the body is larger than {MAX_BODY_BYTES // 1024} KiB"}])
        except ValueError:
            raise ApiError(400, [{"field": "(body)", "message": "bad Content-Length"}]) from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, [{"field": "(body)", "message": f"the body is larger than {MAX_BODY_BYTES // 1024} KiB"}])
        chunks.append(chunk)
    body = b"".join(chunks)
    # Starlette caches the body here; FastAPI's handler then reads this copy.
    request._body = body
    return body


class ApiRoute(APIRoute):
    """Checks the bearer token, caps and types the body, and renders every error as JSON fields."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            try:
                if not authorised(deps.settings_of(request), request.headers.get("authorization")):
                    return _error(401, "Authorization", "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
                if request.method in ("POST", "PUT", "PATCH"):
                    body = await _read_capped(request)
                    if body and not _is_json(request.headers.get("content-type")):
                        return _error(415, "(body)", "Content-Type must be application/json")
                return await handle(request)
            except ApiError as err:
                return JSONResponse({"errors": err.errors}, status_code=err.status, headers=err.headers)
            except RequestValidationError as err:
                return JSONResponse({"errors": request_errors(list(err.errors()))}, status_code=422)
            except HTTPException as err:
                if err.status_code != 400:
                    raise
                # FastAPI's own "error parsing the body" (bad UTF-8, JSON nested too deep)
                return _error(400, "(body)", "the body is not valid JSON")
            except ValidationError as err:
                return JSONResponse({"errors": field_errors(err)}, status_code=422)
            except referrals.ReferralNotFound as err:
                return _error(404, "code", str(err))
            except referrals.ReferralRejected as err:
                if err.kind == "already_applied":
                    code = request.path_params.get("code", "")
                    return JSONResponse(AlreadyApplied(code=_normalised(code), message=str(err)).model_dump())
                return JSONResponse(Rejection(kind=err.kind, message=str(err)).model_dump(), status_code=409)
            except RPCError:
                return _error(503, "(server)", "Temporal is unavailable; try again later")

        return route_handler


def _normalised(code: str) -> str:
    try:
        return referrals.normalise_code(code)
    except ValueError:
        return code


# The scheme is declared for /docs ("Authorize"); `ApiRoute` does the actual check.
bearer_doc = HTTPBearer(auto_error=False, description="a token from REFERRAL_API_TOKENS")

ERRORS = {"model": ErrorList}
router = APIRouter(
    prefix="/api",
    tags=["referrals"],
    route_class=ApiRoute,
    dependencies=[Depends(bearer_doc)],
    responses={
        401: {**ERRORS, "description": "no or wrong bearer token (checked before anything else)"},
        422: {**ERRORS, "description": "invalid input, against this document's schemas; each error names its field, never its value"},
        503: {**ERRORS, "description": "Temporal unreachable"},
    },
)

CodePath = Annotated[
    str,
    Path(
        description="referral code: 7K3Q9, R-7K3Q9, r7k3q9 or referral-7K3Q9; anything else is 422 on code",
        json_schema_extra={"pattern": referrals.CODE_PATTERN},
    ),
]
_KEY_PATTERN, _KEY_MAX_LENGTH = r"^[A-Za-z0-9._:-]+$", 64
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=_KEY_MAX_LENGTH,
        pattern=_KEY_PATTERN,
        description="optional; a retry with the same key is applied once and answered with the first outcome",
    ),
    # A header is a string or absent, never null.
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": _KEY_MAX_LENGTH, "pattern": _KEY_PATTERN}),
]
# Answers of every route that reads a body (`ApiRoute` and FastAPI's parser).
_BODY_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**ERRORS, "description": "unreadable body: not UTF-8, nested too deep, or a bad Content-Length"},
    413: {**ERRORS, "description": f"body over {MAX_BODY_BYTES // 1024} KiB"},
    415: {**ERRORS, "description": "a body that is not application/json (or application/*+json)"},
}
_BODY = (
    f"JSON (application/json, or application/*+json) of at most {MAX_BODY_BYTES // 1024} KiB. A field the "
    "schema does not name is refused; the spaces around a string are removed before it is checked."
)
_BODY_DOC = {"requestBody": {"description": _BODY}}
_OPTIONAL_BODY_DOC = {"requestBody": {"description": f"{_BODY} Optional: no body (or null) is the same as {{}}."}}
_UPDATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "applied; or applied before (kind already_applied), so a retry is safe"},
    **_BODY_RESPONSES,
    404: {**ERRORS, "description": "no such referral"},
    409: {"model": Rejection, "description": "refused by the referral (closed, not offered, ...)"},
}


def _code(text: str) -> str:
    try:
        return referrals.normalise_code(text)
    except ValueError as err:
        field, _, message = str(err).partition(": ")
        raise ApiError(422, [{"field": "code", "message": message or field}]) from None


def _update_id(key: str | None, what: str) -> str | None:
    return f"api-{what}-{key}" if key else None


def _status_url(settings: Settings, code: str) -> str:
    return f"{settings.public_base_url.rstrip('/')}/api/referrals/{code}"


@router.post(
    "/referrals",
    status_code=201,
    response_model=StartedReferral,
    summary="Start a referral from an intake",
    responses={
        200: {"model": StartedReferral, "description": "this external_ref already started a referral: that one"},
        **_BODY_RESPONSES,
    },
    openapi_extra=_BODY_DOC,
)
async def start(intake: Intake, request: Request, response: Response) -> StartedReferral:
    """Idempotent by `external_ref`: the same one again answers 200 with the existing referral."""
    settings = deps.settings_of(request)
    started = await referrals.start_referral(deps.client_of(request), intake, settings.referral_task_queue)
    url = _status_url(settings, started.code)
    response.status_code = 201 if started.created else 200
    response.headers["Location"] = url
    return StartedReferral(code=started.code, workflow_id=started.workflow_id, status_url=url, created=started.created)


@router.get(
    "/referrals/{code}",
    response_model=ReferralStatus,
    summary="A referral's status (no personal data)",
    responses={
        404: {**ERRORS, "description": "no such referral"},
        410: {"model": erasures.Gone, "description": "the referral's data was erased (GET .../erasure for when and by whom)"},
    },
)
async def status(code: CodePath, request: Request) -> ReferralStatus | JSONResponse:
    code = _code(code)
    try:
        return await referrals.get_status(deps.client_of(request), code)
    except referrals.ReferralNotFound:
        if (done := await erasures.erased(deps.settings_of(request), code)) is not None:
            return erasures.gone(done)
        raise


@router.get("/referrals", response_model=ReferralList, summary="Referrals from Temporal visibility")
async def list_(
    request: Request,
    # Absent means any; a query string has no null, so the document names only the values.
    stage: Annotated[Stage | None, Query(), WithJsonSchema({"type": "string", "enum": list(STAGES)})] = None,
    region: Annotated[Region | None, Query(), WithJsonSchema({"type": "string", "enum": list(REGIONS)})] = None,
    overdue: Annotated[bool, Query(description="open referrals past a deadline or escalated")] = False,
) -> ReferralList:
    rows = await referrals.list_referrals(deps.client_of(request), referrals.list_query(stage, region, overdue))
    return ReferralList(referrals=list(rows))


async def _act(request: Request, code: str, action: CoordinatorAction, key: str | None) -> ActionOutcome:
    return await referrals.coordinator_action(deps.client_of(request), _code(code), action, _update_id(key, action.action))


@router.post(
    "/referrals/{code}/assign",
    response_model=ActionOutcome | AlreadyApplied,
    responses={
        **_UPDATE_RESPONSES,
        422: {**ERRORS, "description": "invalid input, or partner_id not a partner of the directory offering `service`"},
        503: {**ERRORS, "description": "Temporal unreachable, or the partner directory unreadable"},
    },
    summary="Assign a partner to a service by hand",
    openapi_extra=_BODY_DOC,
)
async def assign(code: CodePath, body: AssignBody, request: Request, idempotency_key: IdempotencyKey = None) -> ActionOutcome:
    code = _code(code)
    _check_partner(deps.settings_of(request), body.partner_id, body.service)
    action = CoordinatorAction(action="assign", service=body.service, partner_id=body.partner_id, by=body.by, reason=body.reason)
    return await _act(request, code, action, idempotency_key)


@router.post(
    "/referrals/{code}/cancel",
    response_model=ActionOutcome | AlreadyApplied,
    responses=_UPDATE_RESPONSES,
    summary="Cancel the referral",
    openapi_extra=_OPTIONAL_BODY_DOC,
)
async def cancel(code: CodePath, request: Request, body: CancelBody | None = None, idempotency_key: IdempotencyKey = None) -> ActionOutcome:
    body = body or CancelBody()
    action = CoordinatorAction(action="cancel", by=body.by, reason=body.reason, outcome=body.outcome)
    return await _act(request, code, action, idempotency_key)


@router.post(
    "/referrals/{code}/close",
    response_model=ActionOutcome | AlreadyApplied,
    responses=_UPDATE_RESPONSES,
    summary="Close the referral, or one service, saying how it ended",
    openapi_extra=_BODY_DOC,
)
async def close(code: CodePath, body: CloseBody, request: Request, idempotency_key: IdempotencyKey = None) -> ActionOutcome:
    action = CoordinatorAction(action="close", service=body.service, by=body.by, reason=body.reason, outcome=body.outcome)
    return await _act(request, code, action, idempotency_key)


@router.post(
    "/referrals/{code}/withdraw-consent",
    response_model=ActionOutcome | AlreadyApplied | erasures.ErasureResult,
    responses={
        **_UPDATE_RESPONSES,
        200: {"description": "applied (or before: already_applied); with erase, the erasure's answer, as POST .../erase"},
        202: {"model": erasures.ErasureUnderWay, "description": "with erase: withdrawn, the erasure under way (it goes on by itself)"},
    },
    summary=f"The person withdrew consent: stop everything (the services still open: {CONSENT_WITHDRAWN_OUTCOME}); optionally erase",
    openapi_extra=_OPTIONAL_BODY_DOC,
)
async def withdraw_consent(code: CodePath, request: Request, body: ActionBody | None = None, idempotency_key: IdempotencyKey = None) -> Any:
    body = body or ActionBody()
    action = CoordinatorAction(action="withdraw_consent", by=body.by, reason=body.reason)
    if not body.erase:
        return await _act(request, code, action, idempotency_key)
    try:  # then erase, also when withdrawn or closed before; an erased one answers `already`
        await _act(request, code := _code(code), action, idempotency_key)
    except referrals.ReferralRejected as err:
        if err.kind not in ("already_applied", "referral_closed"):
            raise
    except referrals.ReferralNotFound:
        if await erasures.recorded(deps.settings_of(request), code) is None:
            raise
    reason = erasures.CONSENT_WITHDRAWN + (f": {body.reason}" if body.reason else "")
    return await erasures.erase_for_api(deps.client_of(request), deps.settings_of(request), code, body.by, reason)


@router.post(
    "/referrals/{code}/replies",
    response_model=ReplyOutcome | AlreadyApplied,
    responses=_UPDATE_RESPONSES,
    summary="Record a partner's reply, as an SMS reply would",
    openapi_extra=_BODY_DOC,
)
async def reply(code: CodePath, body: ReplyBody, request: Request, idempotency_key: IdempotencyKey = None) -> ReplyOutcome:
    code = _code(code)
    answer = PartnerReply(
        partner_id=body.partner_id, action=body.action, reason=body.reason, decline_code=body.decline_code, service=body.service, channel="api"
    )
    return await referrals.partner_reply(deps.client_of(request), code, answer, _update_id(idempotency_key, "reply"))


def _check_partner(settings: Settings, partner_id: str, service: str) -> None:
    try:
        partner = load_directory(settings.referral_partners_file).partner(partner_id)
    except ConfigError:
        raise ApiError(503, [{"field": "(server)", "message": "the partner directory cannot be read"}]) from None
    if partner is None:
        raise ApiError(422, [{"field": "partner_id", "message": "no such partner in the directory"}])
    if service not in partner.services:
        raise ApiError(422, [{"field": "partner_id", "message": f"this partner does not offer {service}"}])
