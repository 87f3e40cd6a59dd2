"""Who may use the web app, in one place: passwords, the session cookie, CSRF, security headers.

Sessions are a signed cookie holding the login, a CSRF token and the expiry; every POST of the
coordinators' pages carries that token in a hidden field. Logins come from COORDINATOR_LOGINS,
and the login `api` also accepts any token of REFERRAL_API_TOKENS (which is also the JSON API's
and the codec server's bearer). `python -m web.security hash-password` makes a login's hash.
"""

from __future__ import annotations


import base64
import hashlib
import hmac
import json
import re
import secrets
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute

from config.settings import Settings
from web.deps import settings_of
import structlog

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
    ok = verify_password(password, encoded if encoded is not None else _DUMMY_HASH) and encoded is not None
    if hmac.compare_digest(login.encode(), b"api") and password:
        for token in api_tokens(settings):
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


def revoke(session: Session) -> None:
    now = time.time()
    for sid, until in list(_REVOKED.items()):
        if until <= now:
            del _REVOKED[sid]
    _REVOKED[session.sid] = session.expires


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

