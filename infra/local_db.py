"""The small sqlite files under REFERRAL_DATA_DIR that several processes share (the web app's
workers and the Temporal worker): how they are opened, in one place.

One short-lived connection per operation; WAL lets readers go on while one process writes, and
the busy timeout makes a writer wait for another instead of failing. The schema is applied once
per process and file (idempotent `CREATE ... IF NOT EXISTS`). Switching a fresh file to WAL is
the one step the busy timeout does not cover, so it is retried within the same time.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_SECONDS = 10.0
_WAL_RETRY_MAX_PAUSE_SECONDS = 0.02

_initialised: set[tuple[Path, str]] = set()


@contextmanager
def open_db(path: Path, schema: str) -> Iterator[sqlite3.Connection]:
    """A connection in autocommit mode (each statement its own transaction), closed after use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = (path, schema) not in _initialised or not path.exists()
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    try:
        if fresh:
            _use_wal(conn)
            conn.executescript(schema)
            _initialised.add((path, schema))
        yield conn
    finally:
        conn.close()


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL (kept in the file: a no-op once done, by any process).

    The switch reads the header, then upgrades to a write lock to change it. When another
    connection is making the same switch, SQLite refuses that upgrade at once with SQLITE_BUSY
    (waiting could deadlock) instead of calling the busy handler; the other connection's switch
    commits within moments, after which ours finds WAL and changes nothing.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as err:
            if err.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, _WAL_RETRY_MAX_PAUSE_SECONDS)
