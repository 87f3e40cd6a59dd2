"""A referral's page and the list, with the coordinator's actions.

    GET  /referrals              the list (stage filter; `?code=` opens one)
    GET  /referrals/{code}       the referral: stage, per-service timeline, actions
    POST /referrals/{code}/actions   assign, close (whole or one service), cancel, withdraw consent
                                     (and erase the person's data: the box and the typed code of
                                     web/routes/erasure_pages.py, which also has the erase form)

Closing asks how the service, or every service still open, ended (`outcome`, one of
ledger.record.SERVICE_OUTCOMES): required to close, optional to cancel, and a withdrawal of consent
is the person declining (the form's choice is not sent with it).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from temporalio.service import RPCError

from activities.directory import ConfigError, Directory, load_directory
from config.settings import Settings
from ledger.capacity import FullSpell
from ledger.record import SERVICE_OUTCOMES
from starter import referrals
from web.deps import client_of, settings_of
from web.erasures import CONSENT_WITHDRAWN
from web.i18n import Words, language_of
from web.rendering import not_found, render, unavailable
from web.routes import erasure_pages
from web.routes.auth import signed_in_form
from web.routes.partner_capacity import capacity_of
from web.security import SecureRoute, authenticated_session, to_login
from workflows import projection
from workflows.intake import SERVICES
from workflows.models import REJECTION_TYPES, STAGES, CoordinatorAction, ReferralStatus, ServiceStatus

log = structlog.get_logger(__name__)

WHOLE_ACTIONS = ("close", "cancel", "withdraw_consent")
ACTION_TIMEOUT_SECONDS = 20.0

router = APIRouter(route_class=SecureRoute, include_in_schema=False)

# --- the referral page ---------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """A timeline event as the page shows it: a translation key and its values."""

    at: datetime | None
    key: str
    values: dict[str, Any]
    highlight: bool = False
    future: bool = False
    reason: str | None = None  # the partner's own words (a decline's reason)
    reason_key: str | None = None  # or one of ours, translated
    decline_code: str | None = None  # a decline's reason code, shown with its meaning (labels.decline_codes)


def service_timeline(
    service: ServiceStatus, when: Callable[[datetime | None], str], name: Callable[[str], str] = str
) -> list[Event]:
    """`projection.service_timeline`, worded for the page: partner names and times formatted."""
    events = []
    for e in projection.service_timeline(service):
        values: dict[str, Any] = {"partner": name(e.partner_id)} if e.partner_id else {}
        if e.kind == "offer":
            values["deadline"] = when(e.deadline)
        elif e.checkin is not None:
            values.update(n=e.checkin, answer_by=when(e.deadline))
        reason_key = "reason_unreachable" if e.reason == "unreachable" else None
        decline_code = str(e.decline_code) if e.decline_code is not None else None
        events.append(Event(e.at, f"ev_{e.kind}", values, e.highlight, e.future, e.reason, reason_key, decline_code))
    return events


def _directory(settings: Settings) -> Directory | None:
    try:
        return load_directory(settings.referral_partners_file)
    except ConfigError as err:
        log.error("web_directory_unreadable", error=str(err))
        return None


def _partners_by_service(
    directory: Directory | None, status: ReferralStatus, full: dict[str, dict[str, FullSpell]] | None = None
) -> dict[str, list[dict[str, Any]]] | None:
    """For the assign action: active directory partners offering each service, those covering
    the referral's region first, with when they went full for it. None when the directory cannot be read."""
    if directory is None:
        return None
    out: dict[str, list[dict[str, Any]]] = {}
    for service in status.services:
        partners = [p for p in directory.partners if p.active and service.service in p.services]
        partners.sort(key=lambda p: (status.region not in p.regions, p.rank, p.id))
        spells = {p.id: (full or {}).get(p.id, {}).get(service.service) for p in partners}
        out[service.service] = [{"id": p.id, "name": p.name, "national": p.national, "full": spells[p.id]} for p in partners]
    return out


@router.get("/referrals/{code}")
async def referral_page(request: Request, code: str) -> Response:
    session = authenticated_session(request)
    if session is None:
        return to_login(request)
    try:
        code = referrals.normalise_code(code)
    except ValueError:
        return not_found(request, session)
    try:
        status = await referrals.get_status(client_of(request), code)
    except referrals.ReferralNotFound:
        return await erasure_pages.gone_page(request, session, code) or not_found(request, session)
    except RPCError as err:
        log.error("web_status_failed", code=code, error=type(err).__name__)
        return unavailable(request, session)
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
        partners=_partners_by_service(directory, status, await capacity_of(settings, directory.partners) if directory else None)
        if status.stage != "closed"
        else {},
        outcomes=SERVICE_OUTCOMES,
        created=q.get("created") == "1",
        existing=q.get("existing") == "1",
        done=q.get("done") if q.get("done") in (*WHOLE_ACTIONS, "assign", "close_service") else None,
        rejected=q.get("rejected") if q.get("rejected") in _REJECTION_KEYS else None,
        pending=q.get("pending") == "1",
        erase_pending=q.get("pending") == "erase",
        confirm_code=erasure_pages.CONFIRM_CODE,
        erase_box=erasure_pages.ERASE_BOX,
    )


# Refusals the page has a message for: the workflow's, and its own (an unknown partner, a
# closure not confirmed, a closure without its outcome).
_REJECTION_KEYS = (*REJECTION_TYPES, "partner", "confirm", "outcome", *erasure_pages.REJECTIONS)
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


@router.post("/referrals/{code}/actions")
async def referral_action(request: Request, code: str) -> Response:
    checked = await signed_in_form(request, "action")
    if isinstance(checked, Response):
        return checked
    session, form = checked
    try:
        code = referrals.normalise_code(code)
    except ValueError:
        return not_found(request, session)
    settings = settings_of(request)
    back = f"/referrals/{code}"

    def field(name: str, limit: int = 200) -> str | None:
        value = form.get(name)
        return value.strip()[:limit] or None if isinstance(value, str) else None

    action = field("action")
    service = field("service")
    partner_id = field("partner_id")
    reason = field("reason", 1600)
    outcome = field("outcome")

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
    # Erase too (withdrawal only): the referral's code typed again, checked before anything is done.
    erase = action == "withdraw_consent" and form.get(erasure_pages.ERASE_BOX) == "yes"
    if erase and not erasure_pages.confirmed(code, form.get(erasure_pages.CONFIRM_CODE)):
        return refused("erase_confirm")
    if action not in ("close", "cancel"):
        outcome = None  # assign says nothing of an end; a withdrawal of consent is person_declined
    elif outcome not in SERVICE_OUTCOMES and (action == "close" or outcome is not None):
        return refused("outcome")
    nonce = field("nonce")
    update_id = f"web-{code}-{nonce}" if nonce and _NONCE.match(nonce) else None
    try:
        command = CoordinatorAction(
            action=action,
            service=service,
            partner_id=partner_id if action == "assign" else None,
            reason=reason,
            by=session.login[:64] if session.login else None,
            outcome=outcome,  # one of SERVICE_OUTCOMES, checked above
        )
        await asyncio.wait_for(
            referrals.coordinator_action(client_of(request), code, command, update_id=update_id),
            timeout=ACTION_TIMEOUT_SECONDS,
        )
    except ValidationError:
        return refused("invalid")
    except referrals.ReferralNotFound:
        return not_found(request, session)
    except referrals.ReferralRejected as err:
        log.info("web_action_rejected", code=code, action=action, kind=err.kind)
        if not (erase and err.kind == "already_applied"):
            return refused(err.kind if err.kind in _REJECTION_KEYS else "invalid")
    except TimeoutError:
        if not erase:  # the erasure closes the referral itself if the withdrawal has not yet
            return RedirectResponse(f"{back}?pending=1", status_code=303)
    except RPCError as err:
        log.error("web_action_failed", code=code, action=action, error=type(err).__name__)
        return unavailable(request, session)
    log.info("web_action", code=code, action=action, service=service, outcome=outcome, login=session.login)
    if erase:
        return await erasure_pages.erase_and_answer(request, session, code, CONSENT_WITHDRAWN + (f": {reason}" if reason else ""))
    done = "close_service" if action == "close" and service else action
    return RedirectResponse(f"{back}?done={done}", status_code=303)


# --- the list ------------------------------------------------------------------------------


@router.get("/referrals")
async def referral_list(request: Request) -> Response:
    session = authenticated_session(request)
    if session is None:
        return to_login(request)
    q = request.query_params
    if q.get("code"):
        try:
            return RedirectResponse(f"/referrals/{referrals.normalise_code(q['code'])}", status_code=303)
        except ValueError:
            return not_found(request, session)
    stage = q.get("stage") if q.get("stage") in STAGES else None
    rows = None
    try:
        rows = await referrals.list_referrals(client_of(request), referrals.list_query(stage=stage), limit=200)
    except RPCError as err:
        log.error("web_list_failed", error=type(err).__name__)
    return render(request, "list.html", session=session, csrf=session.csrf, rows=rows, stage=stage, stages=STAGES)

