"""Signed, expiring links to the partner details page, `PUBLIC_BASE_URL/p/<token>`, and to a
partner's capacity page, `PUBLIC_BASE_URL/p/org/<token>` (sent on request: `LINK` by SMS).

A token binds one referral code, one partner id and an expiry, signed under
`PARTNER_LINK_SECRET` with the service's one signing scheme (infra/signing.py, itsdangerous
HMAC-SHA256, purpose "partner-link"):

    token = b64url('[<expiry unix seconds>,"<CODE>","<partner_id>"]') + "." + b64url(hmac)

about 90 characters. Nothing in it is personal (a referral code and a partner id); it is a
capability, though, so it is only sent by email to the partner it names. The signature is checked
(constant time) before anything in the payload is trusted, then the expiry.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from infra.signing import BadToken, ExpiredToken, Signing

_PURPOSE = "partner-link"
_MAX_TOKEN = 512
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


def sign_partner_link(secret: str, code: str, partner_id: str, expires_at: datetime) -> str:
    if not secret:
        raise ValueError("partner_link_secret: required to sign partner links")
    if not _CODE.match(code):
        raise ValueError("code: not a referral code")
    if not _PARTNER.match(partner_id):
        raise ValueError("partner_id: not a partner id")
    if expires_at.tzinfo is None:
        raise ValueError("expires_at: must include a time zone")
    return Signing(secret, _PURPOSE).sign([code, partner_id], expires_at.timestamp())


def verify_partner_link(secret: str | None, token: str, now: datetime | None = None) -> tuple[str, str]:
    """(code, partner_id) of a genuine, unexpired token; PartnerLinkInvalid / PartnerLinkExpired otherwise."""
    if not secret:
        raise PartnerLinkInvalid("partner links are not configured")
    at = (now or datetime.now(UTC)).timestamp()
    try:
        _, fields = Signing(secret, _PURPOSE).verify(token, now=at, max_length=_MAX_TOKEN)
    except ExpiredToken:
        raise PartnerLinkExpired("the link has expired") from None
    except BadToken:
        raise PartnerLinkInvalid("the link is not valid") from None
    if len(fields) != 2:
        raise PartnerLinkInvalid("the link is not valid")
    code, partner_id = fields
    if not isinstance(code, str) or not isinstance(partner_id, str) or not _CODE.match(code) or not _PARTNER.match(partner_id):
        raise PartnerLinkInvalid("the link is not valid")
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
    expires_at = (now or datetime.now(UTC)) + timedelta(hours=ttl_hours)
    url = f"{base_url.rstrip('/')}/p/{sign_partner_link(secret, code, partner_id, expires_at)}"
    return url if language == "fr" else f"{url}?lang={language}"


# --- the "my organisation" link: the partner's capacity page, no referral in it -------------

_ORGANISATION_PURPOSE = "organisation-link"  # a referral's link never verifies as this one, nor the reverse
ORGANISATION_PATH = "/p/org/"


def sign_organisation_link(secret: str, partner_id: str, expires_at: datetime) -> str:
    if not secret:
        raise ValueError("partner_link_secret: required to sign partner links")
    if not _PARTNER.match(partner_id):
        raise ValueError("partner_id: not a partner id")
    if expires_at.tzinfo is None:
        raise ValueError("expires_at: must include a time zone")
    return Signing(secret, _ORGANISATION_PURPOSE).sign([partner_id], expires_at.timestamp())


def verify_organisation_link(secret: str | None, token: str, now: datetime | None = None) -> str:
    """The partner id of a genuine, unexpired "my organisation" token; PartnerLinkInvalid / PartnerLinkExpired otherwise."""
    if not secret:
        raise PartnerLinkInvalid("partner links are not configured")
    at = (now or datetime.now(UTC)).timestamp()
    try:
        _, fields = Signing(secret, _ORGANISATION_PURPOSE).verify(token, now=at, max_length=_MAX_TOKEN)
    except ExpiredToken:
        raise PartnerLinkExpired("the link has expired") from None
    except BadToken:
        raise PartnerLinkInvalid("the link is not valid") from None
    if len(fields) != 1 or not isinstance(fields[0], str) or not _PARTNER.match(fields[0]):
        raise PartnerLinkInvalid("the link is not valid")
    return fields[0]


def organisation_link(
    base_url: str, secret: str | None, ttl_hours: int, partner_id: str, language: str = "fr", now: datetime | None = None
) -> str | None:
    """The URL a partner's LINK SMS is answered with (its capacity page), or None without a secret."""
    if not secret:
        return None
    expires_at = (now or datetime.now(UTC)) + timedelta(hours=ttl_hours)
    url = f"{base_url.rstrip('/')}{ORGANISATION_PATH}{sign_organisation_link(secret, partner_id, expires_at)}"
    return url if language == "fr" else f"{url}?lang={language}"
