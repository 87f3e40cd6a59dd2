"""Erasing a person's data from the coordinator's referral page (issue 16).

    POST /referrals/{code}/erase     reason + the referral's code typed again, CSRF-protected

The coordinator types the referral's code (`7K3Q9` or `R-7K3Q9`) to confirm: anything else
refuses and erases nothing. The withdrawal of consent (web/routes/referral_pages.py) may erase
too, with the same confirmation. Erasure cannot be undone; it closes the referral if it is open
(a withdrawal of consent: the partners are told), destroys its data key, deletes its runs and
keeps the ledger's de-identified row (starter/erasure.py). The page of an erased referral says
who erased it and when (410). The reason is recorded, never logged: the form asks for no personal
data in it, but a coordinator may still type some.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError
from temporalio.service import RPCError

from infra.data_keys import DataKeysNotReady
from ledger.erasures import ERASED
from ledger.migrate import LedgerNotReady
from starter import erasure, referrals
from web import erasures
from web.deps import client_of, settings_of
from web.i18n import Words, language_of
from web.rendering import not_found, render, unavailable
from web.routes.auth import signed_in_form
from web.security import SecureRoute, Session

log = structlog.get_logger(__name__)

router = APIRouter(route_class=SecureRoute, include_in_schema=False)

# The form's fields: the typed code, and on the withdrawal form the box that asks for erasure.
CONFIRM_CODE = "erase_code"
ERASE_BOX = "erase"
# Refusals the referral page has a message for (referral_pages._REJECTION_KEYS).
REJECTIONS = ("erase_confirm", "erase_reason", "erase_failed")


def confirmed(code: str, typed: Any) -> bool:
    """The coordinator typed this referral's code (`7K3Q9`, `r-7k3q9`...), nothing else."""
    if not isinstance(typed, str) or not typed.strip() or len(typed) > 40:
        return False
    try:
        return referrals.normalise_code(typed) == code
    except ValueError:
        return False


def _back(code: str, **query: str) -> RedirectResponse:
    return RedirectResponse(f"/referrals/{code}?{urlencode(query)}", status_code=303)


async def erase_and_answer(request: Request, session: Session, code: str, reason: str) -> Response:
    """Erase, by the logged-in coordinator, then back to the referral's page (which says it is
    erased), or to the page with the refusal or a note that it is under way."""
    by = (session.login or "web")[:64]
    try:
        outcome = await erasure.erase(
            client_of(request), settings_of(request), code, by=by, reason=reason[: erasures.REASON_MAX], wait=erasures.WAIT
        )
    except ValidationError:
        return _back(code, rejected="erase_reason")
    except referrals.ReferralNotFound:
        return not_found(request, session)
    except erasure.ErasurePending:
        log.info("web_erasure_pending", code=code, login=session.login)
        return _back(code, pending="erase")
    except erasure.ErasureFailed:
        log.error("web_erasure_failed", code=code, login=session.login)
        return _back(code, rejected="erase_failed")
    except (LedgerNotReady, DataKeysNotReady, RPCError) as err:
        log.error("web_erasure_unavailable", code=code, error=type(err).__name__)
        return unavailable(request, session)
    log.info("web_erasure", code=code, login=session.login, already=outcome.already, was_open=outcome.was_open)
    return _back(code, done="erase")


@router.post("/referrals/{code}/erase")
async def erase_action(request: Request, code: str) -> Response:
    checked = await signed_in_form(request, "erase")
    if isinstance(checked, Response):
        return checked
    session, form = checked
    try:
        code = referrals.normalise_code(code)
    except ValueError:
        return not_found(request, session)
    reason = form.get("reason")
    reason = reason.strip() if isinstance(reason, str) else ""
    if not confirmed(code, form.get(CONFIRM_CODE)):
        log.info("web_erasure_not_confirmed", code=code, login=session.login)
        return _back(code, rejected="erase_confirm")
    if not reason or len(reason) > erasures.REASON_MAX:
        return _back(code, rejected="erase_reason")
    return await erase_and_answer(request, session, code, reason)


async def gone_page(request: Request, session: Session, code: str) -> Response | None:
    """The page of a referral whose data was erased (410), or under erasure; None when no erasure
    of it is recorded."""
    found = await erasures.recorded(settings_of(request), code)
    if found is None:
        return None
    words = Words(language_of(request), settings_of(request))
    done = found.state == ERASED
    q = request.query_params
    return render(
        request,
        "erased.html",
        410 if done else 200,
        session=session,
        ref=f"R-{code}",
        done=done,
        erased_on=words.when(found.erased_at if done else found.requested_at),
        erased_by=found.requested_by,
        just_erased=q.get("done") == "erase",
        pending=q.get("pending") == "erase",
    )
