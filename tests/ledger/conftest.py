"""The ledger against both databases it runs on: a SQLite file, and a fresh database on the
session's PostgreSQL server (tests/postgres.py), each brought to the code's migration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.database import engine_for
from ledger import migrate
from ledger.store import LedgerStore


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty ledger database's URL, not yet migrated."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
        yield url
        engine_for(url).dispose()
        return
    server = request.getfixturevalue("postgres")
    name = server.create_database()
    url = server.url(name)
    yield url
    engine_for(url).dispose()
    server.drop_database(name)


@pytest.fixture
def store(ledger_url: str) -> LedgerStore:
    migrate.upgrade(ledger_url)
    return LedgerStore.for_url(ledger_url)
