"""One signing scheme for everything the service hands out and takes back: the coordinators'
session cookie and CSRF token (web/security.py), the partners' links (activities/partner_links.py)
and the partner page's form nonce (web/routes/partner_page.py).

It is itsdangerous: HMAC-SHA256 under a key derived from the secret and a *purpose* (the salt),
so a token made for one purpose never verifies for another. A token is

    b64url(JSON [expiry, field, ...]) "." b64url(HMAC-SHA256)

The expiry (unix seconds) is inside the signed payload rather than itsdangerous' signing
timestamp: the signer decides it (a link's TTL when the email is sent, a session's length at
login), and the verifier checks it against its clock or a given `now`. The signature is checked
(constant time) before anything in the payload is read; only then are expired and invalid told
apart. Tokens are signed, not encrypted: put nothing personal in them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence

from itsdangerous import BadData, Signer, URLSafeSerializer

Field = str | int | None


class BadToken(Exception):
    """Malformed, tampered with, signed with another key or for another purpose."""


class ExpiredToken(BadToken):
    """Genuine, but past its expiry."""


class Signing:
    """Tokens and digests for one purpose under one secret."""

    def __init__(self, secret: str | bytes, purpose: str) -> None:
        if not secret:
            raise ValueError(f"{purpose}: no secret to sign with")
        options = {"digest_method": hashlib.sha256, "key_derivation": "hmac"}
        self._serializer = URLSafeSerializer(secret, salt=purpose, signer_kwargs=options)
        self._signer = Signer(secret, salt=purpose, **options)  # type: ignore[arg-type]

    def sign(self, fields: Sequence[Field], expires_at: float) -> str:
        return self._serializer.dumps([int(expires_at), *fields])

    def verify(self, token: str | None, now: float | None = None, max_length: int = 2048) -> tuple[int, list[Field]]:
        """(expiry, fields) of a genuine, unexpired token; BadToken / ExpiredToken otherwise."""
        if not token or len(token) > max_length:
            raise BadToken("no token, or too long")
        try:
            value = self._serializer.loads(token)
        except (BadData, UnicodeError, ValueError):
            raise BadToken("not genuine") from None
        if not isinstance(value, list) or not value or type(value[0]) is not int:
            raise BadToken("not a token of this scheme")
        if value[0] <= (time.time() if now is None else now):
            raise ExpiredToken("expired")
        return value[0], value[1:]

    def digest(self, *parts: str) -> str:
        """A keyed digest of `parts` (deterministic), e.g. a form nonce bound to a cookie."""
        return self._signer.get_signature(json.dumps(parts, separators=(",", ":"))).decode("ascii")

    def digest_ok(self, given: str | None, *parts: str) -> bool:
        """Constant-time check of a digest made by `digest(*parts)`."""
        if not given or len(given) > 128:
            return False
        return self._signer.verify_signature(json.dumps(parts, separators=(",", ":")), given)
