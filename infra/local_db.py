"""The small sqlite files under REFERRAL_DATA_DIR that several processes share (the web app's
workers and the Temporal worker): how they are opened, in one place.

One short-lived connection per operation; WAL lets readers go on while one process writes, and
the busy timeout makes a writer wait for another instead of failing. The schema is applied once
per process and file (idempotent `CREATE ... IF NOT EXISTS`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BUSY_TIMEOUT_SECONDS = 10.0

_initialised: set[tuple[Path, str]] = set()


@contextmanager
def open_db(path: Path, schema: str) -> Iterator[sqlite3.Connection]:
    """A connection in autocommit mode (each statement its own transaction), closed after use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = (path, schema) not in _initialised or not path.exists()
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
    try:
        if fresh:
            conn.execute("PRAGMA journal_mode=WAL")  # kept in the file: once is enough
            conn.executescript(schema)
            _initialised.add((path, schema))
        yield conn
    finally:
        conn.close()
