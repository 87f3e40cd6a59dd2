"""The partner details page: `GET /p/<token>`, with accept / decline buttons.

The token (activities/partner_links.py) names one referral and one partner, is signed and
expires. The page shows the offer (nothing identifying) to that partner, and the person's details
only while that partner holds a service of the referral: the workflow's `person_details` query
decides, so there is one rule for who may see them. An expired or tampered token gets a 403 page
that says nothing about the referral.

Accept / decline are POSTs to `/p/<token>/accept|decline` that apply the same update as an SMS
reply (`partner_reply`, channel "web"), then redirect (303) back to the page. A decline offers the
SMS grammar's reason codes (`decline_code`, ledger.record.DECLINE_CODES): the page asks for one;
a form without it (an older page) is still a decline, without a code; any other value is refused.

CSRF: besides the capability in the path, each POST must carry a form nonce that matches a
cookie: the page sets a random cookie (HttpOnly, SameSite=Strict, path /p/, Secure over https) and puts
a digest of cookie and token, keyed by PARTNER_LINK_SECRET (infra/signing.py, purpose
"partner-form"), in a hidden field. A cross-site form cannot send the
cookie (SameSite=Strict) nor compute the field. A POST whose `Origin` is another origin, or whose
`Sec-Fetch-Site` is `cross-site`, is refused too. (Origin alone is not enough: with
`Referrer-Policy: no-referrer` browsers send `Origin: null` on form posts.)

Every response carries web/security.py's SECURITY_HEADERS, the coordinators' pages' own:
`Cache-Control: no-store`, `Referrer-Policy: no-referrer` (the token must not leak to other sites),
`X-Robots-Tag: noindex`, a strict CSP (no script, styles from /static/forms/partner.css only) and
`frame-ancestors 'none'`. Words come from the catalogue (`partner_page.*`, `labels.*`), the page
from web/templates/partner_*.html.
"""

from __future__ import annotations

import re
import secrets
from datetime import datetime
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from temporalio.client import Client
from temporalio.service import RPCError

from activities.partner_links import PartnerLinkError, PartnerLinkExpired, verify_partner_link
from config.settings import Settings
from infra.signing import Signing
from ledger.record import DECLINE_CODES
from starter import referrals
from web import deps
from web.i18n import DEFAULT_LANG, LANGS, LANGUAGE_NAMES, Words
from web.rendering import render_html
from web.security import SecureRoute
from workflows.intake import SERVICES
from workflows.models import PartnerReply, PersonDetails, ReferralStatus
from workflows.projection import PartnerStanding, involves, offered_to, partner_standing
from workflows.referral import ReferralWorkflow

router = APIRouter(route_class=SecureRoute, include_in_schema=False)

CSRF_COOKIE = "nrm_partner_form"
MAX_FORM_BYTES = 16 * 1024
MAX_REASON = 500
_DECLINE_CODE_VALUES = frozenset(str(n) for n in DECLINE_CODES)


def page_lang(value: str | None) -> str:
    return value if value in LANGS else DEFAULT_LANG


def page_words(settings: Settings, lang: str) -> Words:
    return Words(lang, settings, section="partner_page")


def page_html(template: str, words: Words, status: int = 200, **values: object) -> HTMLResponse:
    lang = words.lang
    body = render_html(template, lang=lang, dir="rtl" if lang == "ar" else "ltr", t=words.t, languages=LANGUAGE_NAMES.items(), **values)
    return HTMLResponse(body, status_code=status)


def page_message(settings: Settings, lang: str, status: int, key: str) -> HTMLResponse:
    return page_html("partner_message.html", page_words(settings, lang), status, message_key=key)


def _verify(settings: Settings, token: str, lang: str) -> tuple[str, str] | HTMLResponse:
    try:
        return verify_partner_link(settings.partner_link_secret, token)
    except PartnerLinkExpired:
        return page_message(settings, lang, 403, "expired_link")
    except PartnerLinkError:
        return page_message(settings, lang, 403, "invalid_link")


# --- CSRF: a cookie and a field bound to it and to the token --------------------------------


_FORM_PURPOSE = "partner-form"


def form_nonce(secret: str, cookie: str, token: str) -> str:
    return Signing(secret, _FORM_PURPOSE).digest(cookie, token)


def valid_cookie(value: str | None) -> bool:
    return bool(value) and re.fullmatch(r"[A-Za-z0-9_-]{32,64}", value or "") is not None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def csrf_ok(settings: Settings, request: Request, token: str, field: str | None) -> bool:
    origin = request.headers.get("origin")
    if origin and origin != "null" and origin.lower().rstrip("/") != _origin(settings.public_base_url):
        return False
    if request.headers.get("sec-fetch-site") == "cross-site":
        return False
    cookie = request.cookies.get(CSRF_COOKIE)
    if not valid_cookie(cookie) or not field or not settings.partner_link_secret:
        return False
    return Signing(settings.partner_link_secret, _FORM_PURPOSE).digest_ok(field, cookie, token)  # type: ignore[arg-type]


# --- what this partner may see ------------------------------------------------------------


async def _person_details(client: Client, code: str, partner_id: str) -> PersonDetails | None:
    handle = client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code))
    return await handle.query(ReferralWorkflow.person_details, partner_id)


def _standing(status: ReferralStatus, partner_id: str) -> PartnerStanding:
    return partner_standing(status.services, partner_id, closed=status.closed_at is not None or status.stage == "closed")


@router.get("/p/{token}", response_class=HTMLResponse)
async def page(token: str, request: Request, lang: str | None = None, result: str | None = None) -> Response:
    settings = deps.settings_of(request)
    lang = page_lang(lang)
    verified = _verify(settings, token, lang)
    if isinstance(verified, Response):
        return verified
    code, partner_id = verified
    client = deps.client_of(request)
    try:
        status = await referrals.get_status(client, code)
        state = _standing(status, partner_id)
        person = None if state == "closed" else await _person_details(client, code, partner_id)
    except referrals.ReferralNotFound:
        return page_message(settings, lang, 404, "not_found")
    except RPCError:
        return page_message(settings, lang, 503, "unavailable")

    words = page_words(settings, lang)
    none = words.t("none")
    mine = [s for s in status.services if involves(s, partner_id)]
    offer = None
    if mine:
        pending = [s for s in mine if offered_to(s, partner_id)]
        due = min((s.attempts[-1].deadline for s in pending), default=None)
        offer = {
            "services": ", ".join(words.label("services", s.service) for s in mine),
            "urgency": words.label("urgency", status.urgency),
            "region": words.label("regions", status.region),
            "age_group": words.label("age_group", status.age_group or "", none),
            "languages": ", ".join(status.languages) or none,
            "interpreter": words.text("labels.yes" if status.assessment.interpreter_needed else "labels.no"),
            "reply_by": _when(due, settings.referral_timezone, words.text("message.time_format") or "%d/%m %H:%M"),
        }
    pending_services = [(s.service, words.label("services", s.service)) for s in status.services if offered_to(s, partner_id)]
    person_view = None
    if person is not None:
        p = person.person
        person_view = {
            "pseudonym": p.pseudonym,
            "age_group": words.label("age_group", p.age_group),
            "sex": words.text(f"partner_page.sexes.{p.sex}") or p.sex,
            "nationality": p.nationality or none,
            "languages": ", ".join(p.languages) or none,
            "contact_phone": p.contact_phone or none,
            "notes": person.notes or none,
        }

    cookie = request.cookies.get(CSRF_COOKIE)
    new_cookie = None
    if not valid_cookie(cookie):
        cookie = new_cookie = secrets.token_urlsafe(32)
    csrf = form_nonce(settings.partner_link_secret or "", cookie or "", token)
    response = page_html(
        "partner_page.html",
        words,
        code=code,
        token=token,
        csrf=csrf,
        state=words.t(f"state.{state}"),
        result=words.text(f"partner_page.result.{result}") if result else None,
        offer=offer,
        pending=pending_services,
        person=person_view,
        max_reason=MAX_REASON,
        decline_codes=[(str(n), f"{n} · {words.label('decline_codes', str(n))}") for n in DECLINE_CODES],
    )
    if new_cookie:
        response.set_cookie(
            CSRF_COOKIE,
            new_cookie,
            path="/p/",
            httponly=True,
            samesite="strict",
            secure=settings.public_base_url.lower().startswith("https://"),
        )
    return response


def _when(value: datetime | None, timezone: str, time_format: str) -> str | None:
    return value.astimezone(ZoneInfo(timezone)).strftime(time_format) if value else None


async def read_form(request: Request) -> dict[str, str] | None:
    """The urlencoded form, or None when it is too big or not a form."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            return None
        chunks.append(chunk)
    try:
        fields = parse_qs(b"".join(chunks).decode("utf-8"), max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        return None
    return {key: values[0] for key, values in fields.items()}


async def checked_form(settings: Settings, request: Request, token: str, lang: str) -> tuple[dict[str, str], str] | HTMLResponse:
    """A posted form of a partner page and the language it asks for, once its CSRF nonce is
    checked; otherwise the page that says why (400 not a form, 403 a bad nonce)."""
    form = await read_form(request)
    if form is None:
        return page_message(settings, lang, 400, "csrf")
    lang = page_lang(form.get("lang") or lang)
    if not csrf_ok(settings, request, token, form.get("csrf")):
        return page_message(settings, lang, 403, "csrf")
    return form, lang


async def _answer(token: str, request: Request, action: str) -> Response:
    settings = deps.settings_of(request)
    lang = page_lang(request.query_params.get("lang"))
    verified = _verify(settings, token, lang)
    if isinstance(verified, Response):
        return verified
    code, partner_id = verified
    checked = await checked_form(settings, request, token, lang)
    if isinstance(checked, Response):
        return checked
    form, lang = checked

    service = form.get("service") or None
    reason = ((form.get("reason") or "").strip()[:MAX_REASON] or None) if action == "decline" else None
    decline_code = (form.get("decline_code") or None) if action == "decline" else None
    result: str  # a reply's outcome or a rejection's kind: the page words for both
    try:
        if service is not None and service not in SERVICES:
            raise ValueError("service")
        if decline_code is not None and decline_code not in _DECLINE_CODE_VALUES:
            raise ValueError("decline_code")
        reply = PartnerReply(
            partner_id=partner_id,
            action=action,
            reason=reason,
            decline_code=int(decline_code) if decline_code else None,  # one of DECLINE_CODES, checked above
            service=service,
            channel="web",
        )
        outcome = await referrals.partner_reply(deps.client_of(request), code, reply)
        result = outcome.outcome
    except (ValueError, ValidationError):
        result = "invalid"
    except referrals.ReferralRejected as err:
        result = err.kind
    except referrals.ReferralNotFound:
        return page_message(settings, lang, 404, "not_found")
    except RPCError:
        return page_message(settings, lang, 503, "unavailable")
    if page_words(settings, lang).text(f"partner_page.result.{result}") is None:
        result = "invalid"
    return RedirectResponse(f"/p/{token}?lang={lang}&result={result}", status_code=303)


@router.post("/p/{token}/accept")
async def accept(token: str, request: Request) -> Response:
    return await _answer(token, request, "accept")


@router.post("/p/{token}/decline")
async def decline(token: str, request: Request) -> Response:
    return await _answer(token, request, "decline")
