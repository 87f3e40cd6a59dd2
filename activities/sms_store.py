"""What the SMS channel remembers outside Temporal, in one sqlite file shared by the web app
(which writes it) and the worker (which reads opt-outs before sending):

- `sms_replies`: the answer given to each inbound MessageSid, so a redelivery gets the same one;
- `sms_opt_outs`: numbers that answered STOP and not START since.

Neither holds personal data of the people referred: partner numbers and our own answers.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import structlog

from config.settings import Settings

log = structlog.get_logger("sms_store")

REPLY_RETENTION = timedelta(days=7)


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
"""


_initialised: set[Path] = set()


def _connect(path: Path) -> sqlite3.Connection:
    """One short-lived connection per operation: sqlite's own locking serialises writers
    across threads and processes (the web app and the worker)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = path not in _initialised or not path.exists()
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)
    if fresh:
        conn.executescript(_SCHEMA)  # idempotent; once per process and file
        _initialised.add(path)
    return conn


def _now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stored_reply(settings: Settings, sid: str) -> str | None:
    path = store_path(settings)
    if not path.exists():
        return None
    with _closing(_connect(path)) as conn:
        row = conn.execute("SELECT reply FROM sms_replies WHERE message_sid = ?", (sid,)).fetchone()
    return None if row is None else row[0]


def remember_reply(settings: Settings, sid: str, reply: str) -> str:
    """Keep the answer for `sid` unless one is kept already; return the one kept (first wins)."""
    cutoff = (datetime.now(timezone.utc) - REPLY_RETENTION).isoformat(timespec="seconds")
    with _closing(_connect(store_path(settings))) as conn:
        conn.execute("INSERT OR IGNORE INTO sms_replies (message_sid, reply, at) VALUES (?, ?, ?)", (sid, reply, _now_text()))
        conn.execute("DELETE FROM sms_replies WHERE at < ?", (cutoff,))
        row = conn.execute("SELECT reply FROM sms_replies WHERE message_sid = ?", (sid,)).fetchone()
    return row[0] if row else reply


def record_opt_out(settings: Settings, number: str, partner_id: str | None) -> None:
    with _closing(_connect(store_path(settings))) as conn:
        conn.execute(
            "INSERT OR REPLACE INTO sms_opt_outs (number, partner_id, at) VALUES (?, ?, ?)",
            (number, partner_id, _now_text()),
        )


def clear_opt_out(settings: Settings, number: str) -> bool:
    """Remove the opt-out; True if there was one."""
    path = store_path(settings)
    if not path.exists():
        return False
    with _closing(_connect(path)) as conn:
        return conn.execute("DELETE FROM sms_opt_outs WHERE number = ?", (number,)).rowcount > 0


def is_opted_out(settings: Settings, number: str | None) -> bool:
    """True when `number` (E.164) answered STOP and not START since. For the SMS activity."""
    if not number:
        return False
    path = store_path(settings)
    if not path.exists():
        return False
    try:
        with _closing(_connect(path)) as conn:
            row = conn.execute("SELECT 1 FROM sms_opt_outs WHERE number = ?", (number,)).fetchone()
    except sqlite3.Error as err:
        # Fail open: Twilio itself refuses to send to an opted-out number (error 21610).
        log.warning("opt-out store unreadable", error=type(err).__name__)
        return False
    return row is not None


class _closing:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.close()
