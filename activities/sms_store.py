"""What the SMS channel remembers outside Temporal, in one sqlite file shared by the web app
(which writes it) and the worker (which reads opt-outs before sending):

- `sms_replies`: the answer given to each inbound MessageSid, so a redelivery gets the same one;
- `sms_opt_outs`: numbers that answered STOP and not START since;
- `sms_claims`: which web process is handling a MessageSid right now, so that two deliveries
  of it (to the same process or to two of them) are handled one after the other: a lease that
  its holder renews while it works and that lapses by itself if that process dies.

None holds personal data of the people referred: partner numbers and our own answers.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog

from config.settings import Settings
from infra.local_db import open_db

log = structlog.get_logger("sms_store")

REPLY_RETENTION = timedelta(days=7)
# A delivery's hold on its MessageSid lapses this long after its last renewal (its process died).
CLAIM_LEASE_SECONDS = 5.0
CLAIM_RENEW_SECONDS = 1.5
CLAIM_POLL_SECONDS = 0.1


def store_path(settings: Settings) -> Path:
    return Path(settings.referral_data_dir) / "sms_webhook.sqlite3"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS sms_replies (
    message_sid TEXT PRIMARY KEY,
    reply TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sms_replies_at ON sms_replies (at);
CREATE TABLE IF NOT EXISTS sms_opt_outs (
    number TEXT PRIMARY KEY,
    partner_id TEXT,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sms_claims (
    message_sid TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until REAL NOT NULL
);
"""


def _connect(path: Path) -> AbstractContextManager[sqlite3.Connection]:
    return open_db(path, _SCHEMA)


def _now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def stored_reply(settings: Settings, sid: str) -> str | None:
    path = store_path(settings)
    if not path.exists():
        return None
    with _connect(path) as conn:
        row = conn.execute("SELECT reply FROM sms_replies WHERE message_sid = ?", (sid,)).fetchone()
    return None if row is None else row[0]


def remember_reply(settings: Settings, sid: str, reply: str) -> str:
    """Keep the answer for `sid` unless one is kept already; return the one kept (first wins)."""
    return keep_reply(settings, sid, reply)[0]


def keep_reply(settings: Settings, sid: str, reply: str) -> tuple[str, bool]:
    """(the answer kept for `sid`, whether it is this one): the first answer kept wins."""
    cutoff = (datetime.now(UTC) - REPLY_RETENTION).isoformat(timespec="seconds")
    with _connect(store_path(settings)) as conn:
        first = conn.execute(
            "INSERT OR IGNORE INTO sms_replies (message_sid, reply, at) VALUES (?, ?, ?)", (sid, reply, _now_text())
        ).rowcount == 1
        conn.execute("DELETE FROM sms_replies WHERE at < ?", (cutoff,))
        row = conn.execute("SELECT reply FROM sms_replies WHERE message_sid = ?", (sid,)).fetchone()
    return (row[0] if row else reply), first


def claim_message(settings: Settings, sid: str, holder: str, lease_seconds: float) -> bool:
    """Take (or renew) the lease on `sid` for `holder`; False while another holder's is current."""
    now = time.time()
    with _connect(store_path(settings)) as conn:
        conn.execute("DELETE FROM sms_claims WHERE until < ?", (now - 3600,))
        return conn.execute(
            "INSERT INTO sms_claims (message_sid, holder, until) VALUES (?, ?, ?) "
            "ON CONFLICT (message_sid) DO UPDATE SET holder = excluded.holder, until = excluded.until "
            "WHERE sms_claims.holder = excluded.holder OR sms_claims.until < ?",
            (sid, holder, now + lease_seconds, now),
        ).rowcount == 1


def release_message(settings: Settings, sid: str, holder: str) -> None:
    with _connect(store_path(settings)) as conn:
        conn.execute("DELETE FROM sms_claims WHERE message_sid = ? AND holder = ?", (sid, holder))


@asynccontextmanager
async def one_delivery_at_a_time(settings: Settings, sid: str) -> AsyncIterator[str | None]:
    """Hold the MessageSid's lease (renewed while held) and give the answer kept for it, if any;
    while another delivery holds it, wait."""
    holder = secrets.token_hex(8)
    while not await asyncio.to_thread(claim_message, settings, sid, holder, CLAIM_LEASE_SECONDS):
        stored = await asyncio.to_thread(stored_reply, settings, sid)
        if stored is not None:
            yield stored
            return
        await asyncio.sleep(CLAIM_POLL_SECONDS)

    done = asyncio.Event()

    async def renew() -> None:
        while not done.is_set():
            try:
                await asyncio.wait_for(done.wait(), CLAIM_RENEW_SECONDS)
            except TimeoutError:
                if not await asyncio.to_thread(claim_message, settings, sid, holder, CLAIM_LEASE_SECONDS):
                    log.warning("sms inbound lease lost", message_sid=sid)

    renewing = asyncio.create_task(renew())
    try:
        yield await asyncio.to_thread(stored_reply, settings, sid)
    finally:
        # Not cancelled: a renewal running in its thread must end before the release.
        done.set()
        await renewing
        await asyncio.to_thread(release_message, settings, sid, holder)


def record_opt_out(settings: Settings, number: str, partner_id: str | None) -> None:
    with _connect(store_path(settings)) as conn:
        conn.execute(
            "INSERT OR REPLACE INTO sms_opt_outs (number, partner_id, at) VALUES (?, ?, ?)",
            (number, partner_id, _now_text()),
        )


def clear_opt_out(settings: Settings, number: str) -> bool:
    """Remove the opt-out; True if there was one."""
    path = store_path(settings)
    if not path.exists():
        return False
    with _connect(path) as conn:
        return conn.execute("DELETE FROM sms_opt_outs WHERE number = ?", (number,)).rowcount > 0


def is_opted_out(settings: Settings, number: str | None) -> bool:
    """True when `number` (E.164) answered STOP and not START since. For the SMS activity."""
    if not number:
        return False
    path = store_path(settings)
    if not path.exists():
        return False
    try:
        with _connect(path) as conn:
            row = conn.execute("SELECT 1 FROM sms_opt_outs WHERE number = ?", (number,)).fetchone()
    except sqlite3.Error as err:
        # Fail open: Twilio itself refuses to send to an opted-out number (error 21610).
        log.warning("opt-out store unreadable", error=type(err).__name__)
        return False
    return row is not None
