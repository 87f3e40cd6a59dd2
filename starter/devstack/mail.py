"""The local SMTP server of `make run` (aiosmtpd, in the devstack's process): each email it
receives becomes an `.eml` file under `$REFERRAL_DATA_DIR/outbox/mail/`."""

from __future__ import annotations

import asyncio
import hashlib
import os
from datetime import UTC, datetime
from pathlib import Path

from starter.devstack.console import HOST, StartupError, say, shown


class MailDirHandler:
    """aiosmtpd handler: each message becomes `<UTC timestamp>-<short hash>.eml`, written atomically."""

    def __init__(self, mail_dir: Path) -> None:
        self.mail_dir = mail_dir

    async def handle_DATA(self, server, session, envelope) -> str:
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        header = (
            f"X-Envelope-From: <{envelope.mail_from}>\r\n"
            f"X-Envelope-To: {', '.join(f'<{r}>' for r in envelope.rcpt_tos)}\r\n"
        ).encode("utf-8", "replace")
        data = header + content
        path = save_eml(self.mail_dir, data)
        say(f"{'[smtp]':<11}mail to {', '.join(envelope.rcpt_tos)} saved as {shown(path)}")
        return "250 Message accepted for delivery"


def save_eml(mail_dir: Path, data: bytes) -> Path:
    mail_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    path = mail_dir / f"{stamp}-{hashlib.sha256(data).hexdigest()[:8]}.eml"
    tmp = mail_dir / f".{path.name}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


async def start_smtp(mail_dir: Path, port: int) -> asyncio.AbstractServer:
    from aiosmtpd.smtp import SMTP

    handler = MailDirHandler(mail_dir)
    loop = asyncio.get_running_loop()
    try:
        return await loop.create_server(
            lambda: SMTP(handler, hostname="devstack.localhost", enable_SMTPUTF8=True), HOST, port
        )
    except OSError as err:
        raise StartupError(f"local SMTP cannot listen on {HOST}:{port}: {err.strerror}; set SMTP_PORT to another port") from None

