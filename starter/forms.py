"""The coordinators' web form: log in, start a referral, follow it and act on it.

Server-rendered HTML (Jinja2 templates in starter/templates, CSS in starter/static, no script
at all), French by default, Arabic (right to left) and English through `?lang=` and a cookie.

    GET  /login, POST /login, POST /logout
    GET  /referrals              the list (stage filter; `?code=` opens one)
    GET  /referrals/new          the intake form; POST starts the referral
    GET  /referrals/{code}       the referral: stage, per-service timeline, actions
    POST /referrals/{code}/actions   assign, close (whole or one service), cancel, withdraw consent

Sessions are a signed cookie (HMAC-SHA256 with WEB_SESSION_SECRET) holding the login, a CSRF
token and the expiry; every POST carries that token in a hidden field. Logins come from
COORDINATOR_LOGINS (`login:pbkdf2_sha256$iterations$salt$hex`, made by
`python -m starter.forms hash-password`), and the login `api` also accepts any token of
REFERRAL_API_TOKENS. The same implementation as the CLI and the API starts and steers
referrals (starter.referrals). No value typed in the form is ever logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import structlog
import yaml
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from temporalio.service import RPCError

from activities.directory import ConfigError, Directory, load_directory
from activities.messages import catalogue
from config.settings import Settings
from starter import referrals
from starter.web import client_of, settings_of
from workflows.intake import INDICATORS, REGIONS, SERVICES, Intake, field_errors
from workflows.models import STAGE_ORDER, CoordinatorAction, ReferralStatus, ServiceStatus

log = structlog.get_logger(__name__)

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

LANGS = ("fr", "ar", "en")
DEFAULT_LANG = "fr"
SESSION_COOKIE = "referral_session"
LANG_COOKIE = "referral_lang"
STAGES = (*STAGE_ORDER, "escalated")
AGENCIES: tuple[str, ...] = Intake.model_fields["identified_by"].annotation.model_fields["agency"].annotation.__args__  # type: ignore[union-attr]
SECTORS: tuple[str, ...] = Intake.model_fields["sector"].annotation.__args__  # type: ignore[union-attr]
AGE_GROUPS = ("adult", "minor", "unknown")
SEXES = ("female", "male", "other", "unknown")
URGENCIES = ("normal", "urgent", "emergency")
WHOLE_ACTIONS = ("close", "cancel", "withdraw_consent")
ACTION_TIMEOUT_SECONDS = 20.0

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


class _SecureRoute(APIRoute):
    """Every response of this router carries the security headers; pages are never cached."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def secured(request: Request) -> Response:
            response = await handler(request)
            for name, value in SECURITY_HEADERS.items():
                if name not in response.headers:
                    response.headers[name] = value
            return response

        return secured


router = APIRouter(route_class=_SecureRoute, include_in_schema=False)


# --- passwords -----------------------------------------------------------------------------

PBKDF2_ITERATIONS = 600_000
_HASH = re.compile(r"^pbkdf2_sha256\$(\d{1,9})\$([A-Za-z0-9./+_-]{1,128})\$([0-9a-f]{64})$")


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS, salt: str | None = None) -> str:
    """`pbkdf2_sha256$<iterations>$<salt>$<hex>` for COORDINATOR_LOGINS."""
    if not password:
        raise ValueError("password: empty")
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations).hex()
    return f"pbkdf2_sha256${iterations}${salt}${digest}"


def verify_password(password: str, encoded: str) -> bool:
    match = _HASH.match(encoded)
    if not match or not password:
        return False
    iterations, salt, expected = int(match[1]), match[2], match[3]
    if iterations < 1:
        return False
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), iterations).hex()
    return hmac.compare_digest(digest, expected)


# Spent on an unknown login, so that it takes as long as a wrong password for a known one.
_DUMMY_HASH = hash_password(secrets.token_hex(8), salt="dummy-salt-for-timing")


def parse_logins(text: str) -> dict[str, str]:
    """COORDINATOR_LOGINS -> {login: hash}; a malformed entry is skipped with a warning."""
    out: dict[str, str] = {}
    for entry in (text or "").split(","):
        entry = entry.strip()
        if not entry:
            continue
        login, _, encoded = entry.partition(":")
        login, encoded = login.strip(), encoded.strip()
        if not login or not _HASH.match(encoded):
            # Never log the entry itself: it holds a hash.
            log.warning("coordinator_logins_entry_ignored", login=login or "(empty)")
            continue
        out[login] = encoded
    return out


def _api_tokens(settings: Settings) -> list[str]:
    return [t.strip() for t in (settings.referral_api_tokens or "").split(",") if t.strip()]


def check_credentials(settings: Settings, login: str, password: str) -> bool:
    """Constant-time where it matters: every token is compared, an unknown login costs a hash."""
    logins = parse_logins(settings.coordinator_logins)
    encoded = logins.get(login)
    ok = verify_password(password, encoded if encoded is not None else _DUMMY_HASH) and encoded is not None
    if hmac.compare_digest(login.encode(), b"api") and password:
        for token in _api_tokens(settings):
            if hmac.compare_digest(password.encode(), token.encode()):
                ok = True
    return ok


# --- sessions ------------------------------------------------------------------------------

_PROCESS_KEY = secrets.token_bytes(32)
# Sessions ended by logout in this process, until they would have expired anyway.
_REVOKED: dict[str, float] = {}


@dataclass(frozen=True)
class Session:
    sid: str
    login: str | None  # None: before login (the login form's CSRF token lives here)
    csrf: str
    expires: float

    @property
    def authenticated(self) -> bool:
        return self.login is not None


def _key(settings: Settings) -> bytes:
    secret = settings.web_session_secret
    if not secret:
        return _PROCESS_KEY
    return hashlib.sha256(b"referral-web-session-key\x00" + secret.encode()).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode_session(settings: Settings, session: Session) -> str:
    payload = _b64(json.dumps({"s": session.sid, "l": session.login, "c": session.csrf, "e": int(session.expires)}, separators=(",", ":")).encode())
    mac = hmac.new(_key(settings), b"session\x00" + payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def decode_session(settings: Settings, value: str | None, now: float | None = None) -> Session | None:
    """The session in a cookie, or None when absent, tampered with, expired or logged out."""
    if not value or value.count(".") != 1 or len(value) > 2048:
        return None
    payload, mac = value.split(".")
    expected = _b64(hmac.new(_key(settings), b"session\x00" + payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        return None
    try:
        data = json.loads(_unb64(payload))
        session = Session(sid=str(data["s"]), login=data["l"], csrf=str(data["c"]), expires=float(data["e"]))
    except (ValueError, KeyError, TypeError):
        return None
    now = time.time() if now is None else now
    if session.expires <= now or session.sid in _REVOKED:
        return None
    return session


def new_session(settings: Settings, login: str | None) -> Session:
    hours = settings.web_session_hours if login else min(settings.web_session_hours, 2.0)
    return Session(
        sid=secrets.token_urlsafe(16),
        login=login,
        csrf=secrets.token_urlsafe(32),
        expires=float(int(time.time() + hours * 3600)),
    )


def _revoke(session: Session) -> None:
    now = time.time()
    for sid, until in list(_REVOKED.items()):
        if until <= now:
            del _REVOKED[sid]
    _REVOKED[session.sid] = session.expires


def _secure_cookies(settings: Settings) -> bool:
    return settings.public_base_url.lower().startswith("https://")


def _set_session(response: Response, settings: Settings, session: Session) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        encode_session(settings, session),
        max_age=max(1, int(session.expires - time.time())),
        path="/",
        httponly=True,
        samesite="lax",
        secure=_secure_cookies(settings),
    )


def current_session(request: Request) -> Session | None:
    return decode_session(settings_of(request), request.cookies.get(SESSION_COOKIE))


def _csrf_ok(session: Session | None, form: Any) -> bool:
    sent = form.get("csrf") if form is not None else None
    if session is None or not isinstance(sent, str) or not sent:
        return False
    return hmac.compare_digest(sent.encode(), session.csrf.encode())


def _safe_next(value: str | None) -> str:
    """Only a path of this site: never `//host` or `http://…` (no open redirect)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value and len(value) < 512:
        return value
    return "/referrals/new"


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":
        target = request.url.path
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


# --- language and rendering ----------------------------------------------------------------


@lru_cache(maxsize=1)
def ui_strings() -> dict[str, dict[str, dict[str, str]]]:
    return yaml.safe_load((TEMPLATES / "strings.yaml").read_text(encoding="utf-8"))


def language_of(request: Request) -> str:
    asked = request.query_params.get("lang")
    if asked in LANGS:
        return asked
    kept = request.cookies.get(LANG_COOKIE)
    return kept if kept in LANGS else DEFAULT_LANG


class Words:
    """What templates call `t(...)` and `label(...)`, in one language."""

    def __init__(self, lang: str, settings: Settings) -> None:
        self.lang = lang
        self._ui = ui_strings()
        try:
            self._labels = catalogue(settings.referral_messages_dir, lang)["labels"]
        except Exception:  # a broken messages file must not take the form down
            self._labels = {}
        self._tz = ZoneInfo(settings.referral_timezone)

    def t(self, key: str, **values: Any) -> str:
        entry = self._ui["strings"].get(key)
        text = entry.get(self.lang) or entry[DEFAULT_LANG] if entry else key
        if not values:
            return text
        if self.lang == "ar":
            # Latin names, codes and dates inside Arabic text: isolate each (FSI ... PDI) so the
            # bidirectional algorithm does not reorder their parts.
            values = {k: f"\u2068{v}\u2069" for k, v in values.items()}
        return text.format(**values)

    def label(self, kind: str, value: str | None) -> str:
        if value is None:
            return ""
        if kind in ("services", "regions", "urgency", "age_group", "closed_reason", "problems"):
            return str(self._labels.get(kind, {}).get(value, value))
        entry = self._ui.get(kind, {}).get(value)
        return entry.get(self.lang, value) if entry else value

    def when(self, value: datetime | None) -> str:
        if value is None:
            return ""
        return value.astimezone(self._tz).strftime("%d/%m/%Y %H:%M")


def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["nonce"] = lambda: secrets.token_urlsafe(18)
    return env


_ENV = _env()


LANGUAGE_NAMES = {"fr": "Français", "ar": "العربية", "en": "English"}
# Query parameters that announce something once; a language switch does not repeat them.
_ONE_OFF = ("lang", "created", "existing", "done", "rejected", "pending", "bye")


def _lang_links(request: Request) -> list[dict[str, str]]:
    kept = [(k, v) for k, v in request.query_params.multi_items() if k not in _ONE_OFF]
    return [
        {"code": code, "name": name, "href": f"{request.url.path}?{urlencode([*kept, ('lang', code)])}"}
        for code, name in LANGUAGE_NAMES.items()
    ]


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", name.replace(".", "-"))


def fid(name: str) -> str:
    return f"f-{slug(name)}"


def render(request: Request, template: str, status_code: int = 200, session: Session | None = None, **context: Any) -> HTMLResponse:
    settings = settings_of(request)
    lang = language_of(request)
    words = Words(lang, settings)
    context.setdefault("csrf", session.csrf if session else "")
    html = _ENV.get_template(template).render(
        lang=lang,
        dir="rtl" if lang == "ar" else "ltr",
        t=words.t,
        label=words.label,
        when=words.when,
        path=request.url.path,
        lang_links=_lang_links(request),
        session=session,
        slug=slug,
        fid=fid,
        **context,
    )
    response = HTMLResponse(html, status_code=status_code)
    if request.query_params.get("lang") in LANGS:
        response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, path="/", httponly=True, samesite="lax", secure=_secure_cookies(settings))
    return response


def _forbidden(request: Request, session: Session | None) -> HTMLResponse:
    return render(request, "message.html", 403, session=session, title_key="csrf_title", text_key="csrf_text")


def _not_found(request: Request, session: Session) -> HTMLResponse:
    return render(request, "message.html", 404, session=session, title_key="not_found_title", text_key="not_found_text")


def _unavailable(request: Request, session: Session) -> HTMLResponse:
    return render(request, "message.html", 503, session=session, title_key="app_title", text_key="unavailable")


# --- login ---------------------------------------------------------------------------------


@router.get("/")
async def home(request: Request) -> Response:
    return RedirectResponse("/referrals", status_code=303)


@router.get("/static/forms/{name}")
async def static(name: str) -> Response:
    path = STATIC / name
    if not re.fullmatch(r"[a-z0-9-]+\.css", name) or not path.is_file():
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(path, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"})


def _login_page(request: Request, session: Session, status_code: int = 200, failed: bool = False, login: str = "", next_url: str = "") -> HTMLResponse:
    settings = settings_of(request)
    response = render(
        request,
        "login.html",
        status_code,
        session=None,
        csrf=session.csrf,
        failed=failed,
        login_value=login,
        next_url=next_url,
        asked=bool(request.query_params.get("next")),
        logged_out=request.query_params.get("bye") == "1",
        no_logins=not parse_logins(settings.coordinator_logins) and not _api_tokens(settings),
    )
    _set_session(response, settings, session)
    return response


@router.get("/login")
async def login_form(request: Request) -> Response:
    session = current_session(request)
    next_url = _safe_next(request.query_params.get("next"))
    if session and session.authenticated:
        return RedirectResponse(next_url, status_code=303)
    # Keep a pre-login session's token, so two tabs on /login do not spoil each other.
    return _login_page(request, session or new_session(settings_of(request), None), next_url=next_url)


@router.post("/login")
async def login_submit(request: Request) -> Response:
    settings = settings_of(request)
    form = await request.form()
    session = current_session(request)
    if not _csrf_ok(session, form):
        return _forbidden(request, None)
    login = str(form.get("login") or "").strip()[:64]
    password = str(form.get("password") or "")[:1024]
    next_url = _safe_next(str(form.get("next") or ""))
    if not login or not password or not await run_in_threadpool(check_credentials, settings, login, password):
        log.info("web_login_failed")
        return _login_page(request, session, 401, failed=True, login=login, next_url=next_url)  # type: ignore[arg-type]
    log.info("web_login", login=login)
    response = RedirectResponse(next_url, status_code=303)
    # A fresh session (new id, new CSRF token) at login: nothing carries over from before.
    _set_session(response, settings, new_session(settings, login))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = current_session(request)
    form = await request.form()
    if session is not None and not _csrf_ok(session, form):
        return _forbidden(request, session)
    if session is not None:
        _revoke(session)
    response = RedirectResponse("/login?bye=1", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=_secure_cookies(settings_of(request)))
    return response


def _authenticated(request: Request) -> Session | None:
    session = current_session(request)
    return session if session is not None and session.authenticated else None


# --- the intake form -----------------------------------------------------------------------

# Form field names are the intake's own locations, so pydantic's errors land beside them.
TEXT_FIELDS = (
    "external_ref",
    "identified_by.agency",
    "identified_by.officer_id",
    "identified_by.region",
    "identified_at",
    "timezone",
    "sector",
    "person.pseudonym",
    "person.age_group",
    "person.sex",
    "person.nationality",
    "person.languages",
    "person.contact_phone",
    "consent.given",
    "consent.recorded_by",
    "consent.recorded_at",
    "urgency",
    "notes",
)
LIST_FIELDS = ("indicators", "needs")
FORM_FIELDS = (*TEXT_FIELDS, *LIST_FIELDS, "immediate_danger")
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")
_LOCAL_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?$")
_LIMITS = {
    "external_ref": 100, "identified_by.officer_id": 64, "person.pseudonym": 80, "person.nationality": 2,
    "person.languages": 200, "person.contact_phone": 32, "consent.recorded_by": 64, "notes": 4000,
}


def _offset(value: str) -> str | None:
    """`+01:00`, `+0100` or `-03:30` -> `+01:00`; None when not an offset."""
    match = _OFFSET.match(value.strip())
    if not match or int(match[2]) > 14 or int(match[3]) > 59:
        return None
    return f"{match[1]}{match[2]}:{match[3]}"


def _default_values(settings: Settings) -> dict[str, Any]:
    now = datetime.now(ZoneInfo(settings.referral_timezone)).replace(second=0, microsecond=0)
    offset = now.strftime("%z")
    return {
        "identified_at": now.strftime("%Y-%m-%dT%H:%M"),
        "consent.recorded_at": now.strftime("%Y-%m-%dT%H:%M"),
        "timezone": f"{offset[:3]}:{offset[3:]}",
        "person.sex": "unknown",
        "indicators": [],
        "needs": [],
    }


def read_intake_form(form: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, list[str]]]:
    """The typed values (to show again), the intake data for the model, and the form's own errors
    (message keys) for what the model cannot see: the time zone offset."""
    values: dict[str, Any] = {}
    for name in TEXT_FIELDS:
        raw = form.get(name)
        values[name] = raw.strip() if isinstance(raw, str) else ""
    for name in LIST_FIELDS:
        values[name] = [v for v in form.getlist(name) if isinstance(v, str)]
    values["immediate_danger"] = form.get("immediate_danger") in ("on", "yes", "true", "1")

    own: dict[str, list[str]] = {}
    offset = _offset(values["timezone"])
    if offset is None:
        own["timezone"] = ["err_timezone"]
        offset = "+00:00"  # so the other fields are still checked

    def when(name: str) -> str | None:
        value = values[name]
        if not value:
            return None
        if not _LOCAL_DATETIME.match(value):
            return value  # the model names it invalid
        return f"{value}:00{offset}" if value.count(":") == 1 else f"{value}{offset}"

    def optional(name: str) -> str | None:
        return values[name] or None

    def text(name: str) -> str | None:
        # a required text: absent stays absent, so the model says "required"
        return values[name] or None

    data: dict[str, Any] = {
        "external_ref": text("external_ref"),
        "identified_by": {
            "agency": text("identified_by.agency"),
            "officer_id": text("identified_by.officer_id"),
            "region": text("identified_by.region"),
        },
        "identified_at": when("identified_at"),
        "sector": text("sector"),
        "indicators": values["indicators"],
        "immediate_danger": values["immediate_danger"],
        "person": {
            "pseudonym": text("person.pseudonym"),
            "age_group": text("person.age_group"),
            "sex": values["person.sex"] or "unknown",
            "nationality": optional("person.nationality"),
            "languages": [c for c in re.split(r"[\s,;]+", values["person.languages"]) if c],
            "contact_phone": optional("person.contact_phone"),
        },
        "needs": values["needs"],
        "consent": {
            "given": {"yes": True, "no": False}.get(values["consent.given"]),
            "recorded_by": optional("consent.recorded_by"),
            "recorded_at": when("consent.recorded_at"),
        },
        "urgency": optional("urgency"),
        "notes": optional("notes"),
    }
    # Drop what was left empty, so the model reports a missing field as missing.
    data = _drop_none(data)
    return values, data, own


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def _error_key(field: str, item: dict[str, Any], message: str) -> tuple[str, str, dict[str, Any]]:
    """(form field, message key, values) for one pydantic error."""
    kind = item.get("type", "")
    ctx = item.get("ctx") or {}
    if field == "consent" and "recorded_by" in message:
        return "consent.recorded_by", "err_consent_record", {}
    if field == "consent":
        return "consent.given", "err_consent_required", {}
    if field == "needs" and kind in ("value_error", "too_short"):
        return "needs", "err_needs", {}
    if field == "consent.given":
        return field, "err_consent_choice", {}
    if kind == "missing" or kind == "string_too_short":
        return field, "err_required", {}
    if kind in ("literal_error", "enum"):
        return field, "err_choice", {}
    if kind == "string_too_long":
        return field, "err_too_long", {"max": ctx.get("max_length", "")}
    if kind == "string_pattern_mismatch":
        return field, "err_ref_pattern" if field == "external_ref" else "err_officer_pattern", {}
    if field in ("identified_at", "consent.recorded_at"):
        return field, "err_datetime", {}
    if field == "person.contact_phone":
        return field, "err_phone", {}
    if field == "person.nationality":
        return field, "err_country", {}
    if field == "person.languages":
        return field, "err_language", {}
    return field, "err_invalid", {}


def _form_field(location: str) -> str:
    """A pydantic location (`indicators.2`, `person.languages.0`) -> the form field showing it."""
    parts = location.split(".")
    while parts:
        name = ".".join(parts)
        if name in FORM_FIELDS or name == "consent":
            return name
        parts.pop()
    return "(intake)"


def intake_errors(error: ValidationError, words: Words) -> dict[str, list[str]]:
    """field_errors, mapped onto the form's fields and written in the page's language."""
    out: dict[str, list[str]] = {}
    items = error.errors(include_input=False, include_url=False)
    for item, fe in zip(items, field_errors(error)):
        field, key, values = _error_key(_form_field(fe["field"]), item, fe["message"])
        message = words.t(key, **values)
        if message not in out.setdefault(field, []):
            out[field].append(message)
    return out


# The label of each field, for the error summary's links.
FIELD_LABELS = {
    "external_ref": "external_ref",
    "identified_by.agency": "agency",
    "identified_by.officer_id": "officer_id",
    "identified_by.region": "region",
    "identified_at": "identified_at",
    "timezone": "timezone",
    "sector": "sector",
    "indicators": "indicators",
    "person.pseudonym": "pseudonym",
    "person.age_group": "age_group",
    "person.sex": "sex",
    "person.nationality": "nationality",
    "person.languages": "languages",
    "person.contact_phone": "contact_phone",
    "needs": "needs",
    "consent.given": "consent_given",
    "consent.recorded_by": "recorded_by",
    "consent.recorded_at": "recorded_at",
    "urgency": "urgency",
    "notes": "notes",
}


def _rule_errors(values: dict[str, Any], words: Words) -> dict[str, list[str]]:
    """The Intake model's rules (consent required, at least one need) applied to the answers
    they depend on, with valid stand-ins for every other field: no copy of the rules here."""
    given = {"yes": True, "no": False}.get(values["consent.given"])
    if given is None or values["person.age_group"] not in AGE_GROUPS:
        return {}

    def probe(consent: bool) -> dict[str, list[str]]:
        try:
            Intake.model_validate(_probe(values, consent))
        except ValidationError as err:
            return {k: v for k, v in intake_errors(err, words).items() if k in ("needs", "consent.given")}
        return {}

    found = probe(given)
    if "consent.given" in found:
        # The consent rule speaks first; would the intake have its needs once consent is given?
        found.update({k: v for k, v in probe(True).items() if k == "needs"})
    return found


def _probe(values: dict[str, Any], given: bool) -> dict[str, Any]:
    return {
        "external_ref": "probe",
        "identified_by": {"agency": "other", "officer_id": "probe", "region": REGIONS[0]},
        "identified_at": "2000-01-01T00:00:00+00:00",
        "sector": "other",
        "immediate_danger": values["immediate_danger"],
        "person": {"pseudonym": "probe", "age_group": values["person.age_group"]},
        "needs": [n for n in values["needs"] if n in SERVICES],
        "consent": {"given": given, "recorded_by": "probe", "recorded_at": "2000-01-01T00:00:00+00:00"},
    }


def _intake_context(request: Request, session: Session, values: dict[str, Any], errors: dict[str, list[str]], **extra: Any) -> dict[str, Any]:
    def described(name: str, hint: Any) -> str:
        ids = ([f"h-{slug(name)}"] if hint else []) + ([f"e-{slug(name)}"] if errors.get(name) else [])
        return " ".join(ids)

    return dict(
        session=session,
        csrf=session.csrf,
        values=values,
        errors=errors,
        described=described,
        field_labels=FIELD_LABELS,
        agencies=AGENCIES,
        regions=REGIONS,
        sectors=SECTORS,
        indicators=INDICATORS,
        services=SERVICES,
        age_groups=AGE_GROUPS,
        sexes=SEXES,
        urgencies=URGENCIES,
        limits=_LIMITS,
        **extra,
    )


@router.get("/referrals/new")
async def intake_form(request: Request) -> Response:
    session = _authenticated(request)
    if session is None:
        return _to_login(request)
    values = _default_values(settings_of(request))
    return render(request, "intake.html", **_intake_context(request, session, values, {}))


@router.post("/referrals/new")
async def intake_submit(request: Request) -> Response:
    session = _authenticated(request)
    if session is None:
        return _to_login(request)
    form = await request.form()
    if not _csrf_ok(session, form):
        log.warning("web_csrf_rejected", route="intake")
        return _forbidden(request, session)
    settings = settings_of(request)
    words = Words(language_of(request), settings)
    values, data, own = read_intake_form(form)
    errors: dict[str, list[str]] = {k: [words.t(m) for m in v] for k, v in own.items()}
    intake: Intake | None = None
    try:
        intake = Intake.model_validate_json(json.dumps(data))
    except ValidationError as err:
        found = intake_errors(err, words)
        if "needs" not in found:
            # The intake's own rules (consent, needs) only run once every field is valid:
            # ask them now, so the coordinator sees every error in one go.
            found.update(_rule_errors(values, words))
        for field, messages in found.items():
            errors.setdefault(field, []).extend(m for m in messages if m not in errors.get(field, []))
    if errors or intake is None:
        order = {name: i for i, name in enumerate(FIELD_LABELS)}
        errors = dict(sorted(errors.items(), key=lambda item: order.get(item[0], len(order))))
        # Field names only: the values may be personal data.
        log.info("web_intake_invalid", fields=sorted(errors))
        return render(request, "intake.html", 422, **_intake_context(request, session, values, errors))
    try:
        started = await referrals.start_referral(client_of(request), intake, settings.referral_task_queue)
    except (RPCError, RuntimeError) as err:
        log.error("web_intake_start_failed", error=type(err).__name__)
        return render(request, "intake.html", 503, **_intake_context(request, session, values, {"(intake)": [words.t("unavailable")]}))
    log.info("web_referral_started", code=started.code, created=started.created, login=session.login)
    flag = "created" if started.created else "existing"
    return RedirectResponse(f"/referrals/{started.code}?{flag}=1", status_code=303)


# --- the referral page ---------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    at: datetime | None
    key: str
    values: dict[str, Any]
    highlight: bool = False
    future: bool = False
    reason: str | None = None  # the partner's own words (a decline's reason)
    reason_key: str | None = None  # or one of ours, translated


def service_timeline(
    service: ServiceStatus, when: Callable[[datetime | None], str], name: Callable[[str], str] = str
) -> list[Event]:
    """What happened to one service, oldest first; what is awaited comes last."""
    events: list[Event] = []
    for a in service.attempts:
        p = name(a.partner_id)
        events.append(Event(a.offered_at, "ev_offer", {"partner": p, "deadline": when(a.deadline)}))
        if a.reminded:
            events.append(Event(a.remind_at, "ev_reminder", {"partner": p}))
        if a.outcome:
            events.append(
                Event(
                    a.replied_at or a.deadline,
                    f"ev_{a.outcome}",
                    {"partner": p},
                    highlight=a.outcome in ("timed_out", "declined"),
                    reason=a.reason,
                    reason_key="reason_unreachable" if a.reason == "unreachable" else None,
                )
            )
        elif service.stage != "closed":
            events.append(Event(a.deadline, "ev_awaiting", {"partner": p}, future=True))
    if service.accepted_at and service.assigned_by_coordinator and service.partner_id:
        events.append(Event(service.accepted_at, "ev_assigned", {"partner": name(service.partner_id)}))
    if service.stage == "escalated":
        last = max((e.at for e in events if e.at and not e.future), default=None)
        events.append(Event(last, "ev_ladder_exhausted", {}, highlight=True))
    for f in service.follow_ups:
        values = {"n": f.number, "partner": name(f.partner_id), "answer_by": when(f.answer_by)}
        if f.sent_at:
            events.append(Event(f.sent_at, "ev_checkin_sent", values))
        if f.answer:
            events.append(
                Event(f.answered_at or f.answer_by, f"ev_checkin_{f.answer}", values, highlight=f.answer in ("issue", "silence"))
            )
        elif not f.sent_at and service.stage != "closed":
            events.append(Event(f.due_at, "ev_checkin_due", values, future=True))
    if service.completed_at:
        events.append(Event(service.completed_at, "ev_completed", {}))
    past = sorted((e for e in events if not e.future), key=lambda e: (e.at is None, e.at or datetime.min))
    future = sorted((e for e in events if e.future), key=lambda e: e.at or datetime.max)
    return past + future


def _directory(settings: Settings) -> Directory | None:
    try:
        return load_directory(settings.referral_partners_file)
    except ConfigError as err:
        log.error("web_directory_unreadable", error=str(err))
        return None


def _partners_by_service(directory: Directory | None, status: ReferralStatus) -> dict[str, list[dict[str, Any]]] | None:
    """For the assign action: active directory partners offering each service, those covering
    the referral's region first. None when the directory cannot be read."""
    if directory is None:
        return None
    out: dict[str, list[dict[str, Any]]] = {}
    for service in status.services:
        partners = [p for p in directory.partners if p.active and service.service in p.services]
        partners.sort(key=lambda p: (status.region not in p.regions, p.rank, p.id))
        out[service.service] = [{"id": p.id, "name": p.name, "national": p.national} for p in partners]
    return out


@router.get("/referrals/{code}")
async def referral_page(request: Request, code: str) -> Response:
    session = _authenticated(request)
    if session is None:
        return _to_login(request)
    try:
        code = referrals.normalise_code(code)
    except ValueError:
        return _not_found(request, session)
    try:
        status = await referrals.get_status(client_of(request), code)
    except referrals.ReferralNotFound:
        return _not_found(request, session)
    except RPCError as err:
        log.error("web_status_failed", code=code, error=type(err).__name__)
        return _unavailable(request, session)
    settings = settings_of(request)
    words = Words(language_of(request), settings)
    q = request.query_params
    directory = _directory(settings)

    def partner_name(partner_id: str) -> str:
        partner = directory.partner(partner_id) if directory else None
        return f"{partner.name} ({partner_id})" if partner else partner_id

    def partner_names(ids: list[str]) -> str:
        return ", ".join(partner_name(i) for i in ids)

    timelines = {s.service: service_timeline(s, words.when, partner_name) for s in status.services}
    return render(
        request,
        "referral.html",
        session=session,
        csrf=session.csrf,
        status=status,
        ref=f"R-{status.code}",
        timelines=timelines,
        partner_name=partner_name,
        partner_names=partner_names,
        partners=_partners_by_service(directory, status) if status.stage != "closed" else {},
        created=q.get("created") == "1",
        existing=q.get("existing") == "1",
        done=q.get("done") if q.get("done") in (*WHOLE_ACTIONS, "assign", "close_service") else None,
        rejected=q.get("rejected") if q.get("rejected") in _REJECTION_KEYS else None,
        pending=q.get("pending") == "1",
    )


_REJECTION_KEYS = (
    "unknown_action", "not_offered", "reassigned", "already_applied", "not_applicable",
    "referral_closed", "invalid", "partner", "confirm",
)
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


@router.post("/referrals/{code}/actions")
async def referral_action(request: Request, code: str) -> Response:
    session = _authenticated(request)
    if session is None:
        return _to_login(request)
    form = await request.form()
    if not _csrf_ok(session, form):
        log.warning("web_csrf_rejected", route="action")
        return _forbidden(request, session)
    try:
        code = referrals.normalise_code(code)
    except ValueError:
        return _not_found(request, session)
    settings = settings_of(request)
    back = f"/referrals/{code}"

    def field(name: str, limit: int = 200) -> str | None:
        value = form.get(name)
        return value.strip()[:limit] or None if isinstance(value, str) else None

    action = field("action")
    service = field("service")
    partner_id = field("partner_id")
    reason = field("reason", 1600)

    def refused(kind: str) -> RedirectResponse:
        return RedirectResponse(f"{back}?{urlencode({'rejected': kind})}", status_code=303)

    if action not in ("assign", *WHOLE_ACTIONS):
        return refused("unknown_action")
    if action == "assign":
        if not service or not partner_id:
            return refused("invalid")
        try:
            partner = load_directory(settings.referral_partners_file).partner(partner_id)
        except ConfigError:
            partner = None
        if partner is None or service not in partner.services:
            return refused("partner")
    elif action == "close" and service:
        pass  # one service: no confirmation needed, the rest of the referral goes on
    else:
        service = None
        if form.get("confirm") != "yes":
            return refused("confirm")
    if service is not None and service not in SERVICES:
        return refused("invalid")
    nonce = field("nonce")
    update_id = f"web-{code}-{nonce}" if nonce and _NONCE.match(nonce) else None
    try:
        command = CoordinatorAction(action=action, service=service, partner_id=partner_id if action == "assign" else None, reason=reason, by=session.login[:64] if session.login else None)
        await asyncio.wait_for(
            referrals.coordinator_action(client_of(request), code, command, update_id=update_id),
            timeout=ACTION_TIMEOUT_SECONDS,
        )
    except ValidationError:
        return refused("invalid")
    except referrals.ReferralNotFound:
        return _not_found(request, session)
    except referrals.ReferralRejected as err:
        log.info("web_action_rejected", code=code, action=action, kind=err.kind)
        return refused(err.kind if err.kind in _REJECTION_KEYS else "invalid")
    except asyncio.TimeoutError:
        return RedirectResponse(f"{back}?pending=1", status_code=303)
    except RPCError as err:
        log.error("web_action_failed", code=code, action=action, error=type(err).__name__)
        return _unavailable(request, session)
    log.info("web_action", code=code, action=action, service=service, login=session.login)
    done = "close_service" if action == "close" and service else action
    return RedirectResponse(f"{back}?done={done}", status_code=303)


# --- the list ------------------------------------------------------------------------------


@router.get("/referrals")
async def referral_list(request: Request) -> Response:
    session = _authenticated(request)
    if session is None:
        return _to_login(request)
    q = request.query_params
    if q.get("code"):
        try:
            return RedirectResponse(f"/referrals/{referrals.normalise_code(q['code'])}", status_code=303)
        except ValueError:
            return _not_found(request, session)
    stage = q.get("stage") if q.get("stage") in STAGES else None
    rows = None
    try:
        rows = await referrals.list_referrals(client_of(request), referrals.list_query(stage=stage), limit=200)
    except RPCError as err:
        log.error("web_list_failed", error=type(err).__name__)
    return render(request, "list.html", session=session, csrf=session.csrf, rows=rows, stage=stage, stages=STAGES)


# --- `python -m starter.forms hash-password` -----------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse
    import getpass

    parser = argparse.ArgumentParser(prog="python -m starter.forms", description="Web form utilities.")
    sub = parser.add_subparsers(dest="command", required=True)
    h = sub.add_parser("hash-password", help="print a password hash for COORDINATOR_LOGINS (password read from the terminal, or one line on stdin)")
    h.add_argument("--iterations", type=int, default=PBKDF2_ITERATIONS)
    args = parser.parse_args(argv)
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("hash-password: the two passwords differ", file=sys.stderr)
            return 2
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("hash-password: empty password", file=sys.stderr)
        return 2
    print(hash_password(password, iterations=args.iterations))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
