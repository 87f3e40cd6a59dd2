"""Email through any SMTP server with aiosmtplib.

A permanent refusal (5xx for the recipient, a malformed address) raises `EmailRefused`, which
the activity makes non-retryable; a server that is down or answers 4xx is retried by Temporal.
The Message-ID is derived from the activity's stable key, so a retried send that did reach the
server carries the same id and mail clients show it once.
"""

from __future__ import annotations

import hashlib
from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from config.settings import Settings

EMAIL_REFUSALS = ("InvalidEmailAddress", "RecipientRefused")


class EmailRefused(Exception):
    def __init__(self, kind: str) -> None:
        assert kind in EMAIL_REFUSALS
        super().__init__(kind)
        self.kind = kind


def build_email(settings: Settings, to: str, subject: str, body: str, key: str, language: str) -> EmailMessage:
    if "@" not in to or any(c in to for c in "\r\n <>,"):
        raise EmailRefused("InvalidEmailAddress")
    msg = EmailMessage()
    msg["From"] = settings.email_from
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False)
    domain = settings.email_from.rsplit("@", 1)[-1]
    msg["Message-ID"] = f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@{domain}>"
    msg.set_content(body)
    msg["Content-Language"] = language  # after set_content, which drops Content-* headers
    return msg


async def send_email(settings: Settings, msg: EmailMessage) -> None:
    try:
        await aiosmtplib.send(
            msg,
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=settings.smtp_username or None,
            password=settings.smtp_password or None,
            start_tls=settings.smtp_starttls,
            use_tls=False,
            timeout=settings.smtp_timeout_seconds,
        )
    except aiosmtplib.SMTPRecipientsRefused as err:
        if all(r.code >= 500 for r in err.recipients):
            raise EmailRefused("RecipientRefused") from None
        raise
    except aiosmtplib.SMTPResponseException as err:
        if 550 <= err.code <= 553:
            raise EmailRefused("RecipientRefused") from None
        raise
