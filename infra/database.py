"""One SQLAlchemy engine per database URL per process: the project's database (the ledger and the
referrals' data keys, LEDGER_DATABASE_URL) is opened here, by the store, the key table and the migrations."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    """SQLite: the file's folder is made, WAL lets the web app read while a worker writes, and a
    writer waits up to 30 s for another. PostgreSQL (`postgresql+psycopg://`): a pooled engine
    that checks a connection before lending it (the server may have restarted)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            # Deleted content is overwritten: a destroyed data key leaves no bytes in the file.
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def describe(url: str) -> str:
    """The URL without its password, to print or log."""
    return make_url(url).render_as_string(hide_password=True)
