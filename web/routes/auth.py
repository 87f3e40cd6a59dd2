"""Logging in and out of the coordinators' pages, and their stylesheet.

    GET  /login, POST /login, POST /logout
"""

from __future__ import annotations

import re

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from web.deps import settings_of
from web.rendering import STATIC, forbidden, render
from web.security import (
    SESSION_COOKIE,
    SecureRoute,
    Session,
    api_tokens,
    authenticated_session,
    check_credentials,
    csrf_ok,
    current_session,
    new_session,
    parse_logins,
    revoke,
    safe_next,
    secure_cookies,
    set_session,
    to_login,
)

log = structlog.get_logger(__name__)

router = APIRouter(route_class=SecureRoute, include_in_schema=False)

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
        no_logins=not parse_logins(settings.coordinator_logins) and not api_tokens(settings),
    )
    set_session(response, settings, session)
    return response


@router.get("/login")
async def login_form(request: Request) -> Response:
    session = current_session(request)
    next_url = safe_next(request.query_params.get("next"))
    if session and session.authenticated:
        return RedirectResponse(next_url, status_code=303)
    # Keep a pre-login session's token, so two tabs on /login do not spoil each other.
    return _login_page(request, session or new_session(settings_of(request), None), next_url=next_url)


@router.post("/login")
async def login_submit(request: Request) -> Response:
    settings = settings_of(request)
    form = await request.form()
    session = current_session(request)
    if not csrf_ok(session, form):
        return forbidden(request, None)
    login = str(form.get("login") or "").strip()[:64]
    password = str(form.get("password") or "")[:1024]
    next_url = safe_next(str(form.get("next") or ""))
    if not login or not password or not await run_in_threadpool(check_credentials, settings, login, password):
        log.info("web_login_failed")
        return _login_page(request, session, 401, failed=True, login=login, next_url=next_url)  # type: ignore[arg-type]
    log.info("web_login", login=login)
    response = RedirectResponse(next_url, status_code=303)
    # A fresh session (new id, new CSRF token) at login: nothing carries over from before.
    set_session(response, settings, new_session(settings, login))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = current_session(request)
    form = await request.form()
    if session is not None and not csrf_ok(session, form):
        return forbidden(request, session)
    if session is not None:
        await run_in_threadpool(revoke, settings_of(request), session)
    response = RedirectResponse("/login?bye=1", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=secure_cookies(settings_of(request)))
    return response


async def signed_in_form(request: Request, route: str) -> tuple[Session, FormData] | Response:
    """A logged-in coordinator's POSTed form with a valid CSRF token; otherwise the response
    to send instead (to the login page, or 403). `route` names the form in the log."""
    session = authenticated_session(request)
    if session is None:
        return to_login(request)
    form = await request.form()
    if not csrf_ok(session, form):
        log.warning("web_csrf_rejected", route=route)
        return forbidden(request, session)
    return session, form
