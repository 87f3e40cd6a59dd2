"""A partner's capacity page: FULL / OPEN per service, as by SMS, without logging in.

    GET  /p/org/<token>          from the "my organisation" link (answer to a `LINK` SMS)
    GET  /p/<token>/capacity     from a referral's partner link (the offer email)
    POST the same paths          service (or all), full for a while (or until reopened), or open

Either token is signed and expires like the partner page's (activities/partner_links.py, its
own purpose for the organisation link) and names the partner; the organisation link names no
referral. The page shows each of the partner's services, open or full since when and until
when, and records a change through the same service as the SMS (starter/capacity.py, channel
"web"), then redirects (303) back. CSRF, headers and words: the partner page's
(web/routes/partner_page.py): the cookie and form nonce, SECURITY_HEADERS, `partner_page.*`.

Also here, for the coordinators' assign form: who is full now (`capacity_of`).
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from activities.directory import ConfigError, Partner, load_directory
from activities.partner_links import PartnerLinkError, PartnerLinkExpired, verify_organisation_link, verify_partner_link
from config.settings import Settings
from ledger.capacity import FullSpell
from ledger.migrate import LedgerNotReady
from starter import capacity
from web import deps
from web.routes.partner_page import CSRF_COOKIE, checked_form, form_nonce, page_html, page_lang, page_message, page_words, valid_cookie
from web.security import SecureRoute
from workflows.intake import SERVICES

log = structlog.get_logger(__name__)
router = APIRouter(route_class=SecureRoute, include_in_schema=False)

# How long a FULL set on the page lasts, in days (0: until the partner reopens).
FULL_FOR_DAYS = (0, 1, 2, 3, 7, 14)
RESULTS = ("full", "open", "unchanged", "not_offered", "invalid")


async def capacity_of(settings: Settings, partners: list[Partner]) -> dict[str, dict[str, FullSpell]]:
    """Each partner's services full now; empty when the database cannot say (logged)."""
    try:
        return await asyncio.to_thread(capacity.full_now, settings, partners)
    except (LedgerNotReady, SQLAlchemyError) as err:
        log.warning("capacity unknown", error=str(err) if isinstance(err, LedgerNotReady) else type(err).__name__)
        return {}


def _partner(settings: Settings, token: str, lang: str, organisation: bool) -> Partner | HTMLResponse:
    try:
        if organisation:
            partner_id = verify_organisation_link(settings.partner_link_secret, token)
        else:
            _, partner_id = verify_partner_link(settings.partner_link_secret, token)
    except PartnerLinkExpired:
        return page_message(settings, lang, 403, "expired_link")
    except PartnerLinkError:
        return page_message(settings, lang, 403, "invalid_link")
    try:
        partner = load_directory(settings.referral_partners_file).partner(partner_id)
    except ConfigError as err:
        log.error("partner directory unreadable", error=str(err))
        return page_message(settings, lang, 503, "unavailable")
    return partner if partner is not None else page_message(settings, lang, 403, "invalid_link")


async def _page(request: Request, token: str, organisation: bool) -> Response:
    settings = deps.settings_of(request)
    lang = page_lang(request.query_params.get("lang"))
    partner = _partner(settings, token, lang, organisation)
    if isinstance(partner, Response):
        return partner
    try:
        full = (await asyncio.to_thread(capacity.full_now, settings, [partner])).get(partner.id, {})
    except (LedgerNotReady, SQLAlchemyError):
        return page_message(settings, lang, 503, "unavailable")
    words = page_words(settings, lang)
    rows = []
    for service in partner.services:
        spell = full.get(service)
        if spell is None:
            state = words.t("capacity.open_now")
        elif spell.until is None:
            state = words.t("capacity.full_since", since=words.when(spell.since))
        else:
            state = words.t("capacity.full_since_until", since=words.when(spell.since), until=words.when(spell.until))
        rows.append({"service": service, "label": words.label("services", service), "state": state, "full": spell is not None})
    result = request.query_params.get("result")
    cookie = request.cookies.get(CSRF_COOKIE)
    new_cookie = None
    if not valid_cookie(cookie):
        cookie = new_cookie = secrets.token_urlsafe(32)
    response = page_html(
        "partner_capacity.html",
        words,
        partner=partner.name,
        action=request.url.path,
        csrf=form_nonce(settings.partner_link_secret or "", cookie or "", token),
        rows=rows,
        days=FULL_FOR_DAYS,
        result=words.t(f"capacity.result.{result}") if result in RESULTS else None,
    )
    if new_cookie:
        secure = settings.public_base_url.lower().startswith("https://")
        response.set_cookie(CSRF_COOKIE, new_cookie, path="/p/", httponly=True, samesite="strict", secure=secure)
    return response


async def _change(request: Request, token: str, organisation: bool) -> Response:
    settings = deps.settings_of(request)
    lang = page_lang(request.query_params.get("lang"))
    partner = _partner(settings, token, lang, organisation)
    if isinstance(partner, Response):
        return partner
    checked = await checked_form(settings, request, token, lang)
    if isinstance(checked, Response):
        return checked
    form, lang = checked
    state = form.get("state")
    service = form.get("service") or None
    days = form.get("days") or "0"
    result: str
    if state not in ("full", "open") or (service is not None and service not in SERVICES) or not days.isdigit() or int(days) not in FULL_FOR_DAYS:
        result = "invalid"
    else:
        now = datetime.now(UTC)
        until = now + timedelta(days=int(days)) if state == "full" and int(days) else None
        try:
            outcome = await capacity.change_capacity(deps.client_of(request), settings, partner, state, service, "web", until=until, now=now)  # type: ignore[arg-type]
            result = state if outcome.change is not None else "unchanged"
        except capacity.ServiceNotOffered:
            result = "not_offered"
        except (LedgerNotReady, SQLAlchemyError):
            return page_message(settings, lang, 503, "unavailable")
    return RedirectResponse(f"{request.url.path}?lang={lang}&result={result}", status_code=303)


@router.get("/p/org/{token}", response_class=HTMLResponse)
async def organisation_page(token: str, request: Request) -> Response:
    return await _page(request, token, organisation=True)


@router.post("/p/org/{token}")
async def organisation_change(token: str, request: Request) -> Response:
    return await _change(request, token, organisation=True)


@router.get("/p/{token}/capacity", response_class=HTMLResponse)
async def capacity_page(token: str, request: Request) -> Response:
    return await _page(request, token, organisation=False)


@router.post("/p/{token}/capacity")
async def capacity_change(token: str, request: Request) -> Response:
    return await _change(request, token, organisation=False)
