"""Who may use the web app, in one place: passwords, the session cookie, CSRF, security headers.

Passwords: argon2id hashes (pwdlib) in COORDINATOR_LOGINS, `login:$argon2id$...` entries
separated by commas (the commas inside a hash's `m=...,t=...,p=...` are recognised as such);
`python -m web.security hash-password` makes one. The login `api` also accepts any token of
REFERRAL_API_TOKENS (which is also the JSON API's and the codec server's bearer).

Sessions: a cookie signed with the one signing scheme (infra/signing.py, purpose "web-session")
holding the session id, the login and the expiry; the CSRF token of a session is that scheme's
token over its id (purpose "web-csrf"), so it is bound to the session and expires with it.
Every POST of the coordinators' pages carries it in a hidden field. Logout is recorded in the
shared store (web/session_store.py), so every web process refuses the cookie afterwards.
"""

from __future__ import annotations

import hmac
import re
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any
from urllib.parse import quote

import structlog
from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from config.settings import Settings
from infra.signing import BadToken, Signing
from web import session_store
from web.deps import settings_of

log = structlog.get_logger(__name__)


SESSION_COOKIE = "referral_session"

# Every page (coordinators' and partner's): never cached (Pragma for old proxies), no referrer
# (the partner page's URL is a capability), not indexed, not framed; styles from our own
# stylesheets only, no script at all.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}


class SecureRoute(APIRoute):
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



# --- passwords -----------------------------------------------------------------------------

_HASHER = PasswordHash((Argon2Hasher(),))
# What `hash-password` prints: argon2id, its version and parameters, salt, digest (pwdlib's defaults).
_ARGON2 = re.compile(r"^\$argon2id\$v=19\$m=\d{1,8},t=\d{1,4},p=\d{1,3}\$[A-Za-z0-9+/]{22,88}\$[A-Za-z0-9+/]{43,128}$")
_OLD_PBKDF2 = "pbkdf2_sha256$"
# A piece after a comma that continues an argon2 hash's parameters rather than starting an entry.
_HASH_PARAMETER = re.compile(r"^[tp]=\d")
_OPEN_PARAMETERS = re.compile(r"\$m=\d+(?:,t=\d+)?$")


def hash_password(password: str) -> str:
    """`$argon2id$v=19$m=65536,t=3,p=4$<salt>$<digest>` for COORDINATOR_LOGINS."""
    if not password:
        raise ValueError("password: empty")
    return _HASHER.hash(password)


def verify_password(password: str, encoded: str) -> bool:
    if not password or not _ARGON2.match(encoded or ""):
        return False
    return _HASHER.verify(password, encoded)


@cache
def _dummy_hash() -> str:
    """Spent on an unknown login, so that it takes as long as a wrong password for a known one."""
    return hash_password(secrets.token_hex(16))


def _entries(text: str) -> list[str]:
    entries: list[str] = []
    for piece in (text or "").split(","):
        piece = piece.strip()
        if entries and _HASH_PARAMETER.match(piece) and _OPEN_PARAMETERS.search(entries[-1]):
            entries[-1] += "," + piece
        elif piece:
            entries.append(piece)
    return entries


@lru_cache(maxsize=8)
def _parsed_logins(text: str) -> tuple[tuple[str, str], ...]:
    out: dict[str, str] = {}
    for entry in _entries(text):
        login, _, encoded = entry.partition(":")
        login, encoded = login.strip(), encoded.strip()
        # Never log the entry itself: it holds a hash.
        if login and encoded.startswith(_OLD_PBKDF2):
            log.warning(
                "coordinator_login_refused", login=login,
                reason="pbkdf2 hashes are no longer accepted: make an argon2 hash with `python -m web.security hash-password`",
            )  # fmt: skip
            continue
        if not login or not _ARGON2.match(encoded):
            log.warning("coordinator_logins_entry_ignored", login=login or "(empty)")
            continue
        out[login] = encoded
    return tuple(out.items())


def parse_logins(text: str) -> dict[str, str]:
    """COORDINATOR_LOGINS -> {login: hash}; a malformed entry is skipped with a warning (once
    per process: the parse is kept, and the app parses at start-up)."""
    return dict(_parsed_logins(text or ""))


def api_tokens(settings: Settings) -> list[str]:
    return [t.strip() for t in (settings.referral_api_tokens or "").split(",") if t.strip()]


def authorised(settings: Settings, header: str | None) -> bool:
    """An `Authorization: Bearer <token>` header naming a token of REFERRAL_API_TOKENS.
    Constant time in the token; every configured token is compared."""
    tokens = [t.encode() for t in api_tokens(settings)]
    if not tokens or not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    candidate = given.strip().encode()
    ok = False
    for token in tokens:
        ok |= hmac.compare_digest(token, candidate)
    return ok


def check_credentials(settings: Settings, login: str, password: str) -> bool:
    """Constant-time where it matters: every token is compared, an unknown login costs a hash."""
    logins = parse_logins(settings.coordinator_logins)
    encoded = logins.get(login)
    ok = verify_password(password, encoded if encoded is not None else _dummy_hash()) and encoded is not None
    if hmac.compare_digest(login.encode(), b"api") and password:
        for token in api_tokens(settings):
            if hmac.compare_digest(password.encode(), token.encode()):
                ok = True
    return ok


def startup_checks(settings: Settings) -> None:
    """At start-up, not at the first login: warn about unusable COORDINATOR_LOGINS entries, and
    make (or read) the session key kept in REFERRAL_DATA_DIR when WEB_SESSION_SECRET is unset."""
    parse_logins(settings.coordinator_logins)
    _dummy_hash()
    session_store.session_secret(settings)


# --- sessions ------------------------------------------------------------------------------

SESSION_PURPOSE = "web-session"
CSRF_PURPOSE = "web-csrf"
MAX_COOKIE = 2048


@dataclass(frozen=True)
class Session:
    sid: str
    login: str | None  # None: before login (the login form's CSRF token lives here)
    csrf: str
    expires: float

    @property
    def authenticated(self) -> bool:
        return self.login is not None


def _signing(settings: Settings, purpose: str) -> Signing:
    return Signing(session_store.session_secret(settings), purpose)


def _csrf_token(settings: Settings, sid: str, expires: float) -> str:
    return _signing(settings, CSRF_PURPOSE).sign([sid], expires)


def encode_session(settings: Settings, session: Session) -> str:
    return _signing(settings, SESSION_PURPOSE).sign([session.sid, session.login], session.expires)


def decode_session(settings: Settings, value: str | None, now: float | None = None) -> Session | None:
    """The session in a cookie, or None when absent, tampered with, expired or logged out."""
    try:
        expires, fields = _signing(settings, SESSION_PURPOSE).verify(value, now, max_length=MAX_COOKIE)
    except BadToken:
        return None
    if len(fields) != 2:
        return None
    sid, login = fields
    if not isinstance(sid, str) or not (login is None or isinstance(login, str)):
        return None
    if session_store.is_revoked(settings, sid):
        return None
    return Session(sid=sid, login=login, csrf=_csrf_token(settings, sid, expires), expires=float(expires))


def new_session(settings: Settings, login: str | None) -> Session:
    hours = settings.web_session_hours if login else min(settings.web_session_hours, 2.0)
    sid = secrets.token_urlsafe(16)
    expires = float(int(time.time() + hours * 3600))
    return Session(sid=sid, login=login, csrf=_csrf_token(settings, sid, expires), expires=expires)


def revoke(settings: Settings, session: Session) -> None:
    """Logout: every web process refuses this session from now on."""
    session_store.revoke(settings, session.sid, session.expires)


def secure_cookies(settings: Settings) -> bool:
    return settings.public_base_url.lower().startswith("https://")


def set_session(response: Response, settings: Settings, session: Session) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        encode_session(settings, session),
        max_age=max(1, int(session.expires - time.time())),
        path="/",
        httponly=True,
        samesite="lax",
        secure=secure_cookies(settings),
    )


def current_session(request: Request) -> Session | None:
    return decode_session(settings_of(request), request.cookies.get(SESSION_COOKIE))


def csrf_ok(session: Session | None, form: Any) -> bool:
    sent = form.get("csrf") if form is not None else None
    if session is None or not isinstance(sent, str) or not sent:
        return False
    return hmac.compare_digest(sent.encode(), session.csrf.encode())


def safe_next(value: str | None) -> str:
    """Only a path of this site: never `//host` or `http://…` (no open redirect)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value and len(value) < 512:
        return value
    return "/referrals/new"


def to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":
        target = request.url.path
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def authenticated_session(request: Request) -> Session | None:
    session = current_session(request)
    return session if session is not None and session.authenticated else None


# --- `python -m web.security hash-password` -----------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse
    import getpass

    parser = argparse.ArgumentParser(prog="python -m web.security", description="Web form utilities.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("hash-password", help="print an argon2 password hash for COORDINATOR_LOGINS (password read from the terminal, or one line on stdin)")
    parser.parse_args(argv)
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
    print(hash_password(password))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

