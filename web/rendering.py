"""Rendering the web pages: one Jinja2 environment over web/templates, no script, no inline style."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from web.deps import settings_of
from web.i18n import LANG_COOKIE, LANGS, Words, lang_links, language_of
from web.security import Session, secure_cookies

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

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


def render_html(template: str, **context: Any) -> str:
    """A page of web/templates as text, for a route that builds its own response (the partner page)."""
    return _ENV.get_template(template).render(**context)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", name.replace(".", "-"))


def fid(name: str) -> str:
    return f"f-{slug(name)}"


def render(request: Request, template: str, status_code: int = 200, session: Session | None = None, **context: Any) -> HTMLResponse:
    settings = settings_of(request)
    lang = language_of(request)
    words = Words(lang, settings)
    context.setdefault("csrf", session.csrf if session else "")
    html = render_html(
        template,
        lang=lang,
        dir="rtl" if lang == "ar" else "ltr",
        t=words.t,
        label=words.label,
        when=words.when,
        path=request.url.path,
        lang_links=lang_links(request),
        session=session,
        slug=slug,
        fid=fid,
        **context,
    )
    response = HTMLResponse(html, status_code=status_code)
    if request.query_params.get("lang") in LANGS:
        response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, path="/", httponly=True, samesite="lax", secure=secure_cookies(settings))
    return response


def forbidden(request: Request, session: Session | None) -> HTMLResponse:
    return render(request, "message.html", 403, session=session, title_key="csrf_title", text_key="csrf_text")


def not_found(request: Request, session: Session) -> HTMLResponse:
    return render(request, "message.html", 404, session=session, title_key="not_found_title", text_key="not_found_text")


def unavailable(request: Request, session: Session) -> HTMLResponse:
    return render(request, "message.html", 503, session=session, title_key="app_title", text_key="unavailable")

