"""Signed, expiring links to the partner details page: `PUBLIC_BASE_URL/p/<token>`.

A token binds one referral code, one partner id and an expiry, signed with HMAC-SHA256 under
`PARTNER_LINK_SECRET`:

    token = b64url("v1|<CODE>|<partner_id>|<expiry unix seconds>") + "." + b64url(hmac)

Nothing in it is personal (a referral code and a partner id); it is a capability, though, so it
is only sent by email to the partner it names. The signature is checked (constant time) before
anything in the payload is trusted, then the expiry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from datetime import datetime, timedelta, timezone

_VERSION = "v1"
_CODE = re.compile(r"^[0-9A-Z]{5}$")
_PARTNER = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# Partner notices whose email carries the link (the templates place it with {link}).
LINK_TEMPLATES = frozenset({"offer", "reminder", "assigned"})


class PartnerLinkError(Exception):
    """The token cannot be used; the message says why without repeating the token."""


class PartnerLinkInvalid(PartnerLinkError):
    """Malformed, tampered with, or signed with another key."""


class PartnerLinkExpired(PartnerLinkError):
    """Genuine, but past its expiry."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise PartnerLinkInvalid("the link is not valid")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise PartnerLinkInvalid("the link is not valid") from None


def _mac(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), b"partner-link|" + payload, hashlib.sha256).digest()


def sign_partner_link(secret: str, code: str, partner_id: str, expires_at: datetime) -> str:
    if not secret:
        raise ValueError("partner_link_secret: required to sign partner links")
    if not _CODE.match(code):
        raise ValueError("code: not a referral code")
    if not _PARTNER.match(partner_id):
        raise ValueError("partner_id: not a partner id")
    if expires_at.tzinfo is None:
        raise ValueError("expires_at: must include a time zone")
    payload = f"{_VERSION}|{code}|{partner_id}|{int(expires_at.timestamp())}".encode("ascii")
    return f"{_b64encode(payload)}.{_b64encode(_mac(secret, payload))}"


def verify_partner_link(secret: str | None, token: str, now: datetime | None = None) -> tuple[str, str]:
    """(code, partner_id) of a genuine, unexpired token; PartnerLinkInvalid / PartnerLinkExpired otherwise."""
    if not secret:
        raise PartnerLinkInvalid("partner links are not configured")
    if len(token) > 512 or token.count(".") != 1:
        raise PartnerLinkInvalid("the link is not valid")
    payload_text, mac_text = token.split(".")
    payload = _b64decode(payload_text)
    given = _b64decode(mac_text)
    if not hmac.compare_digest(given, _mac(secret, payload)):
        raise PartnerLinkInvalid("the link is not valid")
    try:
        version, code, partner_id, expiry = payload.decode("ascii").split("|")
        expires_at = datetime.fromtimestamp(int(expiry), timezone.utc)
    except (UnicodeDecodeError, ValueError, OverflowError, OSError):
        raise PartnerLinkInvalid("the link is not valid") from None
    if version != _VERSION or not _CODE.match(code) or not _PARTNER.match(partner_id):
        raise PartnerLinkInvalid("the link is not valid")
    if (now or datetime.now(timezone.utc)) >= expires_at:
        raise PartnerLinkExpired("the link has expired")
    return code, partner_id


def partner_link(
    base_url: str,
    secret: str | None,
    ttl_hours: int,
    code: str,
    partner_id: str,
    language: str = "fr",
    now: datetime | None = None,
) -> str | None:
    """The URL to put in a partner's email, or None when no secret is configured."""
    if not secret:
        return None
    expires_at = (now or datetime.now(timezone.utc)) + timedelta(hours=ttl_hours)
    url = f"{base_url.rstrip('/')}/p/{sign_partner_link(secret, code, partner_id, expires_at)}"
    return url if language == "fr" else f"{url}?lang={language}"
