"""What every web process must agree on about sessions, kept in REFERRAL_DATA_DIR so that
`uvicorn --workers N` (or several containers on one volume) behave as one app:

- the session key when WEB_SESSION_SECRET is unset: generated once, kept in
  `web-session.key` (mode 0600) and read by every process, so a cookie signed by one process
  is accepted by the others and survives a restart;
- sessions ended by logout (`web_sessions.sqlite3`, table `revoked_sessions`), until they would
  have expired anyway, so a replayed cookie is refused by every process.

Neither holds personal data: random session ids and their expiry.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from functools import cache
from pathlib import Path

import structlog

from config.settings import Settings
from infra.local_db import open_db

log = structlog.get_logger(__name__)

KEY_FILE = "web-session.key"
MIN_KEY_LENGTH = 32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS revoked_sessions (
    sid TEXT PRIMARY KEY,
    until REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS revoked_sessions_until ON revoked_sessions (until);
"""


def store_path(settings: Settings) -> Path:
    return Path(settings.referral_data_dir) / "web_sessions.sqlite3"


def session_secret(settings: Settings) -> str:
    """WEB_SESSION_SECRET, or else the key kept in REFERRAL_DATA_DIR (made by the first process)."""
    if settings.web_session_secret:
        return settings.web_session_secret
    return _kept_key(Path(settings.referral_data_dir).resolve() / KEY_FILE)


@cache
def _kept_key(path: Path) -> str:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(draft, path)  # atomic: when two processes start at once, the first link wins
            log.info("web session key created", path=str(path))
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    key = path.read_text(encoding="ascii").strip()
    if len(key) < MIN_KEY_LENGTH:
        raise RuntimeError(f"{path}: the web session key is shorter than {MIN_KEY_LENGTH} characters; delete the file to make a new one")
    return key


def revoke(settings: Settings, sid: str, until: float) -> None:
    """End session `sid` for every process; rows past their session's expiry are dropped."""
    with open_db(store_path(settings), _SCHEMA) as conn:
        conn.execute("INSERT OR REPLACE INTO revoked_sessions (sid, until) VALUES (?, ?)", (sid, until))
        conn.execute("DELETE FROM revoked_sessions WHERE until <= ?", (time.time(),))


def is_revoked(settings: Settings, sid: str) -> bool:
    """True when `sid` was logged out. Unreadable store: True (fail closed, log in again)."""
    path = store_path(settings)
    if not path.exists():
        return False
    try:
        with open_db(path, _SCHEMA) as conn:
            return conn.execute("SELECT 1 FROM revoked_sessions WHERE sid = ?", (sid,)).fetchone() is not None
    except sqlite3.Error as err:
        log.warning("session store unreadable", error=type(err).__name__)
        return True
